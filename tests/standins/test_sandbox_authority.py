"""The sandbox checks rights as Microsoft does: tokens from its issuing side, Graph app roles per route, Exchange roles per cmdlet."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from standins.tenant_sandbox import TenantSandbox
from standins.tenant_sandbox.authority import (
    EXCHANGE_RECIPIENT_ADMINISTRATOR,
    INSUFFICIENT_PRIVILEGES,
    MANAGE_AS_APP,
    every_permission,
)
from standins.tenant_sandbox.grants_face import EXCHANGE_APP_ID, FIRST_PARTY_ROLES, GRAPH_APP_ID, NewServicePrincipal

pytestmark = pytest.mark.stack  # every test here starts the sandbox

GRAPH = "https://graph.microsoft.com/.default"
EXCHANGE = "https://outlook.office365.com/.default"


def _token(sandbox: TenantSandbox, client_id: str, scope: str) -> httpx.Response:
    return httpx.post(
        f"{sandbox.base_url}/{sandbox.tenant_id}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "scope": scope},
    )


def _claims(token: str) -> dict[str, Any]:
    import base64
    import json

    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def _app(sandbox: TenantSandbox) -> tuple[str, str]:
    principal = sandbox.grants.add_service_principal(NewServicePrincipal(display_name="onboarding app"))
    return principal.id, principal.app_id


def _grant(sandbox: TenantSandbox, principal_id: str, resource_app_id: str, value: str) -> None:
    resource = sandbox.grants.by_app_id(resource_app_id)
    assert resource is not None
    result = sandbox.grants.assign_app_role(principal_id, resource.id, FIRST_PARTY_ROLES[resource_app_id][1][value])
    assert not isinstance(result, str), result


def _bearer(sandbox: TenantSandbox, client_id: str, scope: str) -> dict[str, str]:
    answer = _token(sandbox, client_id, scope)
    assert answer.status_code == 200, answer.text
    headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
    if scope == EXCHANGE:
        headers["X-AnchorMailbox"] = sandbox.authorization("exchange")["X-AnchorMailbox"]
    return headers


def _invoke(sandbox: TenantSandbox, headers: dict[str, str], cmdlet: str, **parameters: Any) -> httpx.Response:
    return httpx.post(
        f"{sandbox.exchange_base_url}/adminapi/beta/{sandbox.tenant_id}/InvokeCommand",
        json={"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}},
        headers=headers,
    )


def test_an_unknown_client_gets_no_token(tenant_sandbox: TenantSandbox) -> None:
    answer = _token(tenant_sandbox, "6a0b7f3e-0000-4000-8000-000000000000", GRAPH)
    assert answer.status_code == 400
    assert answer.json()["error"] == "unauthorized_client" and "AADSTS700016" in answer.json()["error_description"]


def test_a_token_carries_what_the_directory_grants_and_nothing_more(tenant_sandbox: TenantSandbox) -> None:
    principal_id, app_id = _app(tenant_sandbox)
    bare = _claims(_token(tenant_sandbox, app_id, GRAPH).json()["access_token"])
    assert bare["idtyp"] == "app" and bare["oid"] == principal_id and bare["appid"] == app_id
    assert "roles" not in bare and "wids" not in bare  # Entra leaves out empty claims

    _grant(tenant_sandbox, principal_id, GRAPH_APP_ID, "Group.Read.All")
    _grant(tenant_sandbox, principal_id, EXCHANGE_APP_ID, MANAGE_AS_APP)
    assert tenant_sandbox.grants.assign_role(principal_id, EXCHANGE_RECIPIENT_ADMINISTRATOR, "/")
    graph = _claims(_token(tenant_sandbox, app_id, GRAPH).json()["access_token"])
    exchange = _claims(_token(tenant_sandbox, app_id, EXCHANGE).json()["access_token"])
    assert graph["roles"] == ["Group.Read.All"] and graph["aud"] == "https://graph.microsoft.com"
    assert exchange["roles"] == [MANAGE_AS_APP] and exchange["wids"] == [EXCHANGE_RECIPIENT_ADMINISTRATOR]


def test_graph_refuses_a_route_whose_permission_the_token_lacks(tenant_sandbox: TenantSandbox) -> None:
    principal_id, app_id = _app(tenant_sandbox)
    groups = f"{tenant_sandbox.graph_base_url}/groups"
    refused = httpx.get(groups, headers=_bearer(tenant_sandbox, app_id, GRAPH))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "Authorization_RequestDenied"
    assert refused.json()["error"]["message"] == INSUFFICIENT_PRIVILEGES

    _grant(tenant_sandbox, principal_id, GRAPH_APP_ID, "Group.Read.All")
    assert httpx.get(groups, headers=_bearer(tenant_sandbox, app_id, GRAPH)).status_code == 200


def test_check_member_groups_needs_directory_read_all_for_an_org_contact(tenant_sandbox: TenantSandbox) -> None:
    created = _invoke(
        tenant_sandbox,
        tenant_sandbox.authorization("exchange"),
        "New-MailContact",
        Name="Ana Silva",
        ExternalEmailAddress="ana@fabrikam.example",
    )
    contact_id = created.json()["value"][0]["ExternalDirectoryObjectId"]
    group = next(g for g in tenant_sandbox.directory.groups.values() if g.display_name == "Partners")
    url = f"{tenant_sandbox.graph_base_url}/directoryObjects/{contact_id}/checkMemberGroups"
    body = {"groupIds": [group.id]}
    # Every other permission the sandbox knows, but not Directory.Read.All (nor its ReadWrite sibling).
    others = tuple(p for p in every_permission() if not p.startswith("Directory."))
    refused = httpx.post(url, json=body, headers=tenant_sandbox.authorization("graph", roles=others))
    assert refused.status_code == 403, refused.text
    allowed = httpx.post(url, json=body, headers=tenant_sandbox.authorization("graph", roles=("Directory.Read.All",)))
    assert allowed.status_code == 200, allowed.text


def test_exchange_needs_manage_as_app_then_a_role_for_each_cmdlet(tenant_sandbox: TenantSandbox) -> None:
    principal_id, app_id = _app(tenant_sandbox)
    without_role = _invoke(tenant_sandbox, _bearer(tenant_sandbox, app_id, EXCHANGE), "Get-AcceptedDomain")
    assert without_role.status_code == 401 and "no permissions" in without_role.headers["x-ms-diagnostics"]

    _grant(tenant_sandbox, principal_id, EXCHANGE_APP_ID, MANAGE_AS_APP)
    no_directory_role = _invoke(tenant_sandbox, _bearer(tenant_sandbox, app_id, EXCHANGE), "New-MailContact")
    assert no_directory_role.status_code == 401
    assert no_directory_role.json()["error"]["message"] == "User is not allowed to call New-MailContact"

    tenant_sandbox.grants.assign_role(principal_id, EXCHANGE_RECIPIENT_ADMINISTRATOR, "/")
    headers = _bearer(tenant_sandbox, app_id, EXCHANGE)
    created = _invoke(
        tenant_sandbox, headers, "New-MailContact", Name="Ana Silva", ExternalEmailAddress="ana@fabrikam.example"
    )
    assert created.status_code == 200, created.text
    add_with_bypass = {
        "Identity": "suppliers-secure@contoso.com",
        "Member": "ana@fabrikam.example",
        "BypassSecurityGroupManagerCheck": True,
    }
    # Recipient Management holds no "Security Group Creation and Membership": the bypass switch does not exist.
    hidden = _invoke(tenant_sandbox, headers, "Add-DistributionGroupMember", **add_with_bypass)
    assert hidden.status_code == 400 and "BypassSecurityGroupManagerCheck" in hidden.text

    tenant_sandbox.grants.assign_exchange_role(principal_id, "Security Group Creation and Membership", None)
    added = _invoke(tenant_sandbox, headers, "Add-DistributionGroupMember", **add_with_bypass)
    assert added.status_code == 200, added.text


def test_mail_send_scoped_by_rbac_for_applications_reaches_one_mailbox_only(tenant_sandbox: TenantSandbox) -> None:
    principal_id, app_id = _app(tenant_sandbox)
    welcome = "welcome@contoso.com"
    tenant_sandbox.grants.assign_exchange_role(principal_id, "Application Mail.Send", welcome)
    headers = _bearer(tenant_sandbox, app_id, GRAPH)
    mail = {"message": {"subject": "hi", "toRecipients": [{"emailAddress": {"address": "ana@fabrikam.example"}}]}}
    other = next(u.mail for u in tenant_sandbox.directory.users.values() if u.mail != welcome)
    refused = httpx.post(f"{tenant_sandbox.graph_base_url}/users/{other}/sendMail", json=mail, headers=headers)
    assert refused.status_code == 403
    sent = httpx.post(f"{tenant_sandbox.graph_base_url}/users/{welcome}/sendMail", json=mail, headers=headers)
    assert sent.status_code == 202, sent.text


def test_message_trace_queries_share_the_tenants_quota(tenant_sandbox: TenantSandbox) -> None:
    tenant_sandbox.set_knobs(message_trace_quota=3)
    headers = tenant_sandbox.authorization("exchange")
    answers = [_invoke(tenant_sandbox, headers, "Get-MessageTraceV2").status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429]
    refused = _invoke(tenant_sandbox, headers, "Get-MessageTraceV2")
    assert 1 <= int(refused.headers["Retry-After"]) <= 300 and "message trace" in refused.text
