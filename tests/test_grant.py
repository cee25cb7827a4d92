"""`onboard grant` against the tenant sandbox: the real msgraph-sdk over HTTP, the command as an operator runs it."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner, Result

from cli.grant_graph import Directory
from cli.grant_plan import GroupKindInUse, Identity, plan_for
from cli.main import app
from shared.directory.graph import MsGraphDirectory
from shared.powershell import quoted
from standins.tenant_sandbox import TenantSandbox
from standins.tenant_sandbox.credential import SandboxCredential
from standins.tenant_sandbox.grants_face import (
    DUPLICATE_APP_ROLE,
    DUPLICATE_ROLE,
    EXCHANGE_APP_ID,
    GRAPH_APP_ID,
    NOT_VISIBLE_REFERENCE,
    NewServicePrincipal,
    ServicePrincipal,
)

ERA = "31392ffb-586c-42d1-9346-e59415a2cc4e"
SENDER = "welcome@contoso.com"


def identity_in(sandbox: TenantSandbox, *, visible_after_seconds: float = 0) -> ServicePrincipal:
    new = NewServicePrincipal(display_name="id-onboarding-test", visible_after_seconds=visible_after_seconds)
    return sandbox.grants.add_service_principal(new)


def grant(sandbox: TenantSandbox, identity: str, *options: str, answer: str | None = None) -> Result:
    arguments = ["grant", "--identity", identity, "--graph-url", sandbox.graph_base_url]
    arguments += ["--sandbox-tenant-id", sandbox.tenant_id, *options]
    return CliRunner().invoke(app, arguments, input=answer, env={"COLUMNS": "200", "ONBOARDING_WELCOME_SENDER": ""})


def app_roles_of(sandbox: TenantSandbox, principal_id: str) -> set[str]:
    """Role values, as `Resource/Value`, that the identity holds in the sandbox."""
    names = {}
    for resource in sandbox.grants.principals.values():
        for value, role_id in resource.app_roles.items():
            names[(resource.id, role_id)] = f"{resource.display_name}/{value}"
    return {names[(a.resource_id, a.app_role_id)] for a in sandbox.grants.assignments_of(principal_id)}


def posts(sandbox: TenantSandbox) -> list[str]:
    return [entry.operation for entry in sandbox.request_log if entry.operation.startswith("POST")]


def test_grants_what_the_group_kinds_need_and_a_second_run_changes_nothing(tenant_sandbox: TenantSandbox) -> None:
    identity = identity_in(tenant_sandbox)
    first = grant(tenant_sandbox, identity.id, "--group-kinds", "distribution,m365", "--yes")
    assert first.exit_code == 0, first.output
    assert app_roles_of(tenant_sandbox, identity.id) == {
        "Microsoft Graph/Group.Read.All",
        "Microsoft Graph/User.Read.All",
        "Microsoft Graph/OrgContact.Read.All",
        "Microsoft Graph/User.Invite.All",
        "Microsoft Graph/GroupMember.ReadWrite.All",
        "Office 365 Exchange Online/Exchange.ManageAsApp",
    }
    assert [r.role_definition_id for r in tenant_sandbox.grants.roles_of(identity.id)] == [ERA]
    assert "Exchange steps" not in first.output, "distribution and Microsoft 365 groups need no manual step"

    tenant_sandbox.request_log.clear()
    second = grant(tenant_sandbox, identity.id, "--group-kinds", "distribution,m365")  # no --yes: nothing to ask
    assert second.exit_code == 0, second.output
    assert "Nothing to change" in second.output
    assert posts(tenant_sandbox) == []
    assert len(tenant_sandbox.grants.assignments_of(identity.id)) == 6


def test_mail_send_is_granted_only_with_the_welcome_message_and_only_tenant_wide_on_request(
    tenant_sandbox: TenantSandbox,
) -> None:
    identity = identity_in(tenant_sandbox)
    without = grant(tenant_sandbox, identity.id, "--group-kinds", "distribution", "--yes")
    assert without.exit_code == 0, without.output
    assert app_roles_of(tenant_sandbox, identity.id) == {
        "Microsoft Graph/Group.Read.All",
        "Microsoft Graph/User.Read.All",
        "Microsoft Graph/OrgContact.Read.All",
        "Office 365 Exchange Online/Exchange.ManageAsApp",
    }

    scoped = grant(tenant_sandbox, identity.id, "--group-kinds", "distribution", "--welcome-sender", SENDER, "--yes")
    assert scoped.exit_code == 0, scoped.output
    assert "Microsoft Graph/Mail.Send" not in app_roles_of(tenant_sandbox, identity.id)
    assert f"-RecipientRestrictionFilter {quoted(f'PrimarySmtpAddress -eq {quoted(SENDER)}')}" in scoped.output
    assert f"New-ManagementRoleAssignment -App '{identity.id}' -Role 'Application Mail.Send'" in scoped.output
    assert f"New-ServicePrincipal -AppId '{identity.app_id}' -ObjectId '{identity.id}'" in scoped.output
    assert "-Roles 'Message Tracking'" in scoped.output

    wide = grant(
        tenant_sandbox,
        identity.id,
        "--group-kinds",
        "distribution",
        "--welcome-sender",
        SENDER,
        "--tenant-wide-mail-send",
        "--yes",
    )
    assert wide.exit_code == 0, wide.output
    assert "Microsoft Graph/Mail.Send" in app_roles_of(tenant_sandbox, identity.id)
    assert "Application Mail.Send" not in wide.output


def test_mail_enabled_security_groups_print_the_role_group_steps(tenant_sandbox: TenantSandbox) -> None:
    identity = identity_in(tenant_sandbox)
    result = grant(tenant_sandbox, identity.app_id, "--group-kinds", "mail-enabled-security", "--yes")  # by client id
    assert result.exit_code == 0, result.output
    assert "-Roles 'Security Group Creation and Membership'" in result.output
    assert "Add-RoleGroupMember -Identity 'Onboarding security group membership'" in result.output
    assert [r.role_definition_id for r in tenant_sandbox.grants.roles_of(identity.id)] == [ERA]


def test_a_new_identity_is_waited_for_until_it_replicates(tenant_sandbox: TenantSandbox) -> None:
    identity = identity_in(tenant_sandbox, visible_after_seconds=6)  # past a slow start on a loaded machine
    result = grant(tenant_sandbox, identity.id, "--group-kinds", "distribution", "--yes", "--wait-for-identity", "30")
    assert result.exit_code == 0, result.output
    lookups = [e.status for e in tenant_sandbox.request_log if e.operation == "GET /v1.0/servicePrincipals/{id}"]
    assert 404 in lookups and lookups[-1] == 200
    assert len(tenant_sandbox.grants.assignments_of(identity.id)) == 4


def test_an_identity_that_never_appears_fails_in_one_line_within_the_bound(tenant_sandbox: TenantSandbox) -> None:
    result = grant(tenant_sandbox, "5c1f0c57-0000-4000-8000-000000000001", "--group-kinds", "m365", "--yes",
                   "--wait-for-identity", "2")  # fmt: skip
    assert result.exit_code == 1
    assert "still not visible after 2 s" in result.output and "Request_ResourceNotFound" in result.output
    assert "Traceback" not in result.output


def test_declining_grants_nothing(tenant_sandbox: TenantSandbox) -> None:
    identity = identity_in(tenant_sandbox)
    result = grant(tenant_sandbox, identity.id, "--group-kinds", "distribution", answer="n\n")
    assert result.exit_code == 1
    assert "to grant" in result.output and "declined" in result.output
    assert tenant_sandbox.grants.assignments_of(identity.id) == []


def test_an_operator_without_the_role_gets_one_line_and_a_hint(tenant_sandbox: TenantSandbox) -> None:
    identity = identity_in(tenant_sandbox)
    tenant_sandbox.inject("graph", 403, operation="POST /v1.0/servicePrincipals/{id}/appRoleAssignedTo")
    result = grant(tenant_sandbox, identity.id, "--group-kinds", "distribution", "--yes")
    assert result.exit_code == 1
    assert "403 Authorization_RequestDenied" in result.output and "Privileged Role Administrator" in result.output
    assert "Traceback" not in result.output


async def test_graphs_400_for_a_duplicate_counts_as_already_done(tenant_sandbox: TenantSandbox) -> None:
    """The race the look-up cannot close: another run granted in between. Graph answers 400, not 409."""
    principal = identity_in(tenant_sandbox)
    administrator = SandboxCredential.administrator(tenant_sandbox.tenant_id, authority=tenant_sandbox.base_url)
    graph = MsGraphDirectory(administrator, base_url=tenant_sandbox.graph_base_url)
    try:
        directory = Directory(graph.sdk, wait_for_identity=5)
        identity = Identity(principal.id, principal.app_id, principal.display_name)
        exchange = await directory.resource(EXCHANGE_APP_ID, "Office 365 Exchange Online")
        role_id = exchange.app_roles["Exchange.ManageAsApp"]
        assert await directory.assign_app_role(identity, exchange, role_id, "Exchange.ManageAsApp") is True
        assert await directory.assign_app_role(identity, exchange, role_id, "Exchange.ManageAsApp") is False
        role = plan_for(frozenset({GroupKindInUse.DISTRIBUTION}), None).directory_roles[0]
        assert await directory.assign_directory_role(identity, role) is True
        assert await directory.assign_directory_role(identity, role) is False
    finally:
        await graph.close()
    assert [e.status for e in tenant_sandbox.request_log if e.operation.startswith("POST")] == [201, 400, 201, 400]


def test_the_sandbox_answers_grant_calls_as_graph_does(tenant_sandbox: TenantSandbox) -> None:
    """Fidelity of the stand-in itself (docs/microsoft-365-facts.md, "Granting the app's rights")."""
    hidden = identity_in(tenant_sandbox, visible_after_seconds=60)
    graph_sp = tenant_sandbox.grants.by_app_id(GRAPH_APP_ID)
    assert graph_sp is not None
    url = tenant_sandbox.graph_base_url
    with httpx.Client(headers=tenant_sandbox.authorization("graph")) as http:
        missing = http.get(f"{url}/servicePrincipals/{hidden.id}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "Request_ResourceNotFound"
        body = {"principalId": hidden.id, "resourceId": graph_sp.id, "appRoleId": graph_sp.app_roles["User.Read.All"]}
        early = http.post(f"{url}/servicePrincipals/{graph_sp.id}/appRoleAssignedTo", json=body)
        assert early.status_code == 400 and early.json()["error"]["message"] == NOT_VISIBLE_REFERENCE

        visible = identity_in(tenant_sandbox)
        body["principalId"] = visible.id
        assert http.post(f"{url}/servicePrincipals/{graph_sp.id}/appRoleAssignedTo", json=body).status_code == 201
        again = http.post(f"{url}/servicePrincipals/{graph_sp.id}/appRoleAssignedTo", json=body)
        assert again.status_code == 400 and again.json()["error"]["message"] == DUPLICATE_APP_ROLE

        role = {"principalId": visible.id, "roleDefinitionId": ERA, "directoryScopeId": "/"}
        assert http.post(f"{url}/roleManagement/directory/roleAssignments", json=role).status_code == 201
        twice = http.post(f"{url}/roleManagement/directory/roleAssignments", json=role)
        assert twice.status_code == 400 and twice.json()["error"]["message"] == DUPLICATE_ROLE

        odd = http.get(f"{url}/servicePrincipals", params={"$filter": "startswith(displayName,'id')"})
        assert odd.status_code == 400 and odd.json()["error"]["code"] == "Request_UnsupportedQuery"


@pytest.mark.parametrize(
    ("kinds", "welcome", "expected"),
    [
        (
            {GroupKindInUse.DISTRIBUTION},
            None,
            {"Group.Read.All", "User.Read.All", "OrgContact.Read.All", "Exchange.ManageAsApp"},
        ),
        (
            {GroupKindInUse.M365},
            SENDER,
            {"Group.Read.All", "User.Read.All", "User.Invite.All", "GroupMember.ReadWrite.All", "Exchange.ManageAsApp"},
        ),
    ],
)
def test_the_plan_holds_only_what_the_features_use(
    kinds: set[GroupKindInUse], welcome: str | None, expected: set[str]
) -> None:
    plan = plan_for(frozenset(kinds), welcome)
    assert {grant.value for grant in plan.app_roles} == expected
    assert [role.name for role in plan.directory_roles] == ["Exchange Recipient Administrator"]


def test_an_unknown_group_kind_is_refused_before_any_call() -> None:
    result = CliRunner().invoke(
        app, ["grant", "--identity", "x", "--group-kinds", "distribution,dynamic"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "'dynamic' is not one of" in result.output
