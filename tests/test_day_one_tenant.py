"""Issue 24 through the local host, the emulator and the sandbox: what a real tenant refuses or delays, and
what each request ends with (the Microsoft behaviours: docs/microsoft-365-facts.md, section 8)."""

from __future__ import annotations

import asyncio

import pytest
from azure.servicebus.aio import ServiceBusClient

from cli.upstream import collect_outcomes, submit
from shared.contracts import OutcomeStatus, RecipientKind, StageName
from shared.journal import TransitionKind
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import LocalStack, local_stack, running_host
from standins.tenant_sandbox import TenantSeed
from standins.tenant_sandbox.model import SeedUser
from tests.fixtures.pipeline import OUTCOMES, Readback, journal_history, onboard
from tests.samples import PARTNERS, sample_request
from tests.waiting import HANG_GUARD_SECONDS

pytestmark = pytest.mark.stack  # every test here starts stand-ins

FALCON = "project-falcon@contoso.com"
FALCON_ID = "7c1d2e3f-0003-4b5c-8d9e-0f1a2b3c4d03"
# An internal user whose private address is in otherMails: Entra will not invite that address.
PAT = SeedUser(
    id="0b6a9c1e-4444-4a4e-9b1a-5f7c2d3e4a04",
    display_name="Pat Doe",
    mail="pat.doe@contoso.com",
    other_mails=("pat.private@fabrikam.example",),
)


def _failed(outcome_reason: tuple[OutcomeStatus, str | None], reason: str) -> bool:
    return outcome_reason == (OutcomeStatus.FAILED, reason)


async def test_invitations_the_tenant_refuses_end_with_their_own_reasons() -> None:
    seed = TenantSeed.demo()
    with local_stack(seed=seed.model_copy(update={"users": (*seed.users, PAT)})) as stack:
        directory = stack.sandbox.directory
        directory.change_settings(b2b_blocked_domains=["competitor.example"])
        outcomes = await onboard(
            stack,
            [
                sample_request("d1-private", "pat.private@fabrikam.example", "Pat Private", FALCON),
                sample_request("d1-deny-list", "sam@competitor.example", "Sam Rival", FALCON),
            ],
        )
        directory.change_settings(b2b_blocked_domains=[], allow_invites_from="adminsAndGuestInviters")
        outcomes |= await onboard(stack, [sample_request("d1-admins-only", "lee@tailspin.example", "Lee Wu", FALCON)])
        guests = {u.mail for u in directory.users.values() if u.user_type == "Guest"}

    private = outcomes["d1-private"]
    assert _failed((private.status, private.reason), "AddressInUseInternally"), private.description
    assert "internal user" in private.description
    deny_list = outcomes["d1-deny-list"]
    assert _failed((deny_list.status, deny_list.reason), "InvitationRefused"), deny_list.description
    assert "blocked by your invitation policy" in deny_list.description and "allow/deny list" in deny_list.description
    admins_only = outcomes["d1-admins-only"]
    assert _failed((admins_only.status, admins_only.reason), "InvitationRefused"), admins_only.description
    assert "Guest invitations not allowed" in admins_only.description and "onboard grant" not in admins_only.description
    assert not guests & {"pat.private@fabrikam.example", "sam@competitor.example", "lee@tailspin.example"}


async def test_a_group_that_refuses_guests_is_a_policy_not_a_missing_right(stack: LocalStack) -> None:
    falcon = stack.sandbox.directory.groups[FALCON_ID]
    falcon.allow_to_add_guests = False
    stack.sandbox.directory.update_group(falcon)
    outcome = (await onboard(stack, [sample_request("d1-no-guests", "ana@tailspin.example", "Ana Lima", FALCON)]))[
        "d1-no-guests"
    ]
    assert _failed((outcome.status, outcome.reason), "GuestsNotAllowed"), (outcome.reason, outcome.description)
    assert "AllowToAddGuests" in outcome.description and "onboard grant" not in outcome.description
    guest = stack.sandbox.directory.user_by_mail("ana@tailspin.example")
    assert guest is not None and guest.id not in falcon.members


async def test_a_new_guest_is_not_reported_unsubscribed_while_exchange_catches_up(stack: LocalStack) -> None:
    stack.sandbox.set_knobs(exchange_lag_seconds=2)
    outcome = (await onboard(stack, [sample_request("d1-lag", "kim@tailspin.example", "Kim Park", FALCON)]))["d1-lag"]
    assert outcome.status is OutcomeStatus.SUCCEEDED, (outcome.reason, outcome.description, outcome.warnings)
    assert outcome.recipient is not None and outcome.recipient.kind is RecipientKind.GUEST_USER


async def test_a_guest_exchange_never_shows_ends_with_a_warning_that_says_so(stack: LocalStack) -> None:
    stack.sandbox.set_knobs(exchange_lag_seconds=3600)  # Exchange does not catch up within the retry budget
    outcome = (await onboard(stack, [sample_request("d1-behind", "lou@tailspin.example", "Lou Reed", FALCON)]))[
        "d1-behind"
    ]
    assert outcome.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS, (outcome.reason, outcome.description)
    (warning,) = outcome.warnings
    assert "did not yet show the guest" in warning and "not subscribed" not in warning


async def test_a_contact_entra_does_not_have_yet_is_checked_once_it_has(stack: LocalStack, readback: Readback) -> None:
    """New-MailContact answers without an Entra id for a while: the product never sends an empty id to Graph."""
    stack.sandbox.set_knobs(replication_lag_seconds=2)
    outcome = (await onboard(stack, [sample_request("d1-no-id", "jo@fabrikam.example", "Jo Banks", PARTNERS)]))[
        "d1-no-id"
    ]
    assert outcome.status is OutcomeStatus.SUCCEEDED, (outcome.reason, outcome.description, outcome.warnings)
    contact = await readback.exchange.find_mail_contact("jo@fabrikam.example")
    assert contact is not None and contact.external_directory_object_id
    assert (
        outcome.recipient is not None and outcome.recipient.directory_object_id == contact.external_directory_object_id
    )
    assert not [
        e for e in stack.sandbox.request_log if e.operation.startswith("GET /v1.0/contacts") and e.status >= 400
    ]


# --- One address, two recipients (docs/microsoft-365-facts.md §9) ----------------------------------------

TWIN = "twin.person@fabrikam.example"


@pytest.mark.parametrize("dry_run", [False, True])
async def test_an_address_a_mail_contact_holds_is_not_invited_into_a_microsoft_365_group(
    stack: LocalStack, dry_run: bool
) -> None:
    """A guest invited for a contact's address gets no SMTP address in Exchange: group mail would not reach it."""
    stack.sandbox.set_knobs(exchange_lag_seconds=0)
    first = (await onboard(stack, [sample_request("twin-dl", TWIN, "Twin Person", PARTNERS)]))["twin-dl"]
    assert first.recipient is not None and first.recipient.kind is RecipientKind.MAIL_CONTACT, first.description
    request = sample_request("twin-m365", TWIN, "Twin Person", FALCON).model_copy(update={"dry_run": dry_run})
    outcome = (await onboard(stack, [request]))["twin-m365"]

    assert _failed((outcome.status, outcome.reason), "AddressHeldByMailContact"), (outcome.reason, outcome.description)
    assert "Remove-MailContact" in outcome.description and "distribution group" in outcome.description
    directory = stack.sandbox.directory
    assert directory.users_claiming(TWIN) == []  # no guest was invited
    contact = directory.contact_holding(TWIN)
    partners = directory.group_by_mail(PARTNERS)
    assert contact is not None and partners is not None
    assert contact.external_directory_object_id in partners.members  # the distribution group still has them


async def _until_create_contact_decided(stack: LocalStack, request_id: str) -> None:
    decided = {TransitionKind.PASSED_ON, TransitionKind.DEAD_LETTERED, TransitionKind.FINISHED}
    async with asyncio.timeout(HANG_GUARD_SECONDS):
        while True:
            history = await journal_history(stack, request_id)
            if any(t.stage is StageName.CREATE_CONTACT and t.decision in decided for t in history):
                return
            await asyncio.sleep(0.2)


async def test_a_guest_exchange_does_not_know_yet_joins_a_distribution_group_itself(stack: LocalStack) -> None:
    """Exchange would take a contact for the address while it has not heard of the guest, and the guest would
    lose its address to it: Entra is asked first, and the guest itself joins the distribution group."""
    stack.sandbox.set_knobs(exchange_lag_seconds=3600)  # Exchange has not heard of the guest...
    directory = stack.sandbox.directory
    guest = directory.add_guest(TWIN, "Twin Person")
    async with (
        running_host(stack.environment),
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
    ):
        ids = await submit(client, [sample_request("twin-guest-dl", TWIN, "Twin Person", PARTNERS)])
        await _until_create_contact_decided(stack, "twin-guest-dl")
        directory.show_to_exchange(guest)  # ...until create-contact has decided
        outcome = (await collect_outcomes(client, OUTCOMES, ids, within_seconds=60))["twin-guest-dl"]

    assert outcome.status is OutcomeStatus.SUCCEEDED, (outcome.reason, outcome.description, outcome.warnings)
    assert outcome.recipient is not None and outcome.recipient.kind is RecipientKind.GUEST_USER
    assert (outcome.recipient.id, outcome.recipient.created) == (guest.id, False)
    partners = directory.group_by_mail(PARTNERS)
    assert partners is not None and guest.id in partners.members
    assert directory.contact_holding(TWIN) is None and not directory.users[guest.id].smtp_withheld
