"""The Graph side of `onboard grant`, through msgraph-sdk: find the identity, read what it holds, grant the rest.

Kept apart from cli/grant.py and cli/grant_plan.py so that `onboard` loads msgraph-sdk (a heavy import) only to grant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from azure.core.credentials_async import AsyncTokenCredential
from kiota_abstractions.api_error import APIError
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.app_role_assignment import AppRoleAssignment
from msgraph.generated.models.service_principal import ServicePrincipal
from msgraph.generated.models.unified_role_assignment import UnifiedRoleAssignment
from msgraph.generated.role_management.directory.role_assignments.role_assignments_request_builder import (
    RoleAssignmentsRequestBuilder,
)
from msgraph.generated.service_principals.service_principals_request_builder import ServicePrincipalsRequestBuilder
from msgraph.graph_service_client import GraphServiceClient
from rich.console import Console
from rich.table import Table

from cli.grant_plan import AppRoleGrant, DirectoryRoleGrant, GrantError, GrantPlan, Identity
from shared.directory.graph import MsGraphDirectory
from shared.retry import RetryPolicy

MAX_PAGES = 100
# Granting Graph app roles and Entra roles is privileged: Microsoft names Privileged Role Administrator.
OPERATOR_ROLE_HINT = " (sign in as a Privileged Role Administrator: az login)"
T = TypeVar("T")


def _describe(error: APIError) -> str:
    odata = getattr(error, "error", None)
    code = getattr(odata, "code", None) or ""
    message = getattr(odata, "message", None) or error.message or "no message"
    return f"{error.response_status_code} {code}: {message}".replace(" : ", ": ")


def _not_visible_yet(error: APIError) -> bool:
    """A new managed identity is unknown to some replicas for a while: 404, or 400 on a reference to it."""
    text = _describe(error)
    return error.response_status_code == 404 or (
        error.response_status_code == 400 and "Not a valid reference update" in text
    )


def _duplicate(error: APIError) -> bool:
    text = _describe(error)
    return error.response_status_code == 400 and (
        "already exists on the object" in text or "conflicting object" in text
    )


@dataclass(frozen=True)
class Resource:
    object_id: str
    display_name: str
    app_roles: dict[str, str]  # value -> id, as the tenant's resource service principal defines them


class Directory:
    """The Graph calls of a grant, through msgraph-sdk."""

    def __init__(self, client: GraphServiceClient, *, wait_for_identity: float) -> None:
        self._client = client
        self._patience = RetryPolicy(
            max_attempts=1000,
            base_delay=timedelta(seconds=1),
            max_delay=timedelta(seconds=30),
            max_age=timedelta(seconds=wait_for_identity),
        )

    async def _patiently(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry while the identity is not visible yet, with bounded backoff; any other refusal is final."""
        started, attempt = datetime.now(UTC), 1
        while True:
            try:
                return await call()
            except APIError as error:
                if not _not_visible_yet(error):
                    hint = OPERATOR_ROLE_HINT if error.response_status_code == 403 else ""
                    raise GrantError(f"{what}: Graph answered {_describe(error)}{hint}") from None
                delay = self._patience.next_delay(
                    attempt=attempt, first_attempt_at=started, now=datetime.now(UTC), retry_after=None
                )
                if delay is None:
                    raise GrantError(
                        f"{what}: still not visible after {self._patience.max_age.total_seconds():.0f} s "
                        f"({_describe(error)}). A new managed identity can take minutes to replicate: run again later."
                    ) from None
                await asyncio.sleep(delay.total_seconds())
                attempt += 1

    async def identity(self, principal_or_client_id: str) -> Identity:
        async def find() -> Identity:
            principals = self._client.service_principals
            try:
                found = await principals.by_service_principal_id(principal_or_client_id).get()
            except APIError as error:
                if error.response_status_code != 404:
                    raise
                found = next(iter(await self._by_app_id(principal_or_client_id)), None)
                if found is None:
                    raise
            if found is None or not found.id or not found.app_id:
                raise GrantError(f"Graph returned no usable service principal for {principal_or_client_id}")
            return Identity(str(found.id), str(found.app_id), found.display_name or str(found.id))

        return await self._patiently(f"Finding the managed identity {principal_or_client_id}", find)

    async def _by_app_id(self, app_id: str) -> list[ServicePrincipal]:
        query = ServicePrincipalsRequestBuilder.ServicePrincipalsRequestBuilderGetQueryParameters(
            filter=f"appId eq '{app_id}'"
        )
        page = await self._client.service_principals.get(RequestConfiguration(query_parameters=query))
        return list(page.value or []) if page else []

    async def resource(self, app_id: str, name: str) -> Resource:
        try:
            found = await self._by_app_id(app_id)
        except APIError as error:
            raise GrantError(f"Finding {name} ({app_id}): Graph answered {_describe(error)}") from None
        if not found:
            raise GrantError(f"The tenant has no service principal for {name} (appId {app_id})")
        principal = found[0]
        roles = {
            role.value: str(role.id)
            for role in principal.app_roles or []
            if role.value and role.id and role.is_enabled is not False
        }
        return Resource(str(principal.id), principal.display_name or name, roles)

    async def _every_page(self, what: str, first: Callable[[], Awaitable[Any]], builder: Any) -> list[Any]:
        """The items of every page, following @odata.nextLink (bounded)."""
        items: list[Any] = []
        page = await self._patiently(what, first)
        for _ in range(MAX_PAGES):
            if page is None:
                break
            items.extend(page.value or [])
            if not page.odata_next_link:
                break
            page = await self._patiently(what, builder.with_url(page.odata_next_link).get)
        return items

    async def app_role_assignments(self, identity: Identity) -> set[tuple[str, str]]:
        """(resourceId, appRoleId) of every app role the identity holds."""
        assignments = self._client.service_principals.by_service_principal_id(identity.object_id).app_role_assignments
        held = await self._every_page("Reading the identity's app roles", assignments.get, assignments)
        return {(str(a.resource_id), str(a.app_role_id)) for a in held}

    async def directory_roles(self, identity: Identity) -> set[str]:
        """Role definition ids assigned to the identity tenant-wide (directoryScopeId "/")."""
        query = RoleAssignmentsRequestBuilder.RoleAssignmentsRequestBuilderGetQueryParameters(
            filter=f"principalId eq '{identity.object_id}'"
        )
        role_assignments = self._client.role_management.directory.role_assignments
        held = await self._every_page(
            "Reading the identity's directory roles",
            lambda: role_assignments.get(RequestConfiguration(query_parameters=query)),
            role_assignments,
        )
        return {str(r.role_definition_id) for r in held if r.directory_scope_id == "/"}

    async def role_name(self, template_id: str) -> str:
        definitions = self._client.role_management.directory.role_definitions
        try:
            definition = await definitions.by_unified_role_definition_id(template_id).get()
        except APIError as error:
            raise GrantError(f"Reading the role definition {template_id}: Graph answered {_describe(error)}") from None
        return (definition.display_name if definition else None) or template_id

    async def assign_app_role(self, identity: Identity, resource: Resource, role_id: str, label: str) -> bool:
        """True when granted now; False when Graph says it already exists."""
        body = AppRoleAssignment(
            principal_id=UUID(identity.object_id), resource_id=UUID(resource.object_id), app_role_id=UUID(role_id)
        )
        assigned_to = self._client.service_principals.by_service_principal_id(resource.object_id).app_role_assigned_to
        return await self._create(f"Granting {label}", lambda: assigned_to.post(body))

    async def assign_directory_role(self, identity: Identity, role: DirectoryRoleGrant) -> bool:
        body = UnifiedRoleAssignment(
            principal_id=identity.object_id, role_definition_id=role.template_id, directory_scope_id="/"
        )
        role_assignments = self._client.role_management.directory.role_assignments
        return await self._create(f"Assigning {role.name}", lambda: role_assignments.post(body))

    async def _create(self, what: str, post: Callable[[], Awaitable[object]]) -> bool:
        async def once() -> bool:
            try:
                await post()
            except APIError as error:
                if _duplicate(error):  # Graph answers a duplicate with 400, not 409
                    return False
                raise
            return True

        return await self._patiently(what, once)


@dataclass
class Review:
    """The plan against what the tenant holds: what is there, what is missing."""

    identity: Identity
    resources: dict[str, Resource]
    held_app_roles: set[tuple[str, str]]
    held_roles: set[str]
    role_names: dict[str, str]
    warnings: list[str]

    def role_id(self, grant: AppRoleGrant) -> str:
        return self.resources[grant.resource_app_id].app_roles[grant.value]

    def has_app_role(self, grant: AppRoleGrant) -> bool:
        return (self.resources[grant.resource_app_id].object_id, self.role_id(grant)) in self.held_app_roles

    def has_role(self, role: DirectoryRoleGrant) -> bool:
        return role.template_id in self.held_roles


async def review(plan: GrantPlan, directory: Directory, identity_id: str) -> Review:
    identity = await directory.identity(identity_id)
    resources: dict[str, Resource] = {}
    warnings: list[str] = []
    for grant in plan.app_roles:
        if grant.resource_app_id not in resources:
            resources[grant.resource_app_id] = await directory.resource(grant.resource_app_id, grant.resource)
        resource = resources[grant.resource_app_id]
        tenant_id = resource.app_roles.get(grant.value)
        if tenant_id is None:
            raise GrantError(f"{resource.display_name} defines no app role {grant.value}")
        if tenant_id.lower() != grant.documented_id:
            warnings.append(
                f"{grant.value}: the tenant's id {tenant_id} differs from the documented {grant.documented_id}"
            )
    role_names = {role.template_id: await directory.role_name(role.template_id) for role in plan.directory_roles}
    for role in plan.directory_roles:
        if role_names[role.template_id] != role.name:
            warnings.append(f"role {role.template_id} is named {role_names[role.template_id]!r}, not {role.name!r}")
    return Review(
        identity,
        resources,
        await directory.app_role_assignments(identity),
        await directory.directory_roles(identity),
        role_names,
        warnings,
    )


def render_plan(plan: GrantPlan, seen: Review) -> Table:
    identity = seen.identity
    table = Table(title=f"Rights of {identity.display_name} (object id {identity.object_id})", title_justify="left")
    table.add_column("Right", no_wrap=True)
    table.add_column("On", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Why", overflow="fold")
    for grant in plan.app_roles:
        state = "[green]granted[/]" if seen.has_app_role(grant) else "[yellow]to grant[/]"
        table.add_row(grant.value, grant.resource, state, grant.why)
    for role in plan.directory_roles:
        state = "[green]assigned[/]" if seen.has_role(role) else "[yellow]to assign[/]"
        table.add_row(role.name, "Entra role, whole directory", state, role.why)
    return table


def print_manual_steps(console: Console, plan: GrantPlan, identity: Identity) -> None:
    steps = plan.manual_steps(identity)
    if not steps:
        return
    console.print("\n[bold]Exchange steps this command cannot do[/] (Exchange Online PowerShell):")
    for step in steps:
        console.print(f"\n# {step.title}", highlight=False, soft_wrap=True)
        for command in step.commands:
            console.print(command, highlight=False, soft_wrap=True, markup=False)


async def apply(plan: GrantPlan, directory: Directory, seen: Review, console: Console) -> None:
    for grant in plan.app_roles:
        if seen.has_app_role(grant):
            continue
        resource = seen.resources[grant.resource_app_id]
        created = await directory.assign_app_role(seen.identity, resource, seen.role_id(grant), grant.value)
        console.print(f"{grant.value}: {'granted' if created else 'already granted (Graph said so)'}")
    for role in plan.directory_roles:
        if seen.has_role(role):
            continue
        created = await directory.assign_directory_role(seen.identity, role)
        console.print(f"{role.name}: {'assigned' if created else 'already assigned (Graph said so)'}")


async def run_grant(
    plan: GrantPlan,
    identity_id: str,
    credential: AsyncTokenCredential,
    *,
    graph_url: str,
    wait_for_identity: float,
    confirm: Callable[[], bool],
    console: Console,
) -> bool:
    """Review, print the plan, confirm, apply. False when the operator declined."""
    graph = MsGraphDirectory(credential, base_url=graph_url, max_in_process_retries=3, max_in_process_retry_delay=10)
    try:
        directory = Directory(graph.sdk, wait_for_identity=wait_for_identity)
        seen = await review(plan, directory, identity_id)
        console.print(render_plan(plan, seen))
        for warning in seen.warnings:
            console.print(f"[yellow]Note:[/] {warning}")
        missing = [g for g in plan.app_roles if not seen.has_app_role(g)]
        missing_roles = [r for r in plan.directory_roles if not seen.has_role(r)]
        if not missing and not missing_roles:
            console.print("Nothing to change: every right in the plan is already in place.")
        elif not confirm():
            return False
        else:
            await apply(plan, directory, seen, console)
            console.print("Done. The app's tokens carry new roles once they are renewed (restart the app to hurry).")
        print_manual_steps(console, plan, seen.identity)
        return True
    finally:
        await graph.close()
        await credential.close()
