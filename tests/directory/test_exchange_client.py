"""ExchangeOnlineClient against the tenant sandbox's InvokeCommand endpoint, over HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from shared.directory.errors import (
    AddressInUseError,
    AlreadyExistsError,
    DirectoryError,
    NameInUseError,
    NotFoundError,
    PermissionDeniedError,
    ThrottledError,
)
from shared.directory.exchange import ANCHOR_MAILBOX, ExchangeOnlineClient
from shared.directory.throttle import ThrottleGate
from standins.local_app import app_credential, grant_local_app
from standins.tenant_sandbox import TenantSandbox, TenantSeed
from standins.tenant_sandbox.credential import FullRightsCredential

HOSTILE = 'Robert\'); DROP TABLE--; "$(Remove-Mailbox -Identity *)" `whoami`'


async def test_accepted_domains(exchange_directory: ExchangeOnlineClient) -> None:
    assert await exchange_directory.get_accepted_domains() == frozenset({"contoso.com", "contoso.onmicrosoft.com"})


async def test_new_mail_contact_then_find_by_each_identity(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    contact = await exchange_directory.new_mail_contact(
        name="Jane Doe (Fabrikam)",
        external_email_address="jane.doe@fabrikam.example",
        display_name="Jane Doe",
        first_name="Jane",
        last_name="Doe",
    )
    assert contact.external_email_address == "jane.doe@fabrikam.example"
    assert contact.name == "Jane Doe (Fabrikam)" and contact.external_directory_object_id
    stored = tenant_sandbox.directory.contact_by_identity(contact.identity)
    assert stored is not None and (stored.first_name, stored.last_name) == ("Jane", "Doe")
    for address in ("jane.doe@fabrikam.example", "JANE.DOE@fabrikam.example"):
        assert await exchange_directory.find_mail_contact(address) == contact
    assert await exchange_directory.find_mail_contact("nobody@fabrikam.example") is None


async def test_a_contact_named_like_the_address_but_holding_another_is_not_the_persons(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    """Get-MailContact -Identity also matches a contact's Name: its answer is compared with the address."""
    tenant_sandbox.directory.add_contact(
        "jane.doe@fabrikam.example", "Not Jane", "someone.else@tailspin.example", None, None
    )
    assert await exchange_directory.find_mail_contact("jane.doe@fabrikam.example") is None
    janes = await exchange_directory.new_mail_contact(
        name="Jane Doe", external_email_address="jane.doe@fabrikam.example", display_name="Jane Doe"
    )
    assert await exchange_directory.find_mail_contact("Jane.Doe@fabrikam.example") == janes


async def test_hostile_display_name_is_stored_literally(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    contact = await exchange_directory.new_mail_contact(
        name="hostile", external_email_address="x@fabrikam.example", display_name=HOSTILE, last_name="$(Get-Date);"
    )
    stored = tenant_sandbox.directory.contact_by_identity(contact.identity)
    assert stored is not None and stored.display_name == HOSTILE and stored.last_name == "$(Get-Date);"
    assert len(tenant_sandbox.directory.contacts) == 1


async def test_name_clash(exchange_directory: ExchangeOnlineClient) -> None:
    await exchange_directory.new_mail_contact(
        name="Jane", external_email_address="a@fabrikam.example", display_name="J"
    )
    with pytest.raises(NameInUseError) as raised:
        await exchange_directory.new_mail_contact(
            name="jane", external_email_address="b@fabrikam.example", display_name="J"
        )
    assert raised.value.code == "ADObjectAlreadyExistsException" and raised.value.status == 400
    assert raised.value.request_id


async def test_address_clash(exchange_directory: ExchangeOnlineClient) -> None:
    await exchange_directory.new_mail_contact(name="A", external_email_address="a@fabrikam.example", display_name="A")
    with pytest.raises(AddressInUseError) as raised:
        await exchange_directory.new_mail_contact(
            name="B", external_email_address="A@fabrikam.example", display_name="B"
        )
    assert "is already being used by the proxy addresses" in raised.value.message
    assert isinstance(raised.value, AlreadyExistsError) and not isinstance(raised.value, NameInUseError)


@pytest.mark.parametrize("group", ["partners@contoso.com", "Suppliers (secure)"])
async def test_add_contact_to_group_then_list_and_already_member(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient, group: str
) -> None:
    contact = await exchange_directory.new_mail_contact(
        name="Jane", external_email_address="jane@fabrikam.example", display_name="Jane"
    )
    await exchange_directory.add_distribution_group_member(group, contact.identity)
    members = await exchange_directory.list_distribution_group_members(group)
    assert [(m.identity, m.email_address) for m in members] == [(contact.identity, "jane@fabrikam.example")]
    assert members[0].external_directory_object_id == contact.external_directory_object_id
    with pytest.raises(AlreadyExistsError) as raised:
        await exchange_directory.add_distribution_group_member(group, "jane@fabrikam.example")
    assert raised.value.code == "MemberAlreadyExistsException"
    stored = tenant_sandbox.directory.group_by_identity(group)
    assert stored is not None and stored.members == [contact.external_directory_object_id]


async def test_a_new_contact_is_not_found_by_add_member_until_replicated(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    tenant_sandbox.set_knobs(replication_lag_seconds=0.5)
    contact = await exchange_directory.new_mail_contact(
        name="Lag", external_email_address="lag@fabrikam.example", display_name="Lag"
    )
    assert await exchange_directory.find_mail_contact("lag@fabrikam.example") == contact  # Exchange sees it at once
    with pytest.raises(NotFoundError):
        await exchange_directory.add_distribution_group_member("partners@contoso.com", contact.identity)
    await asyncio.sleep(0.6)
    await exchange_directory.add_distribution_group_member("partners@contoso.com", contact.identity)


async def test_unknown_group_or_member_is_not_found(exchange_directory: ExchangeOnlineClient) -> None:
    with pytest.raises(NotFoundError) as raised:
        await exchange_directory.add_distribution_group_member("partners@contoso.com", "ghost@fabrikam.example")
    assert raised.value.code == "ManagementObjectNotFoundException"
    with pytest.raises(NotFoundError):
        await exchange_directory.add_distribution_group_member("ghost-group@contoso.com", "adele.vance@contoso.com")
    with pytest.raises(NotFoundError):
        await exchange_directory.list_distribution_group_members("ghost-group@contoso.com")
    with pytest.raises(NotFoundError):
        await exchange_directory.get_sender_restrictions("ghost-group@contoso.com", unified=False)


async def test_sender_restrictions_read_and_fix(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    partners = await exchange_directory.get_sender_restrictions("partners@contoso.com", unified=False)
    assert partners.require_sender_authentication is True and partners.moderation_enabled is False
    assert partners.accept_messages_only_from == () and partners.reject_messages_from == ()
    secure = await exchange_directory.get_sender_restrictions("suppliers-secure@contoso.com", unified=False)
    assert secure.require_sender_authentication is False
    await exchange_directory.set_require_sender_authentication("partners@contoso.com", False, unified=False)
    group = tenant_sandbox.directory.group_by_identity("Partners")
    assert group is not None and group.require_sender_authentication is False
    assert not (
        await exchange_directory.get_sender_restrictions("Partners", unified=False)
    ).require_sender_authentication


async def test_unified_group_sender_restrictions(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    falcon = await exchange_directory.get_sender_restrictions("project-falcon@contoso.com", unified=True)
    assert falcon.require_sender_authentication is True
    await exchange_directory.set_require_sender_authentication("project-falcon@contoso.com", False, unified=True)
    group = tenant_sandbox.directory.group_by_identity("project-falcon@contoso.com")
    assert group is not None and group.require_sender_authentication is False
    # A Microsoft 365 group is not a distribution group to Exchange, and vice versa.
    with pytest.raises(NotFoundError):
        await exchange_directory.get_sender_restrictions("project-falcon@contoso.com", unified=False)
    with pytest.raises(NotFoundError):
        await exchange_directory.get_sender_restrictions("partners@contoso.com", unified=True)


@pytest.mark.stack
async def test_members_are_paged_with_next_link() -> None:
    with TenantSandbox(TenantSeed.demo(), page_size=2, exchange_page_size=2) as sandbox:
        grant_local_app(sandbox)
        client = ExchangeOnlineClient(
            app_credential(sandbox),
            tenant_id=sandbox.tenant_id,
            base_url=sandbox.exchange_base_url,
        )
        try:
            for i in range(5):
                contact = await client.new_mail_contact(
                    name=f"c{i}", external_email_address=f"c{i}@fabrikam.example", display_name=f"c{i}"
                )
                await client.add_distribution_group_member("Partners", contact.identity)
            members = await client.list_distribution_group_members("Partners")
        finally:
            await client.close()
        assert [m.email_address for m in members] == [f"c{i}@fabrikam.example" for i in range(5)]
        pages = [entry for entry in sandbox.request_log if entry[1] == "Get-DistributionGroupMember"]
        assert len(pages) == 3


async def test_headers_sent(tenant_sandbox: TenantSandbox) -> None:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    grant_local_app(tenant_sandbox)
    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        client = ExchangeOnlineClient(
            app_credential(tenant_sandbox),
            tenant_id=tenant_sandbox.tenant_id,
            base_url=tenant_sandbox.exchange_base_url,
            http_client=http,
        )
        await client.get_accepted_domains()
    (request,) = seen
    assert request.url.path == f"/adminapi/beta/{tenant_sandbox.tenant_id}/InvokeCommand"
    # The app-only anchor CIPP and ExoHelper moved to: the system mailbox at the tenant id.
    assert request.headers["X-AnchorMailbox"] == f"APP:{ANCHOR_MAILBOX}@{tenant_sandbox.tenant_id}"
    assert request.headers["Prefer"] == "odata.maxpagesize=1000"
    assert request.headers["client-request-id"]
    assert request.headers["Authorization"].startswith("Bearer ")


async def test_missing_token_is_401(tenant_sandbox: TenantSandbox) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{tenant_sandbox.exchange_base_url}/adminapi/beta/{tenant_sandbox.tenant_id}/InvokeCommand",
            json={"CmdletInput": {"CmdletName": "Get-AcceptedDomain", "Parameters": {}}},
        )
    assert response.status_code == 401


class _BadCredential(FullRightsCredential):
    async def get_token(self, *scopes: str, **kwargs: object):  # type: ignore[no-untyped-def]
        token = await super().get_token(*scopes)
        return type(token)("garbage", token.expires_on)


async def test_refused_token_is_permission_denied(tenant_sandbox: TenantSandbox) -> None:
    client = ExchangeOnlineClient(
        _BadCredential(tenant_sandbox.tenant_id),
        tenant_id=tenant_sandbox.tenant_id,
        base_url=tenant_sandbox.exchange_base_url,
    )
    try:
        with pytest.raises(PermissionDeniedError) as raised:
            await client.get_accepted_domains()
    finally:
        await client.close()
    assert raised.value.status == 401


async def test_throttled(tenant_sandbox: TenantSandbox) -> None:
    """A long Retry-After goes back to the stage (a scheduled retry) and shuts the process's gate for
    every other call; a short one is waited out in-process once, as the Graph client does."""
    gate = ThrottleGate()
    grant_local_app(tenant_sandbox)
    exchange = ExchangeOnlineClient(
        app_credential(tenant_sandbox),
        tenant_id=tenant_sandbox.tenant_id,
        base_url=tenant_sandbox.exchange_base_url,
        gate=gate,
    )
    try:
        tenant_sandbox.inject("exchange", 429, retry_after=17)
        with pytest.raises(ThrottledError) as raised:
            await exchange.get_accepted_domains()
        assert raised.value.retry_after == 17
        assert 15 < gate.closed_for() <= 17  # the next call from this process waits it out

        short = ExchangeOnlineClient(
            app_credential(tenant_sandbox),
            tenant_id=tenant_sandbox.tenant_id,
            base_url=tenant_sandbox.exchange_base_url,
        )
        try:
            tenant_sandbox.inject("exchange", 429, retry_after=1)
            assert await short.get_accepted_domains()  # waited 1 s, tried again, done
            tenant_sandbox.inject("exchange", 429, count=2, retry_after=1)
            with pytest.raises(ThrottledError):
                await short.get_accepted_domains()  # one in-process retry only
        finally:
            await short.close()
    finally:
        await exchange.close()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"not json"),
        (200, b'{"values": []}'),
        (200, b'{"value": {}}'),
        (200, b'{"value": [1]}'),
        (400, b"[1]"),
        (400, b'{"error": "x"}'),
    ],
)
async def test_malformed_answers_are_directory_errors(status: int, body: bytes) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    async with httpx.AsyncClient(transport=transport) as http:
        client = ExchangeOnlineClient(FullRightsCredential("t"), tenant_id="t", http_client=http)
        with pytest.raises(DirectoryError):
            await client.get_accepted_domains()


async def test_next_link_to_another_host_is_refused() -> None:
    hosts: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(200, json={"value": [], "@odata.nextLink": "https://evil.example/steal"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        client = ExchangeOnlineClient(FullRightsCredential("t"), tenant_id="t", http_client=http)
        with pytest.raises(DirectoryError, match="another host"):
            await client.get_accepted_domains()
    assert hosts == ["outlook.office365.com"]
