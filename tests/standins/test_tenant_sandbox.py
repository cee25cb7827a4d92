"""The tenant sandbox itself: lifecycle, seed, and the Graph / Exchange wire shapes others rely on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from standins.tenant_sandbox import TenantSandbox, TenantSeed
from standins.tenant_sandbox.model import SeedContact, SeedUser

pytestmark = pytest.mark.stack  # every test here starts stand-ins


def _invoke(sandbox: TenantSandbox, cmdlet: str, **parameters: Any) -> httpx.Response:
    return httpx.post(
        f"{sandbox.exchange_base_url}/adminapi/beta/{sandbox.tenant_id}/InvokeCommand",
        json={"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}},
        headers=sandbox.authorization("exchange"),
    )


def test_demo_seed_has_the_documented_tenant() -> None:
    seed = TenantSeed.demo()
    assert seed.tenant.name == "Contoso" and seed.tenant.initial_domain == "contoso.onmicrosoft.com"
    assert set(seed.tenant.domains) == {"contoso.com", "contoso.onmicrosoft.com"}
    kinds = {g.display_name: (g.kind.value, g.require_sender_authentication, g.dynamic) for g in seed.groups}
    assert kinds["Partners"] == ("Distribution", True, False)
    assert kinds["Suppliers (secure)"] == ("MailEnabledSecurity", False, False)
    assert kinds["Project Falcon"] == ("Microsoft365", True, False)
    assert kinds["Finance Team"][0] == "Security"
    assert kinds["All Staff"][0] == "Microsoft365" and kinds["All Staff"][2]


def test_bad_seed_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "seed.json"
    bad.write_text(json.dumps({"tenant": {"id": "nope", "name": "x", "initial_domain": "x", "domains": []}}))
    with pytest.raises(pydantic.ValidationError):
        TenantSeed.load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        TenantSeed.load(tmp_path / "missing.json")


def test_start_stop_frees_the_port_and_is_idempotent() -> None:
    sandbox = TenantSandbox(TenantSeed.demo())
    sandbox.start()
    port = sandbox.port
    assert sandbox.base_url == f"http://127.0.0.1:{port}" and sandbox.graph_base_url.endswith("/v1.0")
    sandbox.stop()
    sandbox.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_graph_401_without_token_has_graph_error_shape(tenant_sandbox: TenantSandbox) -> None:
    response = httpx.get(f"{tenant_sandbox.graph_base_url}/groups?$filter=mail eq 'partners@contoso.com'")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "InvalidAuthenticationToken"
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    assert tenant_sandbox.request_log[-1][:3] == ("graph", "GET /v1.0/groups", 401)


def test_graph_filter_unescapes_doubled_quotes(tenant_sandbox: TenantSandbox) -> None:
    tenant_sandbox.directory.add_guest("o'brien@fabrikam.example", "O'Brien")
    response = httpx.get(
        f"{tenant_sandbox.graph_base_url}/users",
        params={"$filter": "mail eq 'O''Brien@fabrikam.example'"},
        headers=tenant_sandbox.authorization("graph"),
    )
    assert [u["displayName"] for u in response.json()["value"]] == ["O'Brien"]
    bad = httpx.get(
        f"{tenant_sandbox.graph_base_url}/users",
        params={"$filter": "startswith(mail,'o')"},
        headers=tenant_sandbox.authorization("graph"),
    )
    assert bad.status_code == 400


def test_org_contact_is_listed_as_org_contact_and_cannot_join_m365_group(tenant_sandbox: TenantSandbox) -> None:
    created = _invoke(tenant_sandbox, "New-MailContact", Name="C", ExternalEmailAddress="c@fabrikam.example")
    contact_id = created.json()["value"][0]["ExternalDirectoryObjectId"]
    partners = tenant_sandbox.directory.group_by_identity("Partners")
    falcon = tenant_sandbox.directory.group_by_identity("Project Falcon")
    assert partners and falcon
    assert _invoke(tenant_sandbox, "Add-DistributionGroupMember", Identity="Partners", Member="C").status_code == 200
    members = httpx.get(
        f"{tenant_sandbox.graph_base_url}/groups/{partners.id}/members", headers=tenant_sandbox.authorization("graph")
    ).json()
    assert members["value"][0]["@odata.type"] == "#microsoft.graph.orgContact"
    assert members["value"][0]["id"] == contact_id
    refused = httpx.post(
        f"{tenant_sandbox.graph_base_url}/groups/{falcon.id}/members/$ref",
        json={"@odata.id": f"https://graph.microsoft.com/v1.0/directoryObjects/{contact_id}"},
        headers=tenant_sandbox.authorization("graph"),
    )
    assert refused.status_code == 400 and contact_id not in falcon.members


SEEDED_CONTACT = SeedContact(
    guid="5d0c1b2a-0000-4e1f-9a8b-7c6d5e4f3a01",
    external_directory_object_id="5d0c1b2a-1111-4e1f-9a8b-7c6d5e4f3a01",
    name="Seeded Person",
    external_email_address="seeded.person@fabrikam.example",
    custom_attributes={"CustomAttribute15": "m365-external-onboarding;created-by=req-seeded"},
)
SEEDED_GUEST = SeedUser(
    id="5d0c1b2a-2222-4e1f-9a8b-7c6d5e4f3a01",
    display_name="Seeded Guest",
    mail="seeded.guest@tailspin.example",
    user_type="Guest",
    account_enabled=False,
)
_IDS = {"Guid", "Identity", "Name", "DisplayName", "ExternalEmailAddress", "PrimarySmtpAddress"}
_IDS |= {"ExternalDirectoryObjectId", "id", "displayName", "mail", "userPrincipalName", "otherMails", "proxyAddresses"}


def _without_names(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key not in _IDS}


def test_seeded_contacts_and_guests_look_as_the_pipeline_and_an_administrator_leave_them() -> None:
    """A seeded contact is what New-MailContact, the app's stamp and Add-DistributionGroupMember make; a seeded
    guest with account_enabled false is what an invitation, POST members/$ref and a blocked sign-in leave."""
    demo = TenantSeed.demo()
    groups = tuple(
        g.model_copy(update={"members": (*g.members, SEEDED_CONTACT.external_directory_object_id)})
        if g.display_name == "Partners"
        else g.model_copy(
            update={"members": (*g.members, SEEDED_GUEST.id), "subscribers": (*g.subscribers, SEEDED_GUEST.id)}
        )
        if g.display_name == "Project Falcon"
        else g
        for g in demo.groups
    )
    seed = demo.model_copy(
        update={"contacts": (SEEDED_CONTACT,), "users": (*demo.users, SEEDED_GUEST), "groups": groups}
    )
    with TenantSandbox(seed) as sandbox:
        made = _invoke(sandbox, "New-MailContact", Name="Made Person", ExternalEmailAddress="made@fabrikam.example")
        stamp = SEEDED_CONTACT.custom_attributes["CustomAttribute15"].replace("req-seeded", "req-made")
        assert _invoke(sandbox, "Set-MailContact", Identity="Made Person", CustomAttribute15=stamp).status_code == 200
        assert _invoke(sandbox, "Add-DistributionGroupMember", Identity="Partners", Member="Made Person").is_success
        seeded_row, made_row = (
            _invoke(sandbox, "Get-MailContact", Identity=name).json()["value"][0]
            for name in ("Seeded Person", "Made Person")
        )
        assert made.json()["value"][0]["Guid"] == made_row["Guid"]
        assert _without_names(seeded_row) | {"CustomAttribute15": ""} == _without_names(made_row) | {
            "CustomAttribute15": ""
        }
        assert seeded_row["CustomAttribute15"].endswith("req-seeded") and made_row["CustomAttribute15"].endswith(
            "req-made"
        )
        listed = _invoke(sandbox, "Get-DistributionGroupMember", Identity="Partners").json()["value"]
        by_name = {row["Name"]: row for row in listed}
        assert _without_names(by_name["Seeded Person"]) | {"CustomAttribute15": ""} == _without_names(
            by_name["Made Person"]
        ) | {"CustomAttribute15": ""}
        graph = sandbox.authorization("graph")
        contacts = [
            httpx.get(f"{sandbox.graph_base_url}/contacts/{row['ExternalDirectoryObjectId']}", headers=graph).json()
            for row in (seeded_row, made_row)
        ]
        assert _without_names(contacts[0]) == _without_names(contacts[1])

        directory = sandbox.directory
        falcon = directory.group_by_identity("Project Falcon")
        assert falcon is not None
        invited = directory.add_guest("invited.guest@tailspin.example", "Invited Guest")
        directory.show_to_exchange(invited)  # long after the invitation and the add: Exchange has caught up
        directory.add_member(falcon, invited.id)
        directory.set_account_enabled(invited, False)
        select = {"$select": "id,displayName,mail,userType,accountEnabled,otherMails,userPrincipalName,proxyAddresses"}
        users = [
            httpx.get(f"{sandbox.graph_base_url}/users/{user_id}", params=select, headers=graph).json()
            for user_id in (SEEDED_GUEST.id, invited.id)
        ]
        assert users[0]["accountEnabled"] is False and _without_names(users[0]) == _without_names(users[1])
        assert users[0]["userPrincipalName"].endswith("#EXT#@contoso.onmicrosoft.com")
        assert users[0]["otherMails"] == [SEEDED_GUEST.mail]
        subscribers = _invoke(sandbox, "Get-UnifiedGroupLinks", Identity="Project Falcon", LinkType="Subscribers")
        assert {SEEDED_GUEST.id, invited.id} <= {
            row["ExternalDirectoryObjectId"] for row in subscribers.json()["value"]
        }


def test_a_seeded_contact_with_an_attribute_exchange_has_not_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="CustomAttribute16"):
        SEEDED_CONTACT.model_validate(SEEDED_CONTACT.model_dump() | {"custom_attributes": {"CustomAttribute16": "x"}})


def test_exchange_error_shape_and_literal_parameters(tenant_sandbox: TenantSandbox) -> None:
    missing = _invoke(tenant_sandbox, "Get-MailContact", Identity="ghost")
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["message"] == "Invalid Operation"  # Exchange's literal text; the cause is in details
    error_id, exception_type, text = error["details"][0]["message"].split("|", 2)
    assert error_id and exception_type.endswith(".ManagementObjectNotFoundException") and "'ghost'" in text
    assert error["innererror"]["internalexception"] == {"message": text, "type": exception_type}
    assert missing.headers["X-ExceptionType"] == exception_type
    name = 'x"; Remove-MailContact -Identity * -Confirm:$false; "$(whoami)'
    created = _invoke(tenant_sandbox, "New-MailContact", Name=name[:64], ExternalEmailAddress="SMTP:z@fabrikam.example")
    assert created.status_code == 200
    assert created.json()["value"][0]["Name"] == name[:64]
    assert (
        _invoke(tenant_sandbox, "New-MailContact", Name="n" * 65, ExternalEmailAddress="q@f.example").status_code == 400
    )
    assert _invoke(tenant_sandbox, "Invoke-Expression", Command="whoami").status_code == 400


def test_exchange_refuses_another_tenant(tenant_sandbox: TenantSandbox) -> None:
    response = httpx.post(
        f"{tenant_sandbox.exchange_base_url}/adminapi/beta/00000000-0000-0000-0000-000000000000/InvokeCommand",
        json={"CmdletInput": {"CmdletName": "Get-AcceptedDomain", "Parameters": {}}},
        headers=tenant_sandbox.authorization("exchange"),
    )
    assert response.status_code == 400


def test_module_entry_point_prints_settings() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "standins.tenant_sandbox", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(4)]
        assert f"ONBOARDING_GRAPH_BASE_URL=http://127.0.0.1:{port}/v1.0" in lines
        assert any(line.startswith("ONBOARDING_TENANT_ID=") for line in lines)
    finally:
        process.terminate()
        process.wait(timeout=10)
