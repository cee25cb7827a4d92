"""Issue 11, Exchange side, through the local host, the emulator and the sandbox: what each request ends with."""

from __future__ import annotations

import pytest

from shared.contracts import OutcomeStatus, RecipientKind
from shared.directory.exchange import ROLE_FOR_BYPASS
from shared.directory.rights import SECURITY_GROUP_MEMBERSHIP
from standins.local_app import APP_OBJECT_ID
from standins.stack import LocalStack
from tests.fixtures.pipeline import onboard
from tests.samples import sample_request

pytestmark = pytest.mark.stack  # every test here starts stand-ins

GUEST = "existing.guest@fabrikam.example"
QUOTED_GUEST = "o'hara\u2018x@fabrikam.example"
PARTNERS, SECURE, FALCON = "partners@contoso.com", "suppliers-secure@contoso.com", "project-falcon@contoso.com"


async def test_existing_guests_subscriptions_sender_lists_and_missing_roles(stack: LocalStack) -> None:
    directory = stack.sandbox.directory
    guest, partners, falcon = (
        directory.user_by_mail(GUEST),
        directory.group_by_identity(PARTNERS),
        directory.group_by_identity(FALCON),
    )
    assert guest is not None and partners is not None and falcon is not None
    directory.unsubscribe(falcon, guest.id)  # an admin removed the guest's subscription
    # The same for a guest whose address holds quotes PowerShell ends a string at (the fix must paste whole).
    quoted_guest = directory.add_guest(QUOTED_GUEST, "O'Hara")
    directory.add_member(falcon, quoted_guest.id)
    directory.unsubscribe(falcon, quoted_guest.id)
    partners.accept_messages_only_from = ["listed@fabrikam.example"]
    stack.sandbox.grants.revoke_exchange_role(APP_OBJECT_ID, SECURITY_GROUP_MEMBERSHIP)  # Recipient Administrator only
    requests = [
        sample_request("x-guest-dl", GUEST, "Existing Guest", PARTNERS),
        sample_request("x-unsubscribed", GUEST, "Existing Guest", FALCON),
        sample_request("x-unsubscribed-quoted", QUOTED_GUEST, "O'Hara", FALCON),
        sample_request("x-listed", "listed@fabrikam.example", "Listed Person", PARTNERS),
        sample_request("x-secure", "sec@fabrikam.example", "Sec Person", SECURE),
    ]
    outcomes = await onboard(stack, requests)

    # 6. The guest holds the address, so no contact: the guest itself joins the distribution group.
    guest_dl = outcomes["x-guest-dl"]
    assert guest_dl.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS, (guest_dl.reason, guest_dl.description)
    # 11. ...and, not being on Partners' sender list, is told so (the list is compared, not ignored).
    assert len(guest_dl.warnings) == 1 and "AcceptMessagesOnlyFromSendersOrMembers" in guest_dl.warnings[0]
    assert guest_dl.recipient is not None and guest_dl.recipient.kind is RecipientKind.GUEST_USER
    assert (guest_dl.recipient.id, guest_dl.recipient.created) == (guest.id, False)
    assert "existing guest" in guest_dl.description and guest.id in partners.members
    assert not [c for c in directory.contacts.values() if c.external_email_address == GUEST]

    # 9. A member who is not subscribed does not get the group's mail: the outcome names the admin's fix.
    unsubscribed = outcomes["x-unsubscribed"]
    assert unsubscribed.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS, unsubscribed.description
    assert any(
        f"Add-UnifiedGroupLinks -Identity '{FALCON}' -LinkType Subscribers -Links '{GUEST}'" in w
        for w in unsubscribed.warnings
    )

    unsubscribed_quoted = outcomes["x-unsubscribed-quoted"]
    fix = "Add-UnifiedGroupLinks -Identity 'project-falcon@contoso.com' -LinkType Subscribers -Links 'o''hara\u2018\u2018x@fabrikam.example'"
    assert any(w.endswith(fix) for w in unsubscribed_quoted.warnings), unsubscribed_quoted.warnings

    # 11. The sender list names the new contact (as its object GUID): no "not listed" warning.
    listed = outcomes["x-listed"]
    assert listed.status is OutcomeStatus.SUCCEEDED, (listed.reason, listed.description, listed.warnings)

    # 7. A mail-enabled security group without the role that may bypass its managers.
    secure = outcomes["x-secure"]
    assert (secure.status, secure.reason) == (OutcomeStatus.FAILED, "PermissionDenied"), secure.description
    assert ROLE_FOR_BYPASS in secure.description and "Exchange Administrator" in secure.description


async def test_exchange_warnings_on_a_change_reach_the_outcome(stack: LocalStack) -> None:
    warning = "The group's membership is hidden from the address book."
    stack.sandbox.inject("exchange", 200, operation="Add-DistributionGroupMember", warnings=[warning])
    outcome = (await onboard(stack, [sample_request("x-warned", "warned@fabrikam.example", "Warned", PARTNERS)]))[
        "x-warned"
    ]
    assert outcome.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS, (outcome.reason, outcome.description)
    assert outcome.warnings == (f"Add-DistributionGroupMember warned: {warning}",)
