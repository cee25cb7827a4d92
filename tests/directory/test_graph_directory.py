"""MsGraphDirectory against the tenant sandbox, through the real msgraph-sdk over HTTP."""

from __future__ import annotations

import httpx
import pytest

from shared.contracts import GroupKind
from shared.directory.errors import (
    AlreadyExistsError,
    InvitationRefusedError,
    NotFoundError,
    PermissionDeniedError,
    RejectedRequestError,
    ThrottledError,
)
from shared.directory.graph import MsGraphDirectory
from standins.local_app import app_credential, grant_local_app
from standins.tenant_sandbox import TenantSandbox, TenantSeed
from standins.tenant_sandbox.credential import FullRightsCredential

REDIRECT = "https://myapps.microsoft.com"
JSON_ANSWER = {"content-type": "application/json"}


def _group_id(sandbox: TenantSandbox, mail_or_name: str) -> str:
    group = sandbox.directory.group_by_identity(mail_or_name)
    assert group is not None
    return group.id


async def test_find_group_by_mail_derives_each_kind(graph_directory: MsGraphDirectory) -> None:
    partners = await graph_directory.find_group_by_mail("Partners@Contoso.com")
    secure = await graph_directory.find_group_by_mail("suppliers-secure@contoso.com")
    falcon = await graph_directory.find_group_by_mail("project-falcon@contoso.com")
    all_staff = await graph_directory.find_group_by_mail("all-staff@contoso.com")
    assert partners and partners.kind is GroupKind.DISTRIBUTION and partners.display_name == "Partners"
    assert secure and secure.kind is GroupKind.MAIL_ENABLED_SECURITY
    assert falcon and falcon.kind is GroupKind.MICROSOFT_365 and not falcon.is_dynamic
    assert all_staff and all_staff.kind is GroupKind.MICROSOFT_365 and all_staff.is_dynamic
    assert await graph_directory.find_group_by_mail("nobody@contoso.com") is None
    # A secondary SMTP address finds the group too; the group's mail stays its primary address.
    by_alias = await graph_directory.find_group_by_mail("Partner-Desk@contoso.com")
    assert by_alias is not None and by_alias.id == partners.id and by_alias.mail == "partners@contoso.com"
    # A quote inside the address travels as a doubled OData quote and matches nothing.
    assert await graph_directory.find_group_by_mail("o'brien@contoso.com") is None


async def test_a_tenant_that_refuses_or_with_a_lambda_answers_graphs_400_to_the_address_lookups(
    tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory
) -> None:
    """Unconfirmed in Microsoft (docs/stand-in-differences.md): the knob plays the refusal `onboard doctor` detects."""
    tenant_sandbox.set_knobs(refuse_or_with_lambda=True)
    with pytest.raises(RejectedRequestError) as refused:
        await graph_directory.find_group_by_mail("partners@contoso.com")
    assert (refused.value.status, refused.value.code) == (400, "Request_UnsupportedQuery")
    with pytest.raises(RejectedRequestError):
        await graph_directory.find_user_by_mail("adele.vance@contoso.com")
    tenant_sandbox.set_knobs(refuse_or_with_lambda=False)
    assert await graph_directory.find_group_by_mail("partners@contoso.com") is not None


async def test_get_group_by_id_and_unknown(tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory) -> None:
    group = await graph_directory.get_group(_group_id(tenant_sandbox, "Finance Team"))
    assert group is not None and group.kind is GroupKind.SECURITY and group.mail is None
    assert await graph_directory.get_group("00000000-0000-0000-0000-000000000000") is None


async def test_find_user_by_mail(graph_directory: MsGraphDirectory) -> None:
    adele = await graph_directory.find_user_by_mail("ADELE.VANCE@contoso.com")
    guest = await graph_directory.find_user_by_mail("existing.guest@fabrikam.example")
    assert adele and adele.user_type == "Member" and adele.mail == "adele.vance@contoso.com"
    assert guest and guest.user_type == "Guest"
    assert await graph_directory.find_user_by_mail("missing@fabrikam.example") is None


async def test_invite_guest_then_add_to_microsoft_365_group(
    tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory
) -> None:
    guest = await graph_directory.invite_guest("new.person@fabrikam.example", "New Person", REDIRECT)
    assert guest.user_type == "Guest" and tenant_sandbox.directory.users[guest.id].user_type == "Guest"
    again = await graph_directory.invite_guest("new.person@fabrikam.example", "New Person", REDIRECT)
    assert again.id == guest.id
    falcon = _group_id(tenant_sandbox, "project-falcon@contoso.com")
    await graph_directory.add_group_member(falcon, guest.id)
    assert guest.id in tenant_sandbox.directory.groups[falcon].members
    assert guest.id in await graph_directory.list_group_member_ids(falcon)


async def test_an_invitation_names_its_sponsors_and_refuses_ones_the_tenant_does_not_have(
    tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory
) -> None:
    """invitedUserSponsors: up to five users or groups of the tenant (docs/microsoft-365-facts.md, Sponsors)."""
    adele = tenant_sandbox.directory.user_by_mail("adele.vance@contoso.com")
    assert adele is not None
    partners = _group_id(tenant_sandbox, "partners@contoso.com")
    guest = await graph_directory.invite_guest(
        "sponsored@fabrikam.example", "Sponsored", REDIRECT, (adele.id, partners)
    )
    assert tenant_sandbox.directory.users[guest.id].sponsors == [adele.id, partners]
    unknown = "00000000-0000-0000-0000-0000000000aa"
    with pytest.raises(InvitationRefusedError):
        await graph_directory.invite_guest("unsponsored@fabrikam.example", "Nobody's", REDIRECT, (unknown,))
    assert tenant_sandbox.directory.user_by_mail("unsponsored@fabrikam.example") is None


async def test_add_member_twice_is_already_exists(
    tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory
) -> None:
    existing = tenant_sandbox.directory.user_by_mail("existing.guest@fabrikam.example")
    assert existing is not None
    with pytest.raises(AlreadyExistsError) as raised:
        await graph_directory.add_group_member(_group_id(tenant_sandbox, "Project Falcon"), existing.id)
    assert raised.value.status == 400 and raised.value.code == "Request_BadRequest" and raised.value.request_id


async def test_add_unknown_object_is_not_found(
    tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory
) -> None:
    with pytest.raises(NotFoundError) as raised:
        await graph_directory.add_group_member(
            _group_id(tenant_sandbox, "Project Falcon"), "11111111-2222-3333-4444-555555555555"
        )
    assert raised.value.code == "Request_ResourceNotFound" and raised.value.request_id


@pytest.mark.parametrize("group", ["Partners", "Suppliers (secure)"])
async def test_graph_refuses_distribution_and_mail_enabled_security(
    tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory, group: str
) -> None:
    adele = tenant_sandbox.directory.user_by_mail("adele.vance@contoso.com")
    assert adele is not None
    with pytest.raises(RejectedRequestError) as raised:
        await graph_directory.add_group_member(_group_id(tenant_sandbox, group), adele.id)
    assert not isinstance(raised.value, AlreadyExistsError)
    assert "Cannot Update a mail-enabled security groups and or distribution list." in raised.value.message
    assert adele.id not in tenant_sandbox.directory.groups[_group_id(tenant_sandbox, group)].members


@pytest.mark.stack
async def test_list_members_follows_next_links() -> None:
    seed = TenantSeed.demo()
    with TenantSandbox(seed, page_size=1) as sandbox:
        grant_local_app(sandbox)
        graph = MsGraphDirectory(app_credential(sandbox), base_url=sandbox.graph_base_url)
        try:
            falcon = _group_id(sandbox, "Project Falcon")
            expected = frozenset(sandbox.directory.groups[falcon].members)
            assert len(expected) >= 2
            assert await graph.list_group_member_ids(falcon) == expected
        finally:
            await graph.close()
        pages = [entry for entry in sandbox.request_log if entry[1].endswith("/members")]
        assert len(pages) == len(expected)


@pytest.mark.stack
async def test_members_within_reads_each_users_account_enabled() -> None:
    with TenantSandbox(TenantSeed.demo()) as sandbox:
        grant_local_app(sandbox)
        falcon = sandbox.directory.groups[_group_id(sandbox, "Project Falcon")]
        blocked = next(sandbox.directory.users[m] for m in falcon.members if m in sandbox.directory.users)
        sandbox.directory.set_account_enabled(blocked, False)
        expected = {
            member.lower(): sandbox.directory.users[member].account_enabled
            if member in sandbox.directory.users
            else None
            for member in falcon.members
        }
        graph = MsGraphDirectory(app_credential(sandbox), base_url=sandbox.graph_base_url)
        try:
            every = await graph.group_members_within(falcon.id, max_pages=1)
        finally:
            await graph.close()
    assert (dict(every.account_enabled), every.complete) == (expected, True)
    assert expected[blocked.id.lower()] is False


GROUP_ID = "7c1d2e3f-0004-4b5c-8d9e-0f1a2b3c4d04"
NOT_A_LIST = [
    b"\x00\xff not json",
    b'{"value": "x"}',
    b'{"value": [{"id": 5}]}',
    b'{"value": [], "@odata.nextLink": 7}',
]
NOT_A_GROUP = [b"<html>", b"[]", b'{"id": 5}', b'{"groupTypes": "Unified"}']


@pytest.mark.parametrize(
    ("read", "answer", "refusal"),
    [("members", answer, "not a directory-object list") for answer in NOT_A_LIST]
    + [("group", answer, "not a directory object") for answer in NOT_A_GROUP],
)
async def test_an_answer_that_is_not_what_was_asked_is_rejected(read: str, answer: bytes, refusal: str) -> None:
    """Graph's answer is outside input: a 200 that is not the object or list asked for is refused, not read."""
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=answer, headers=JSON_ANSWER))
    tenant = "00000000-0000-0000-0000-0000000000aa"
    graph = MsGraphDirectory(FullRightsCredential(tenant), http_client=httpx.AsyncClient(transport=transport))
    try:
        reading = graph.group_members_within(GROUP_ID, max_pages=1) if read == "members" else graph.get_group(GROUP_ID)
        with pytest.raises(RejectedRequestError, match=refusal):
            await reading
    finally:
        await graph.close()


async def test_list_members_of_unknown_group_is_not_found(graph_directory: MsGraphDirectory) -> None:
    with pytest.raises(NotFoundError):
        await graph_directory.list_group_member_ids("00000000-0000-0000-0000-000000000000")


class _NoTokenCredential(FullRightsCredential):
    """Hands out a token the sandbox refuses (not JWT-shaped)."""

    async def get_token(self, *scopes: str, **kwargs: object):  # type: ignore[no-untyped-def]
        token = await super().get_token(*scopes)
        return type(token)("not-a-jwt", token.expires_on)


async def test_refused_token_is_permission_denied(tenant_sandbox: TenantSandbox) -> None:
    graph = MsGraphDirectory(_NoTokenCredential(tenant_sandbox.tenant_id), base_url=tenant_sandbox.graph_base_url)
    try:
        with pytest.raises(PermissionDeniedError) as raised:
            await graph.find_group_by_mail("partners@contoso.com")
    finally:
        await graph.close()
    assert raised.value.status == 401 and raised.value.code == "InvalidAuthenticationToken"


async def test_throttling_beyond_the_in_process_budget_is_returned(tenant_sandbox: TenantSandbox) -> None:
    grant_local_app(tenant_sandbox)
    tenant_sandbox.inject("graph", 429, retry_after=30)
    graph = MsGraphDirectory(app_credential(tenant_sandbox), base_url=tenant_sandbox.graph_base_url)
    try:
        with pytest.raises(ThrottledError) as raised:
            await graph.find_user_by_mail("adele.vance@contoso.com")
        assert raised.value.retry_after == 30
        # a short Retry-After is absorbed in-process by the SDK's retry handler
        tenant_sandbox.inject("graph", 429, retry_after=1)
        assert await graph.find_user_by_mail("adele.vance@contoso.com") is not None
    finally:
        await graph.close()
