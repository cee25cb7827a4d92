"""The Graph calls that grant an identity its rights: service principals, app-role and directory-role assignments.

What `onboard grant` needs, answered as Graph v1.0 does (facts and sources: docs/microsoft-365-facts.md,
"Granting the app's rights"):
- `GET /servicePrincipals?$filter=appId eq '…'`, `GET /servicePrincipals/{id}`: 404 Request_ResourceNotFound
  for an unknown id, and for a new managed identity until it has replicated.
- `GET /servicePrincipals/{id}/appRoleAssignments`; `POST /servicePrincipals/{resource}/appRoleAssignedTo`:
  201; a duplicate is 400 "Permission being assigned already exists on the object" (not 409); a principal
  that is not (yet) visible is 400 "Not a valid reference update."; an app role the resource does not
  define is 400.
- `GET /roleManagement/directory/roleDefinitions/{id}`; `GET /roleManagement/directory/roleAssignments`
  (`$filter=principalId eq '…'`); `POST` them: a duplicate is 400 "A conflicting object with one or more
  of the specified property values is present in the directory."

Every tenant holds the first-party service principals of Microsoft Graph and Office 365 Exchange Online;
here they carry the app roles the product may be granted (ids as Microsoft publishes them). The managed
identity is added by the test or by `POST /_sandbox/servicePrincipals` (optionally invisible for a while).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from standins.tenant_sandbox.graph_face import graph_error
from standins.tenant_sandbox.store import DocumentStore

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
# value -> id, as listed in Microsoft Graph's permissions reference and Exchange Online's manifest.
FIRST_PARTY_ROLES: dict[str, tuple[str, dict[str, str]]] = {
    GRAPH_APP_ID: (
        "Microsoft Graph",
        {
            "Group.Read.All": "5b567255-7703-4780-807c-7be8301ae99b",
            "GroupMember.Read.All": "98830695-27a2-44f7-8c18-0c3ebc9698f6",
            "Directory.Read.All": "7ab1d382-f21e-4acd-a863-ba3e13f7da61",
            "OrgContact.Read.All": "e1a88a34-94c4-4418-be12-c87b00e26bea",
            "User.Read.All": "df021288-bdef-4463-88db-98f22de89214",
            "User.Invite.All": "09850681-111b-4a89-9bed-3f2cae46d706",
            "GroupMember.ReadWrite.All": "dbaae8cf-10b5-4b86-a4a1-f871c94c6695",
            "Mail.Send": "b633e1c5-b582-4048-a93e-9f11b44c7e96",
        },
    ),
    EXCHANGE_APP_ID: ("Office 365 Exchange Online", {"Exchange.ManageAsApp": "dc50a0fb-09a3-484d-be87-e023b12c6440"}),
}
# Built-in roles: a built-in role definition's id is its template id.
BUILT_IN_ROLES = {
    "29232cdf-9323-42fd-ade2-1d097af3e4de": "Exchange Administrator",
    "31392ffb-586c-42d1-9346-e59415a2cc4e": "Exchange Recipient Administrator",
    "5d6b6bb7-de71-4623-b4af-96380a352509": "Security Reader",
}
_FILTER = re.compile(r"^\s*(appId|principalId)\s+eq\s+'([^']*)'\s*$", re.IGNORECASE)
DUPLICATE_APP_ROLE = "Permission being assigned already exists on the object"
DUPLICATE_ROLE = "A conflicting object with one or more of the specified property values is present in the directory."
NOT_VISIBLE_REFERENCE = "Not a valid reference update."


@dataclass
class ServicePrincipal:
    id: str
    app_id: str
    display_name: str
    kind: str  # servicePrincipalType: Application or ManagedIdentity
    app_roles: dict[str, str] = field(default_factory=dict)  # value -> id
    visible_at: float = 0.0  # time.time() from which Graph finds it (replication of a new identity)


@dataclass
class AppRoleAssignment:
    id: str
    app_role_id: str
    principal_id: str
    resource_id: str
    created: str


@dataclass
class RoleAssignment:
    id: str
    principal_id: str
    role_definition_id: str
    directory_scope_id: str


@dataclass
class ExchangeRoleAssignment:
    """Kept on the Exchange side, not in Entra: a role group a service principal was added to
    (`Add-RoleGroupMember`), or an RBAC for Applications role (`New-ManagementRoleAssignment -App`),
    optionally limited to one recipient (a management scope such as the welcome mailbox)."""

    id: str
    principal_id: str
    role: str
    recipient_scope: str | None = None


class NewServicePrincipal(BaseModel):
    """The admin endpoint's body: a service principal to plant, e.g. the app's managed identity."""

    model_config = ConfigDict(extra="forbid")
    display_name: str = Field(min_length=1)
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    app_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    kind: str = "ManagedIdentity"
    visible_after_seconds: float = Field(default=0, ge=0)


class NewExchangeRoleAssignment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    principal_id: str = Field(min_length=1)
    role: str = Field(min_length=1)
    recipient_scope: str | None = None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Grants:
    """Service principals and role assignments, kept in the sandbox's SQLite store beside the directory."""

    def __init__(self, store: DocumentStore) -> None:
        self._lock = threading.RLock()
        self._store = store
        self.principals = {row["id"]: ServicePrincipal(**row) for row in store.all("servicePrincipal")}
        self.app_role_assignments = {row["id"]: AppRoleAssignment(**row) for row in store.all("appRoleAssignment")}
        self.role_assignments = {row["id"]: RoleAssignment(**row) for row in store.all("roleAssignment")}
        self.exchange_assignments = {
            row["id"]: ExchangeRoleAssignment(**row) for row in store.all("exchangeRoleAssignment")
        }
        for app_id, (name, roles) in FIRST_PARTY_ROLES.items():
            if self.by_app_id(app_id) is None:
                self._save(ServicePrincipal(str(uuid.uuid4()), app_id, name, "Application", dict(roles)))

    def _save(self, obj: ServicePrincipal | AppRoleAssignment | RoleAssignment | ExchangeRoleAssignment) -> None:
        with self._lock:
            match obj:
                case ServicePrincipal():
                    self.principals[obj.id] = obj
                    self._store.put("servicePrincipal", obj.id, asdict(obj))
                case AppRoleAssignment():
                    self.app_role_assignments[obj.id] = obj
                    self._store.put("appRoleAssignment", obj.id, asdict(obj))
                case RoleAssignment():
                    self.role_assignments[obj.id] = obj
                    self._store.put("roleAssignment", obj.id, asdict(obj))
                case ExchangeRoleAssignment():
                    self.exchange_assignments[obj.id] = obj
                    self._store.put("exchangeRoleAssignment", obj.id, asdict(obj))

    def add_service_principal(self, new: NewServicePrincipal) -> ServicePrincipal:
        principal = ServicePrincipal(
            new.id, new.app_id, new.display_name, new.kind, {}, time.time() + new.visible_after_seconds
        )
        self._save(principal)
        return principal

    def visible(self, principal_id: str) -> ServicePrincipal | None:
        with self._lock:
            principal = self.principals.get(principal_id)
        return principal if principal is not None and time.time() >= principal.visible_at else None

    def by_app_id(self, app_id: str) -> ServicePrincipal | None:
        with self._lock:
            found = next((p for p in self.principals.values() if p.app_id.lower() == app_id.lower()), None)
        return found if found is not None and time.time() >= found.visible_at else None

    def assignments_of(self, principal_id: str) -> list[AppRoleAssignment]:
        with self._lock:
            return [a for a in self.app_role_assignments.values() if a.principal_id == principal_id]

    def roles_of(self, principal_id: str | None) -> list[RoleAssignment]:
        with self._lock:
            return [r for r in self.role_assignments.values() if principal_id in (None, r.principal_id)]

    def exchange_roles_of(self, principal_id: str) -> list[ExchangeRoleAssignment]:
        with self._lock:
            return [a for a in self.exchange_assignments.values() if a.principal_id == principal_id]

    def assign_exchange_role(self, principal_id: str, role: str, recipient_scope: str | None) -> ExchangeRoleAssignment:
        """Idempotent, as re-running the printed Exchange steps is."""
        with self._lock:
            for existing in self.exchange_roles_of(principal_id):
                if existing.role == role and existing.recipient_scope == recipient_scope:
                    return existing
            assignment = ExchangeRoleAssignment(str(uuid.uuid4()), principal_id, role, recipient_scope)
            self._save(assignment)
            return assignment

    def revoke_exchange_role(self, principal_id: str, role: str) -> None:
        """As `Remove-RoleGroupMember` or `Remove-ManagementRoleAssignment` would; Exchange looks roles up per call."""
        with self._lock:
            for assignment in self.exchange_roles_of(principal_id):
                if assignment.role == role:
                    del self.exchange_assignments[assignment.id]
                    self._store.delete("exchangeRoleAssignment", assignment.id)

    def assign_app_role(self, principal_id: str, resource_id: str, app_role_id: str) -> AppRoleAssignment | str:
        """The new assignment, or the text of Graph's 400."""
        with self._lock:
            resource = self.principals[resource_id]
            if self.visible(principal_id) is None:
                return NOT_VISIBLE_REFERENCE
            if app_role_id not in resource.app_roles.values():
                return f"Permission being assigned was not found on application '{resource.app_id}'."
            if any(
                a.resource_id == resource_id and a.app_role_id == app_role_id for a in self.assignments_of(principal_id)
            ):
                return DUPLICATE_APP_ROLE
            assignment = AppRoleAssignment(str(uuid.uuid4()), app_role_id, principal_id, resource_id, _now())
            self._save(assignment)
            return assignment

    def assign_role(self, principal_id: str, definition_id: str, scope: str) -> RoleAssignment | str:
        with self._lock:
            if any(
                r.role_definition_id == definition_id and r.directory_scope_id == scope
                for r in self.roles_of(principal_id)
            ):
                return DUPLICATE_ROLE
            assignment = RoleAssignment(str(uuid.uuid4()), principal_id, definition_id, scope)
            self._save(assignment)
            return assignment


def _principal_json(principal: ServicePrincipal) -> dict[str, Any]:
    roles = [
        {
            "id": role_id,
            "value": value,
            "displayName": value,
            "description": value,
            "allowedMemberTypes": ["Application"],
            "isEnabled": True,
            "origin": "Application",
        }
        for value, role_id in principal.app_roles.items()
    ]
    return {
        "@odata.type": "#microsoft.graph.servicePrincipal",
        "id": principal.id,
        "appId": principal.app_id,
        "displayName": principal.display_name,
        "servicePrincipalType": principal.kind,
        "appRoles": roles,
    }


def _role_definition_json(definition_id: str) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.unifiedRoleDefinition",
        "id": definition_id,
        "templateId": definition_id,
        "displayName": BUILT_IN_ROLES[definition_id],
        "isBuiltIn": True,
        "isEnabled": True,
    }


def _role_assignment_json(assignment: RoleAssignment) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.unifiedRoleAssignment",
        "id": assignment.id,
        "principalId": assignment.principal_id,
        "roleDefinitionId": assignment.role_definition_id,
        "directoryScopeId": assignment.directory_scope_id,
    }


def _not_found(request: Request, object_id: str) -> Response:
    message = f"Resource '{object_id}' does not exist or one of its queried reference-property objects are not present."
    return graph_error(request, 404, "Request_ResourceNotFound", message)


def _bad_request(request: Request, message: str) -> Response:
    return graph_error(request, 400, "Request_BadRequest", message)


def _filter(request: Request, allowed: str) -> tuple[str | None, Response | None]:
    """The value of `$filter=<allowed> eq '…'`; None when absent; a 400 for any other filter."""
    text = request.query_params.get("$filter")
    if text is None:
        return None, None
    match = _FILTER.match(text)
    if match is None or match.group(1).lower() != allowed.lower():
        return None, graph_error(
            request, 400, "Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified."
        )
    return match.group(2), None


async def _json_body(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class GrantsFace:
    def __init__(self, grants: Grants) -> None:
        self.grants = grants

    def routes(self) -> list[Route]:
        prefix = "/v1.0/roleManagement/directory"
        return [
            Route("/v1.0/servicePrincipals", self.list_principals, methods=["GET"]),
            Route("/v1.0/servicePrincipals/{id}", self.get_principal, methods=["GET"]),
            Route("/v1.0/servicePrincipals/{id}/appRoleAssignments", self.list_app_role_assignments, methods=["GET"]),
            Route("/v1.0/servicePrincipals/{id}/appRoleAssignedTo", self.assign_app_role, methods=["POST"]),
            Route(f"{prefix}/roleDefinitions/{{id}}", self.get_role_definition, methods=["GET"]),
            Route(f"{prefix}/roleAssignments", self.list_role_assignments, methods=["GET"]),
            Route(f"{prefix}/roleAssignments", self.assign_role, methods=["POST"]),
        ]

    def admin_routes(self, prefix: str) -> list[Route]:
        return [
            Route(f"{prefix}/servicePrincipals", self.plant_principal, methods=["POST"]),
            Route(f"{prefix}/exchangeRoleAssignments", self.assign_exchange_role, methods=["POST"]),
        ]

    async def list_principals(self, request: Request) -> Response:
        app_id, refused = _filter(request, "appId")
        if refused is not None:
            return refused
        if app_id is not None:
            found = self.grants.by_app_id(app_id)
            rows = [found] if found else []
        else:
            rows = [p for p in list(self.grants.principals.values()) if self.grants.visible(p.id)]
        return JSONResponse({"value": [_principal_json(p) for p in rows]})

    async def get_principal(self, request: Request) -> Response:
        principal = self.grants.visible(request.path_params["id"])
        if principal is None:
            return _not_found(request, request.path_params["id"])
        return JSONResponse(_principal_json(principal))

    async def list_app_role_assignments(self, request: Request) -> Response:
        principal = self.grants.visible(request.path_params["id"])
        if principal is None:
            return _not_found(request, request.path_params["id"])
        rows = []
        for assignment in self.grants.assignments_of(principal.id):
            resource = self.grants.principals[assignment.resource_id]
            rows.append(
                {
                    "id": assignment.id,
                    "appRoleId": assignment.app_role_id,
                    "createdDateTime": assignment.created,
                    "deletedDateTime": None,
                    "principalDisplayName": principal.display_name,
                    "principalId": principal.id,
                    "principalType": "ServicePrincipal",
                    "resourceDisplayName": resource.display_name,
                    "resourceId": resource.id,
                }
            )
        return JSONResponse({"value": rows})

    async def assign_app_role(self, request: Request) -> Response:
        resource_id = request.path_params["id"]
        if self.grants.visible(resource_id) is None:
            return _not_found(request, resource_id)
        body = await _json_body(request)
        fields = ("principalId", "resourceId", "appRoleId")
        if body is None or not all(isinstance(body.get(name), str) for name in fields):
            return _bad_request(request, "One or more properties are invalid.")
        if body["resourceId"] != resource_id:
            return _bad_request(
                request, "Invalid value specified for property 'resourceId' of resource 'AppRoleAssignment'."
            )
        result = self.grants.assign_app_role(body["principalId"], resource_id, body["appRoleId"])
        if isinstance(result, str):
            return _bad_request(request, result)
        principal = self.grants.principals[result.principal_id]
        resource = self.grants.principals[resource_id]
        return JSONResponse(
            {
                "id": result.id,
                "appRoleId": result.app_role_id,
                "createdDateTime": result.created,
                "principalDisplayName": principal.display_name,
                "principalId": result.principal_id,
                "principalType": "ServicePrincipal",
                "resourceDisplayName": resource.display_name,
                "resourceId": resource_id,
            },
            status_code=201,
        )

    async def get_role_definition(self, request: Request) -> Response:
        definition_id = request.path_params["id"]
        if definition_id not in BUILT_IN_ROLES:
            return _not_found(request, definition_id)
        return JSONResponse(_role_definition_json(definition_id))

    async def list_role_assignments(self, request: Request) -> Response:
        principal_id, refused = _filter(request, "principalId")
        if refused is not None:
            return refused
        return JSONResponse({"value": [_role_assignment_json(r) for r in self.grants.roles_of(principal_id)]})

    async def assign_role(self, request: Request) -> Response:
        body = await _json_body(request)
        fields = ("principalId", "roleDefinitionId", "directoryScopeId")
        if body is None or not all(isinstance(body.get(name), str) for name in fields):
            return _bad_request(request, "One or more properties are invalid.")
        if body["roleDefinitionId"] not in BUILT_IN_ROLES:
            return _not_found(request, body["roleDefinitionId"])
        if self.grants.visible(body["principalId"]) is None:
            return _not_found(request, body["principalId"])
        result = self.grants.assign_role(body["principalId"], body["roleDefinitionId"], body["directoryScopeId"])
        if isinstance(result, str):
            return _bad_request(request, result)
        return JSONResponse(_role_assignment_json(result), status_code=201)

    async def assign_exchange_role(self, request: Request) -> Response:
        """Stands in for the Exchange Online PowerShell steps `onboard grant` prints (role groups, RBAC for Applications)."""
        try:
            new = NewExchangeRoleAssignment.model_validate_json(await request.body())
        except ValidationError as error:
            return JSONResponse({"error": error.errors(include_url=False, include_context=False)}, status_code=422)
        if self.grants.visible(new.principal_id) is None:
            return JSONResponse({"error": f"no service principal {new.principal_id}"}, status_code=404)
        assignment = self.grants.assign_exchange_role(new.principal_id, new.role, new.recipient_scope)
        return JSONResponse(asdict(assignment), status_code=201)

    async def plant_principal(self, request: Request) -> Response:
        try:
            new = NewServicePrincipal.model_validate_json(await request.body())
        except ValidationError as error:
            return JSONResponse({"error": error.errors(include_url=False, include_context=False)}, status_code=422)
        return JSONResponse(_principal_json(self.grants.add_service_principal(new)), status_code=201)
