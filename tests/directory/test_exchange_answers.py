"""Issue 11, Exchange side: the answers Exchange really gives, through the client and the sandbox over HTTP.

Each answer shape is sourced in docs/microsoft-365-facts.md ("Exchange error answers", "Group
managers", "Sender lists", "Microsoft 365 group subscribers", "Anchor mailbox").
"""

from __future__ import annotations

import httpx
import pytest

from shared.directory.errors import (
    AddressInUseError,
    AlreadyExistsError,
    PermissionDeniedError,
    RejectedRequestError,
    ThrottledError,
    TransientDirectoryError,
)
from shared.directory.exchange import ROLE_FOR_BYPASS, ExchangeOnlineClient
from shared.directory.rights import SECURITY_GROUP_MEMBERSHIP
from standins.local_app import APP_OBJECT_ID
from standins.tenant_sandbox import TenantSandbox

MEMBER_EXISTS = "Microsoft.Exchange.Management.Tasks.MemberAlreadyExistsException"
PARTNERS, SECURE, BOARD, FALCON = (
    "partners@contoso.com",
    "suppliers-secure@contoso.com",
    "board@contoso.com",
    "project-falcon@contoso.com",
)
GUEST = "existing.guest@fabrikam.example"


# --- 12. the anchor ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "status"),
    [
        (None, 400),
        ("SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@contoso.onmicrosoft.com", 400),
        ("APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@contoso.onmicrosoft.com", 200),
        ("UPN:adele.vance@contoso.com", 200),
    ],
)
def test_the_sandbox_routes_only_an_anchored_request(
    tenant_sandbox: TenantSandbox, anchor: str | None, status: int
) -> None:
    headers = {"Authorization": tenant_sandbox.authorization("exchange")["Authorization"]}
    if anchor is not None:
        headers["X-AnchorMailbox"] = anchor
    response = httpx.post(
        f"{tenant_sandbox.exchange_base_url}/adminapi/beta/{tenant_sandbox.tenant_id}/InvokeCommand",
        json={"CmdletInput": {"CmdletName": "Get-AcceptedDomain", "Parameters": {}}},
        headers=headers,
    )
    assert response.status_code == status, response.text


# --- 8. error answers as the mature clients read them ------------------------------------


@pytest.mark.parametrize("type_in", ["everywhere", "header", "details", "internal_exception"])
async def test_the_exception_type_is_read_wherever_exchange_puts_it(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient, type_in: str
) -> None:
    tenant_sandbox.inject("exchange", 400, exception_type=MEMBER_EXISTS, type_in=type_in)
    with pytest.raises(AlreadyExistsError) as raised:
        await exchange_directory.get_accepted_domains()
    assert raised.value.code == "MemberAlreadyExistsException"


async def test_an_undecodable_403_is_a_permission_error_without_its_bytes(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    tenant_sandbox.inject("exchange", 403, body="undecodable")
    with pytest.raises(PermissionDeniedError) as raised:
        await exchange_directory.get_accepted_domains()
    assert "\x00" not in str(raised.value) and raised.value.status == 403


@pytest.mark.parametrize("status", [400, 403, 500, 503])
async def test_the_concurrency_limit_is_throttling_whatever_its_status(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient, status: int
) -> None:
    tenant_sandbox.inject("exchange", status, body="concurrency_limit", retry_after=7)
    with pytest.raises(ThrottledError) as raised:
        await exchange_directory.get_accepted_domains()
    assert raised.value.retry_after == 7 and "concurrent requests" in raised.value.message


@pytest.mark.parametrize(
    ("status", "exception_type", "transient"),
    [
        (500, "Microsoft.Exchange.Data.DataValidationException", False),  # a cmdlet failure repeats
        (500, "Microsoft.Exchange.Data.Directory.DCOverloadedException", True),  # the module retries it
        (500, None, True),  # an outage names no cmdlet exception
        (502, "System.Net.WebException", True),
        (503, None, True),
        (504, None, True),
    ],
)
async def test_only_some_server_errors_are_worth_retrying(
    tenant_sandbox: TenantSandbox,
    exchange_directory: ExchangeOnlineClient,
    status: int,
    exception_type: str | None,
    transient: bool,
) -> None:
    tenant_sandbox.inject("exchange", status, exception_type=exception_type)
    with pytest.raises((TransientDirectoryError, RejectedRequestError)) as raised:
        await exchange_directory.get_accepted_domains()
    assert isinstance(raised.value, TransientDirectoryError) is transient


async def test_a_500_naming_a_known_exception_is_classified_by_it(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    # A New-MailContact on a taken address has been seen answered 409 or 500: the type decides.
    tenant_sandbox.inject(
        "exchange", 500, exception_type="Microsoft.Exchange.Management.Tasks.WLCDManagedMemberExistsException"
    )
    with pytest.raises(AddressInUseError):
        await exchange_directory.new_mail_contact(
            name="x", external_email_address="x@fabrikam.example", display_name="x"
        )


async def test_a_success_carrying_only_warnings_is_a_success_with_its_warnings(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    contact = await exchange_directory.new_mail_contact(
        name="Warned", external_email_address="warned@fabrikam.example", display_name="Warned"
    )
    warning = "The recipient was added, but the group's membership is hidden from the address book."
    tenant_sandbox.inject("exchange", 200, operation="Add-DistributionGroupMember", warnings=[warning])
    assert await exchange_directory.add_distribution_group_member(PARTNERS, contact.identity) == (warning,)
    group = tenant_sandbox.directory.group_by_identity(PARTNERS)
    assert group is not None and contact.external_directory_object_id in group.members


# --- 7. group managers and the bypass switch ----------------------------------------------


async def _contact(exchange: ExchangeOnlineClient, name: str) -> str:
    contact = await exchange.new_mail_contact(
        name=name, external_email_address=f"{name}@fabrikam.example", display_name=name
    )
    return contact.identity


async def test_a_security_group_needs_the_bypass_switch(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    contact = await _contact(exchange_directory, "sec")
    with pytest.raises(PermissionDeniedError, match="manager of the group"):
        await exchange_directory.invoke("Add-DistributionGroupMember", {"Identity": SECURE, "Member": contact})
    await exchange_directory.add_distribution_group_member(SECURE, contact, security_group=True)
    await exchange_directory.set_require_sender_authentication(SECURE, True, unified=False, security_group=True)
    assert all(entry.status == 200 for entry in tenant_sandbox.request_log.entries()[-2:])


async def test_without_the_role_the_bypass_is_refused_with_the_fix(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    contact = await _contact(exchange_directory, "norole")
    tenant_sandbox.grants.revoke_exchange_role(APP_OBJECT_ID, SECURITY_GROUP_MEMBERSHIP)
    with pytest.raises(PermissionDeniedError) as raised:
        await exchange_directory.add_distribution_group_member(SECURE, contact, security_group=True)
    assert raised.value.code == "ParameterBindingException" and ROLE_FOR_BYPASS in raised.value.message
    with pytest.raises(PermissionDeniedError, match=ROLE_FOR_BYPASS):
        await exchange_directory.set_require_sender_authentication(SECURE, True, unified=False, security_group=True)
    # An open distribution group needs no switch, so an app without the role still adds there.
    await exchange_directory.add_distribution_group_member(PARTNERS, contact)


async def test_a_distribution_group_restricted_to_its_managers_gets_the_switch_after_the_refusal(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    contact = await _contact(exchange_directory, "restricted-1")
    tenant_sandbox.request_log.clear()
    await exchange_directory.add_distribution_group_member(BOARD, contact)
    adds = [e.status for e in tenant_sandbox.request_log.entries() if e.operation == "Add-DistributionGroupMember"]
    assert adds == [400, 200]
    tenant_sandbox.grants.revoke_exchange_role(APP_OBJECT_ID, SECURITY_GROUP_MEMBERSHIP)
    other = await _contact(exchange_directory, "restricted-2")
    with pytest.raises(PermissionDeniedError, match=ROLE_FOR_BYPASS) as raised:
        await exchange_directory.add_distribution_group_member(BOARD, other)
    # `onboard grant` prints the role-group steps only for this group kind, whatever group was refused.
    assert "onboard grant --group-kinds mail-enabled-security" in raised.value.message


# --- 11. sender lists as Exchange returns them --------------------------------------------


async def test_sender_lists_come_back_as_object_guids(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    contact = await exchange_directory.new_mail_contact(
        name="Listed", external_email_address="listed@fabrikam.example", display_name="Listed"
    )
    group = tenant_sandbox.directory.group_by_identity(PARTNERS)
    assert group is not None
    group.accept_messages_only_from = ["listed@fabrikam.example"]
    group.reject_messages_from = [GUEST]
    restrictions = await exchange_directory.get_sender_restrictions(PARTNERS, unified=False)
    guest = tenant_sandbox.directory.user_by_mail(GUEST)
    assert guest is not None
    assert restrictions.accept_messages_only_from == (contact.external_directory_object_id,)
    assert restrictions.reject_messages_from == (guest.id,)


# --- 9. Microsoft 365 group subscribers -----------------------------------------------------


async def test_guests_are_subscribed_when_added_and_the_app_cannot_change_subscriptions(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    tenant_sandbox.set_knobs(exchange_lag_seconds=0)  # Exchange's lag behind Entra has tests of its own
    guest = tenant_sandbox.directory.user_by_mail(GUEST)
    falcon = tenant_sandbox.directory.group_by_identity(FALCON)
    assert guest is not None and falcon is not None
    subscribers = await exchange_directory.list_unified_group_subscribers(FALCON)
    assert [m.external_directory_object_id for m in subscribers] == [guest.id]
    tenant_sandbox.directory.unsubscribe(falcon, guest.id)
    assert await exchange_directory.list_unified_group_subscribers(FALCON) == []
    new_guest = tenant_sandbox.directory.add_guest("new.guest@fabrikam.example", "New Guest")
    tenant_sandbox.directory.add_member(falcon, new_guest.id)  # what Graph's members/$ref does
    assert [m.email_address for m in await exchange_directory.list_unified_group_subscribers(FALCON)] == [
        "new.guest@fabrikam.example"
    ]
    with pytest.raises(RejectedRequestError, match="app-only"):
        await exchange_directory.invoke(
            "Add-UnifiedGroupLinks", {"Identity": FALCON, "LinkType": "Subscribers", "Links": GUEST}
        )
