"""MsGraphDirectory against the sandbox: refusals Graph answers with the codes of other failures (issue 24).

A tenant's or a group's policy and an internal user's address each become their own error class, never a
missing right (docs/microsoft-365-facts.md, section 8).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from shared.directory.errors import (
    AddressHeldInternallyError,
    GuestsNotAllowedError,
    InvitationRefusedError,
    PermissionDeniedError,
)
from shared.directory.graph import MsGraphDirectory
from shared.directory.rights import GROUP_MEMBER_WRITE, USER_INVITE
from standins.local_app import LOCAL_PLAN, app_credential, grant_local_app, without
from standins.tenant_sandbox import TenantSandbox, TenantSeed
from standins.tenant_sandbox.model import SeedUser
from tests.fixtures.day_one import PAT, SAM

pytestmark = pytest.mark.stack
REDIRECT = "https://myapplications.microsoft.com"
FALCON_ID = "7c1d2e3f-0003-4b5c-8d9e-0f1a2b3c4d03"
ROBIN = SeedUser(
    id="0b6a9c1e-6666-4a4e-9b1a-5f7c2d3e4a06", display_name="Robin", mail="robin@partner.example", external=True
)


@pytest.fixture
def sandbox() -> Iterator[TenantSandbox]:
    seed = TenantSeed.demo()
    with TenantSandbox(seed.model_copy(update={"users": (*seed.users, PAT, SAM, ROBIN)})) as running:
        yield running


@pytest.fixture
async def graph(sandbox: TenantSandbox) -> AsyncIterator[MsGraphDirectory]:
    grant_local_app(sandbox)
    client = MsGraphDirectory(app_credential(sandbox), base_url=sandbox.graph_base_url)
    yield client
    await client.close()


@pytest.fixture
async def graph_without(sandbox: TenantSandbox, request: pytest.FixtureRequest) -> AsyncIterator[MsGraphDirectory]:
    """The app's client holding every right of the grant but the one the test is parametrized with."""
    grant_local_app(sandbox, without(LOCAL_PLAN, request.param))
    client = MsGraphDirectory(app_credential(sandbox), base_url=sandbox.graph_base_url)
    yield client
    await client.close()


async def test_a_user_is_found_as_entra_matches_an_invitation(graph: MsGraphDirectory) -> None:
    for address, holder in (("Pat.Private@fabrikam.example", PAT), ("sam@fabrikam.example", SAM)):
        found = await graph.find_user_for_invitation(address)
        assert found is not None and (found.id, found.user_type) == (holder.id, "Member")
        assert await graph.find_user_by_mail(address) is None  # Exchange's view: mail and proxy addresses only
    guest = await graph.find_user_for_invitation("existing.guest@fabrikam.example")
    assert guest is not None and guest.user_type == "Guest"
    assert await graph.find_user_for_invitation("o'neil@fabrikam.example") is None


async def test_an_internal_users_address_is_refused_as_held_internally(graph: MsGraphDirectory) -> None:
    with pytest.raises(AddressHeldInternallyError) as raised:
        await graph.invite_guest("pat.private@fabrikam.example", "Pat", REDIRECT)
    assert PAT.id in raised.value.message


@pytest.mark.parametrize(
    ("settings", "address", "text"),
    [
        ({"allow_invites_from": "adminsAndGuestInviters"}, "new.person@fabrikam.example", "Guest invitations"),
        ({"allow_invites_from": "none"}, "new.person@fabrikam.example", "Guest invitations"),
        ({"b2b_blocked_domains": ["rival.example"]}, "sam@rival.example", "invitation policy"),
        ({"b2b_allowed_domains": ["partner.example"]}, "new.person@fabrikam.example", "invitation policy"),
    ],
)
async def test_the_tenants_settings_refuse_an_invitation_not_the_apps_rights(
    sandbox: TenantSandbox, graph: MsGraphDirectory, settings: dict[str, object], address: str, text: str
) -> None:
    sandbox.directory.change_settings(**settings)
    with pytest.raises(InvitationRefusedError) as raised:
        await graph.invite_guest(address, "Someone", REDIRECT)
    assert text in raised.value.message and not isinstance(raised.value, PermissionDeniedError)


@pytest.mark.parametrize("graph_without", [USER_INVITE], indirect=True)
async def test_a_missing_invite_right_is_still_a_missing_right(graph_without: MsGraphDirectory) -> None:
    with pytest.raises(PermissionDeniedError) as raised:
        await graph_without.invite_guest("new.person@fabrikam.example", "New Person", REDIRECT)
    assert raised.value.needed == USER_INVITE


async def test_an_existing_b2b_member_comes_back_as_a_member(graph: MsGraphDirectory) -> None:
    """invitedUserType is read: a user the invitation returns is a guest only if Graph says so."""
    returned = await graph.invite_guest("robin@partner.example", "Robin", REDIRECT)
    assert (returned.id, returned.user_type) == (ROBIN.id, "Member")
    new = await graph.invite_guest("new.person@fabrikam.example", "New Person", REDIRECT)
    assert new.user_type == "Guest"


async def test_a_group_refusing_guests_is_not_a_missing_right(sandbox: TenantSandbox, graph: MsGraphDirectory) -> None:
    sandbox.directory.change_settings(allow_to_add_guests=False)
    guest = await graph.invite_guest("new.person@fabrikam.example", "New Person", REDIRECT)
    with pytest.raises(GuestsNotAllowedError) as raised:
        await graph.add_group_member(FALCON_ID, guest.id)
    assert raised.value.status == 403 and raised.value.code == "Authorization_RequestDenied"


@pytest.mark.parametrize("graph_without", [GROUP_MEMBER_WRITE], indirect=True)
async def test_a_missing_member_write_right_is_still_a_missing_right(
    sandbox: TenantSandbox, graph_without: MsGraphDirectory
) -> None:
    sandbox.directory.change_settings(allow_to_add_guests=False)  # both would refuse: the right is asked first
    guest = sandbox.directory.add_guest("new.person@fabrikam.example", "New Person")
    with pytest.raises(PermissionDeniedError) as refused:
        await graph_without.add_group_member(FALCON_ID, guest.id)
    assert refused.value.needed == GROUP_MEMBER_WRITE
