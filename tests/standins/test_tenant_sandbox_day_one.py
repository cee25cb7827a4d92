"""What the sandbox used to hide (issue 24): refused invitations, groups that refuse guests, Exchange
behind Entra, Exchange's own Guids, slow cmdlets, Rate-Limit headers and the date form Exchange is sent.

Each behaviour and its source: docs/microsoft-365-facts.md, section 8.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from standins.tenant_sandbox import Knobs, TenantSandbox, TenantSeed
from standins.tenant_sandbox.authority import ACCESS_AS_USER, GLOBAL_ADMINISTRATOR
from standins.tenant_sandbox.model import SeedUser
from standins.tenant_sandbox.token_face import encode_token, token_claims
from tests.fixtures.day_one import PAT, SAM

pytestmark = pytest.mark.stack  # every test here starts stand-ins

FALCON = "project-falcon@contoso.com"
# A B2B user from another organisation whose userType is Member (cross-tenant synchronisation does this).
ROBIN = SeedUser(
    id="0b6a9c1e-6666-4a4e-9b1a-5f7c2d3e4a06",
    display_name="Robin External",
    mail="robin@partner.example",
    external=True,
)


@pytest.fixture
def sandbox() -> Any:
    seed = TenantSeed.demo()
    with TenantSandbox(seed.model_copy(update={"users": (*seed.users, PAT, SAM, ROBIN)})) as running:
        yield running


def _invite(sandbox: TenantSandbox, address: str, *, delegated: bool = False) -> httpx.Response:
    headers = sandbox.authorization("graph")
    if delegated:  # an administrator signed in: a delegated token with the Global Administrator role
        claims = token_claims(
            sandbox.tenant_id,
            "https://graph.microsoft.com",
            object_id="admin",
            app_id="admin-tool",
            wids=[GLOBAL_ADMINISTRATOR],
            scopes=ACCESS_AS_USER,
        )
        headers = {"Authorization": f"Bearer {encode_token(claims)}"}
    return httpx.post(
        f"{sandbox.graph_base_url}/invitations",
        json={"invitedUserEmailAddress": address, "inviteRedirectUrl": "https://myapplications.microsoft.com"},
        headers=headers,
    )


def _invoke(sandbox: TenantSandbox, cmdlet: str, **parameters: Any) -> httpx.Response:
    return httpx.post(
        f"{sandbox.exchange_base_url}/adminapi/beta/{sandbox.tenant_id}/InvokeCommand",
        json={"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}},
        headers=sandbox.authorization("exchange"),
        timeout=30,
    )


# --- Invitations can be refused ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "holder"),
    [("pat.private@fabrikam.example", PAT), ("Sam@Fabrikam.example", SAM), ("adele.vance@contoso.com", None)],
)
def test_an_address_an_internal_user_holds_is_refused_naming_the_user(
    sandbox: TenantSandbox, address: str, holder: SeedUser | None
) -> None:
    answer = _invite(sandbox, address)
    expected = holder.id if holder else sandbox.directory.users_claiming(address)[0].id
    assert answer.status_code == 400
    assert (
        answer.json()["error"]["message"]
        == f"The invited user already exists in the directory as object ID: {expected}."
    )
    assert len(sandbox.directory.users) == len(sandbox.seed.users)  # no guest was made


def test_users_are_found_by_user_principal_name_and_other_mails(sandbox: TenantSandbox) -> None:
    def names(condition: str) -> list[str]:
        answer = httpx.get(
            f"{sandbox.graph_base_url}/users",
            params={"$filter": condition, "$select": "displayName,userType"},
            headers=sandbox.authorization("graph"),
        )
        assert answer.status_code == 200, answer.text
        return [user["displayName"] for user in answer.json()["value"]]

    assert names("userPrincipalName eq 'sam@fabrikam.example'") == ["Sam Roe"]
    assert names("otherMails/any(o:o eq 'pat.private@fabrikam.example')") == ["Pat Doe"]
    assert names("mail eq 'pat.private@fabrikam.example' or otherMails/any(o:o eq 'pat.private@fabrikam.example')") == [
        "Pat Doe"
    ]


def test_who_may_invite_is_the_tenants_allow_invites_from(sandbox: TenantSandbox) -> None:
    sandbox.directory.change_settings(allow_invites_from="adminsAndGuestInviters")
    refused = _invite(sandbox, "new.person@fabrikam.example")  # an app: not an administrator
    assert refused.status_code == 403
    assert refused.json()["error"]["message"].startswith("Guest invitations not allowed for your company.")
    assert _invite(sandbox, "new.person@fabrikam.example", delegated=True).status_code == 201
    sandbox.directory.change_settings(allow_invites_from="none")
    assert _invite(sandbox, "other.person@fabrikam.example", delegated=True).status_code == 403
    sandbox.directory.change_settings(allow_invites_from="adminsGuestInvitersAndAllMembers")
    assert _invite(sandbox, "other.person@fabrikam.example").status_code == 201


def test_the_b2b_allow_and_deny_lists_refuse_new_guests_only(sandbox: TenantSandbox) -> None:
    sandbox.directory.change_settings(b2b_blocked_domains=["fabrikam.example"])
    blocked = _invite(sandbox, "new.person@fabrikam.example")
    assert blocked.status_code == 400 and "blocked by your invitation policy" in blocked.json()["error"]["message"]
    existing = _invite(sandbox, "existing.guest@fabrikam.example")  # the list does not apply to existing guests
    assert existing.status_code == 201 and existing.json()["invitedUserType"] == "Guest"
    sandbox.directory.change_settings(b2b_blocked_domains=[], b2b_allowed_domains=["partner.example"])
    assert _invite(sandbox, "new.person@fabrikam.example").status_code == 400
    assert _invite(sandbox, "new.person@partner.example").status_code == 201
    with pytest.raises(ValueError, match="not both"):
        sandbox.directory.change_settings(b2b_blocked_domains=["x.example"])


def test_the_settings_change_over_the_admin_endpoint(sandbox: TenantSandbox) -> None:
    settings = f"{sandbox.base_url}/_sandbox/settings"
    assert httpx.get(settings).json()["allow_invites_from"] == "everyone"
    changed = httpx.patch(settings, json={"allow_invites_from": "none", "allow_to_add_guests": False})
    assert changed.status_code == 200 and changed.json()["allow_invites_from"] == "none"
    assert _invite(sandbox, "new.person@fabrikam.example").status_code == 403
    assert httpx.patch(settings, json={"allow_invites_from": "sometimes"}).status_code == 422
    assert (
        httpx.patch(
            settings, json={"b2b_allowed_domains": ["a.example"], "b2b_blocked_domains": ["b.example"]}
        ).status_code
        == 422
    )


def test_an_existing_b2b_user_comes_back_with_its_own_user_type(sandbox: TenantSandbox) -> None:
    answer = _invite(sandbox, "robin@partner.example")
    assert answer.status_code == 201
    assert answer.json()["invitedUserType"] == "Member" and answer.json()["invitedUser"]["id"] == ROBIN.id


# --- Groups can refuse guests ---------------------------------------------------------------------------


def _add(sandbox: TenantSandbox, group_id: str, object_id: str) -> httpx.Response:
    return httpx.post(
        f"{sandbox.graph_base_url}/groups/{group_id}/members/$ref",
        json={"@odata.id": f"https://graph.microsoft.com/v1.0/directoryObjects/{object_id}"},
        headers=sandbox.authorization("graph"),
    )


@pytest.mark.parametrize("where", ["group", "tenant"])
def test_a_group_that_forbids_guests_refuses_them_with_its_own_text(sandbox: TenantSandbox, where: str) -> None:
    falcon = sandbox.directory.group_by_mail(FALCON)
    assert falcon is not None
    if where == "group":
        falcon.allow_to_add_guests = False
        sandbox.directory.update_group(falcon)
    else:  # the tenant forbids guests; a group that allows them does not override that
        falcon.allow_to_add_guests = True
        sandbox.directory.change_settings(allow_to_add_guests=False)
    guest = sandbox.directory.add_guest("new.guest@fabrikam.example", "New Guest")
    refused = _add(sandbox, falcon.id, guest.id)
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "Authorization_RequestDenied"
    assert error["message"].startswith("Guests users are not allowed to join this Unified Group due to policy setting.")
    assert guest.id not in falcon.members
    assert _add(sandbox, falcon.id, PAT.id).status_code == 204  # a member of the organisation is still added


# --- Entra and Exchange are not one database ------------------------------------------------------------


def test_exchange_learns_of_a_guest_and_its_membership_only_after_the_lag(sandbox: TenantSandbox) -> None:
    falcon = sandbox.directory.group_by_mail(FALCON)
    assert falcon is not None
    sandbox.set_knobs(exchange_lag_seconds=3600)  # Exchange far behind
    behind = _invite(sandbox, "behind@fabrikam.example").json()["invitedUser"]["id"]
    assert _add(sandbox, falcon.id, behind).status_code == 204
    sandbox.set_knobs(exchange_lag_seconds=0)  # Exchange up to date
    current = _invite(sandbox, "current@fabrikam.example").json()["invitedUser"]["id"]
    assert _add(sandbox, falcon.id, current).status_code == 204

    assert _invoke(sandbox, "Get-Recipient", Identity="behind@fabrikam.example").status_code == 404
    assert _invoke(sandbox, "Get-Recipient", Identity="current@fabrikam.example").status_code == 200
    for link_type in ("Members", "Subscribers"):
        rows = _invoke(sandbox, "Get-UnifiedGroupLinks", Identity=FALCON, LinkType=link_type).json()["value"]
        seen = {row["ExternalDirectoryObjectId"] for row in rows}
        assert current in seen and behind not in seen, link_type
    assert Knobs().exchange_lag_seconds > 0  # every caller meets the lag unless a test turns it off


# --- Exchange is not Entra ------------------------------------------------------------------------------


def test_exchange_guids_are_exchanges_own(sandbox: TenantSandbox) -> None:
    for identity in ("adele.vance@contoso.com", FALCON):
        row = _invoke(sandbox, "Get-Recipient", Identity=identity).json()["value"][0]
        assert row["Guid"] != row["ExternalDirectoryObjectId"]
        assert _invoke(sandbox, "Get-Recipient", Identity=row["Guid"]).status_code == 200
        # Exchange's -Identity takes its own Guid, not the Entra object id.
        assert _invoke(sandbox, "Get-Recipient", Identity=row["ExternalDirectoryObjectId"]).status_code == 404


def test_a_new_mail_contact_has_no_entra_id_until_entra_has_it(sandbox: TenantSandbox) -> None:
    sandbox.set_knobs(replication_lag_seconds=3600)
    early = _invoke(sandbox, "New-MailContact", Name="Early", ExternalEmailAddress="early@fabrikam.example")
    assert early.json()["value"][0]["ExternalDirectoryObjectId"] == ""
    again = _invoke(sandbox, "Get-MailContact", Identity="early@fabrikam.example").json()["value"][0]
    assert again["ExternalDirectoryObjectId"] == ""
    sandbox.set_knobs(replication_lag_seconds=0)
    late = _invoke(sandbox, "New-MailContact", Name="Late", ExternalEmailAddress="late@fabrikam.example")
    assert late.json()["value"][0]["ExternalDirectoryObjectId"]


# --- One address, two recipients -----------------------------------------------------------------------


def _user(sandbox: TenantSandbox, user_id: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{sandbox.graph_base_url}/users/{user_id}",
        params={"$select": "id,mail,otherMails,proxyAddresses,userType"},
        headers=sandbox.authorization("graph"),
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_guest_invited_for_a_contacts_address_gets_no_proxy_address(sandbox: TenantSandbox) -> None:
    """The invitation succeeds, but Entra leaves the guest's proxyAddresses empty: Exchange has no SMTP
    address for the guest's mail user, and the address still resolves to the contact."""
    sandbox.set_knobs(exchange_lag_seconds=0)
    made = _invoke(sandbox, "New-MailContact", Name="Twin", ExternalEmailAddress="twin@fabrikam.example")
    assert made.status_code == 200
    answer = _invite(sandbox, "twin@fabrikam.example")
    assert answer.status_code == 201 and answer.json()["invitedUserType"] == "Guest"
    guest = _user(sandbox, answer.json()["invitedUser"]["id"])
    assert guest["proxyAddresses"] == [] and guest["otherMails"] == ["twin@fabrikam.example"]
    by_address = _invoke(sandbox, "Get-Recipient", Identity="twin@fabrikam.example").json()["value"]
    assert [row["RecipientType"] for row in by_address] == ["MailContact"]
    mail_user = _invoke(sandbox, "Get-Recipient", Identity=sandbox.directory.users[guest["id"]].exchange_guid)
    assert mail_user.json()["value"][0]["PrimarySmtpAddress"] == ""
    untouched = _user(sandbox, _invite(sandbox, "single@fabrikam.example").json()["invitedUser"]["id"])
    assert untouched["proxyAddresses"] == ["SMTP:single@fabrikam.example"]


def test_a_contact_for_a_guests_address_is_refused_once_exchange_knows_the_guest(sandbox: TenantSandbox) -> None:
    sandbox.set_knobs(exchange_lag_seconds=0)
    known = _invite(sandbox, "known@fabrikam.example").json()["invitedUser"]["id"]
    refused = _invoke(sandbox, "New-MailContact", Name="Known", ExternalEmailAddress="known@fabrikam.example")
    assert refused.status_code == 400
    assert "ProxyAddressExistsException" in refused.json()["error"]["details"][0]["message"]
    assert _user(sandbox, known)["proxyAddresses"] == ["SMTP:known@fabrikam.example"]


def test_a_contact_made_before_exchange_knows_the_guest_takes_the_address_from_it(sandbox: TenantSandbox) -> None:
    """Exchange checks only the recipients it has: within the Entra-to-Exchange lag New-MailContact succeeds,
    and Entra then removes the conflicting proxy address from the guest, as for a synchronised contact."""
    sandbox.set_knobs(exchange_lag_seconds=3600)
    guest = _invite(sandbox, "early@fabrikam.example").json()["invitedUser"]["id"]
    made = _invoke(sandbox, "New-MailContact", Name="Early", ExternalEmailAddress="early@fabrikam.example")
    assert made.status_code == 200
    assert _user(sandbox, guest)["proxyAddresses"] == []


# --- Slow cmdlets, Rate-Limit headers, dates ------------------------------------------------------------


@pytest.mark.parametrize(("latency_ms", "acted"), [(400, True), (900, False)])
def test_exchange_ends_a_slow_cmdlet_on_its_side(sandbox: TenantSandbox, latency_ms: int, acted: bool) -> None:
    """Past the limit the answer is a 504; the cmdlet may have acted (half the latency is before it acts)."""
    sandbox.set_knobs(latency_ms=latency_ms, exchange_cmdlet_timeout_seconds=0.3)
    ended = _invoke(sandbox, "New-MailContact", Name="Slow", ExternalEmailAddress="slow@fabrikam.example")
    assert ended.status_code == 504 and ended.json()["error"]["code"] == "GatewayTimeout"
    assert (sandbox.directory.contact_by_identity("slow@fabrikam.example") is not None) is acted
    sandbox.set_knobs(latency_ms=0)
    assert _invoke(sandbox, "Get-AcceptedDomain").status_code == 200


def test_exchange_answers_say_what_is_left_of_the_budget(sandbox: TenantSandbox) -> None:
    sandbox.set_knobs(throttle={"exchange": {"requests_per_second": 0.01, "burst": 2}})
    answers = [_invoke(sandbox, "Get-AcceptedDomain") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers["Rate-Limit-Remaining"] for a in answers] == ["1", "0", "0"]
    assert {a.headers["Rate-Limit-Limit"] for a in answers} == {"2"}
    reset = datetime.fromisoformat(answers[-1].headers["Rate-Limit-Reset"].replace("Z", "+00:00"))
    assert reset > datetime.now(UTC)
    assert (
        "Rate-Limit-Remaining"
        not in httpx.get(f"{sandbox.graph_base_url}/users", headers=sandbox.authorization("graph")).headers
    )


@pytest.mark.parametrize(
    ("form", "accepted"),
    [
        ("%Y-%m-%dT%H:%M:%S", True),  # CIPP: (Get-Date).ToUniversalTime().ToString('s')
        ("%Y-%m-%dT%H:%M:%SZ", True),
        ("%Y-%m-%dT%H:%M:%S.%f+00:00", False),  # Python's isoformat(): how Exchange reads an offset is unconfirmed
        ("%Y-%m-%dT%H:%M:%S+01:00", False),
    ],
)
def test_message_trace_takes_dates_in_the_form_the_mature_callers_send(
    sandbox: TenantSandbox, form: str, accepted: bool
) -> None:
    now = datetime.now(UTC)
    answer = _invoke(
        sandbox,
        "Get-MessageTraceV2",
        SenderAddress="welcome@contoso.com",
        StartDate=(now - timedelta(hours=1)).strftime(form),
        EndDate=now.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    assert (answer.status_code == 200) is accepted, answer.text
    if not accepted:
        assert answer.headers["X-ExceptionType"].endswith("ParameterBindingException")
