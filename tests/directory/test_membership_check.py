"""One-call membership checks (checkMemberGroups) through msgraph-sdk against the sandbox, in a large group."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from shared.directory.errors import NotFoundError, PermissionDeniedError
from shared.directory.exchange import ExchangeOnlineClient
from shared.directory.graph import MsGraphDirectory
from standins.local_app import app_credential, grant_local_app
from standins.tenant_sandbox import TenantSandbox, TenantSeed

pytestmark = pytest.mark.stack
PARTNERS = "partners@contoso.com"
STAFF = 50_000


@pytest.fixture(scope="module")
def large_tenant() -> Iterator[TenantSandbox]:
    with TenantSandbox(TenantSeed.demo().with_staff_in(PARTNERS, STAFF)) as sandbox:
        yield sandbox


@pytest.fixture
async def clients(large_tenant: TenantSandbox) -> AsyncIterator[tuple[MsGraphDirectory, ExchangeOnlineClient]]:
    grant_local_app(large_tenant)
    credential = app_credential(large_tenant)
    graph = MsGraphDirectory(credential, base_url=large_tenant.graph_base_url)
    exchange = ExchangeOnlineClient(
        credential,
        tenant_id=large_tenant.tenant_id,
        base_url=large_tenant.exchange_base_url,
    )
    yield graph, exchange
    await graph.close()
    await exchange.close()


def _partners_id(sandbox: TenantSandbox) -> str:
    group = sandbox.directory.group_by_mail(PARTNERS)
    assert group is not None and len(group.members) >= STAFF
    return group.id


async def test_a_contact_in_a_50000_member_group_is_checked_with_one_call(
    large_tenant: TenantSandbox, clients: tuple[MsGraphDirectory, ExchangeOnlineClient]
) -> None:
    graph, exchange = clients
    group_id = _partners_id(large_tenant)
    contact = await exchange.new_mail_contact(
        name="Big Group Person", external_email_address="big.group@fabrikam.example", display_name="Big Group Person"
    )
    assert contact.external_directory_object_id is not None
    assert not await graph.is_contact_member(group_id, contact.external_directory_object_id)
    await exchange.add_distribution_group_member(PARTNERS, contact.identity)
    large_tenant.request_log.clear()
    assert await graph.is_contact_member(group_id, contact.external_directory_object_id)
    assert [entry.operation for entry in large_tenant.request_log] == ["GET /v1.0/contacts/{id}/memberOf"]


async def test_check_member_groups_on_a_contact_needs_a_right_the_app_is_not_given(
    large_tenant: TenantSandbox, clients: tuple[MsGraphDirectory, ExchangeOnlineClient]
) -> None:
    """Why contacts are asked the other way round: checkMemberGroups on an org contact needs Directory.Read.All."""
    graph, exchange = clients
    contact = await exchange.new_mail_contact(
        name="Asked Wrongly", external_email_address="asked.wrongly@fabrikam.example", display_name="Asked Wrongly"
    )
    assert contact.external_directory_object_id is not None
    with pytest.raises(PermissionDeniedError):
        await graph.is_group_member(_partners_id(large_tenant), contact.external_directory_object_id)


async def test_a_staff_member_and_a_stranger(
    large_tenant: TenantSandbox, clients: tuple[MsGraphDirectory, ExchangeOnlineClient]
) -> None:
    graph, _ = clients
    group_id = _partners_id(large_tenant)
    # A user: other tests of this module add contacts to the same group, in any order.
    staff_id = next(
        m for m in reversed(large_tenant.directory.groups[group_id].members) if m in large_tenant.directory.users
    )
    assert await graph.is_group_member(group_id, staff_id)
    with pytest.raises(NotFoundError):
        await graph.is_group_member(group_id, "00000000-0000-0000-0000-00000000dead")


async def test_a_contact_not_replicated_yet_is_not_found(
    large_tenant: TenantSandbox, clients: tuple[MsGraphDirectory, ExchangeOnlineClient]
) -> None:
    graph, exchange = clients
    large_tenant.set_knobs(replication_lag_seconds=60)
    try:
        contact = await exchange.new_mail_contact(
            name="Lagging Person", external_email_address="lagging@fabrikam.example", display_name="Lagging Person"
        )
        assert contact.external_directory_object_id is None  # Exchange does not know it before Entra has it
        stored = large_tenant.directory.contact_by_identity(contact.identity)
        assert stored is not None  # the id Entra will give it: Graph does not find it yet
        with pytest.raises(NotFoundError):
            await graph.is_contact_member(_partners_id(large_tenant), stored.external_directory_object_id)
    finally:
        large_tenant.set_knobs(replication_lag_seconds=0)
