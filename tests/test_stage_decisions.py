"""Each stage's decisions, over hand-written fake directories (pure logic, no I/O)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.contracts import (
    DeadLetterReason,
    GroupKind,
    OnboardingRequest,
    OutcomeStatus,
    RecipientKind,
    StageMessage,
    StageName,
)
from shared.decisions import DeadLetter, Finish, PassOn, RetryLater
from shared.directory.errors import (
    AddressHeldInternallyError,
    DirectoryError,
    GuestsNotAllowedError,
    InvitationRefusedError,
    NotFoundError,
    PermissionDeniedError,
    ThrottledError,
    TransientDirectoryError,
)
from shared.directory.ports import DirectoryUser, SenderRestrictions, TraceEntry
from shared.envelope import Delivery
from shared.policy import OnboardingPolicy
from shared.retry import RetryPolicy
from shared.stages import StageDependencies, add_member, create_contact, verify_delivery
from shared.stages.add_member import REPLICATION_PAUSES_SECONDS
from shared.stages.create_contact import contact_name_candidates
from shared.stages.dependencies import LeaseKeeping, RosterKeeping, WelcomeMail
from tests.fakes import FailureScript, FakeExchange, FakeGraph

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
# What every later stage reads before it acts (shared/stages/admission.py): the group and the recipient.
ADMISSION_CALLS = frozenset({"get_group", "find_mail_contact", "find_user_for_invitation"})


class World:
    def __init__(self) -> None:
        self.script = FailureScript()
        self.graph = FakeGraph(self.script)
        self.exchange = FakeExchange(self.script)
        self.graph.exchange = self.exchange
        self.policy = OnboardingPolicy.model_validate(
            {"sources": {"hr": {"allowed_groups": ["*"]}}, "sender_authentication_fix_allowed": ["*"]}
        )
        self.dl = self.graph.add_group(GroupKind.DISTRIBUTION, "partners@contoso.com")
        self.m365 = self.graph.add_group(GroupKind.MICROSOFT_365, "falcon@contoso.com")
        self.welcome: WelcomeMail | None = None
        self.leases: LeaseKeeping | None = None  # no lease book, as without a journal
        self.roster: RosterKeeping | None = None  # no drift watch, as without a journal
        self.now = NOW
        self.paused: list[float] = []  # the stages' in-invocation waits, not waited here

    @property
    def deps(self) -> StageDependencies:
        return StageDependencies(
            graph=self.graph,
            exchange=self.exchange,
            policy=self.policy,
            retry=RetryPolicy(max_attempts=3, random=random.Random(7)),
            guest_redirect_url="https://myapplications.microsoft.com",
            welcome=self.welcome,
            clock=lambda: self.now,
            leases=self.leases,
            roster=self.roster,
            sleep=self.pause,
        )

    async def pause(self, seconds: float) -> None:
        self.paused.append(seconds)


@pytest.fixture
def world() -> World:
    return World()


def delivery(attempt: int = 1, first_attempt_at: datetime = NOW) -> Delivery:
    return Delivery("msg-1", "req-1", "req-1", None, attempt, first_attempt_at)


def request_body(**overrides: Any) -> OnboardingRequest:
    body: dict[str, Any] = {
        "external_email": "jordan.reyes@fabrikam.example",
        "display_name": "Jordan Reyes",
        "group": {"smtp_address": "partners@contoso.com"},
        "source_system": "hr",
    }
    body.update(overrides)
    return OnboardingRequest.model_validate(body)


async def pass_on(world: World, body: OnboardingRequest) -> StageMessage:
    decision = await create_contact(body, delivery(), world.deps)
    assert isinstance(decision, PassOn), decision
    assert decision.next_stage is StageName.ADD_MEMBER
    return decision.message


def assert_dead_letter(decision: object, reason: DeadLetterReason) -> DeadLetter:
    assert isinstance(decision, DeadLetter), decision
    assert decision.reason is reason
    assert decision.outcome.status is OutcomeStatus.FAILED
    assert decision.outcome.reason == reason
    assert decision.outcome.description == decision.description
    return decision


# --- create-contact -------------------------------------------------------------------------


async def test_distribution_group_gets_a_new_mail_contact(world: World) -> None:
    message = await pass_on(world, request_body())
    assert message.request.request_id == "req-1"
    assert message.recipient.kind is RecipientKind.MAIL_CONTACT
    assert message.recipient.created
    (contact,) = world.exchange.contacts.values()
    assert contact.name == "Jordan Reyes"
    assert contact.identity == message.recipient.id
    assert message.group.kind is GroupKind.DISTRIBUTION


async def test_running_create_contact_twice_reuses_the_contact(world: World) -> None:
    first = await pass_on(world, request_body())
    second = await pass_on(world, request_body())
    assert len(world.exchange.contacts) == 1
    assert second.recipient.id == first.recipient.id
    assert second.recipient.created  # its stamp names this request: it is still the contact this request created


async def test_a_contact_of_another_request_or_of_no_one_is_not_created_by_this_one(world: World) -> None:
    await pass_on(world, request_body())
    (contact,) = world.exchange.contacts.values()
    assert contact.provenance == "m365-external-onboarding;created-by=req-1"
    other = await create_contact(request_body(), replace(delivery(), request_id="req-2"), world.deps)
    assert isinstance(other, PassOn) and not other.message.recipient.created
    world.exchange.contacts[contact.identity] = replace(contact, provenance=None)  # someone else's: adopted
    assert not (await pass_on(world, request_body())).recipient.created


async def test_name_clash_with_another_person_gets_a_stable_unique_name(world: World) -> None:
    world.exchange.taken_names.add("Jordan Reyes")  # someone else's object
    message = await pass_on(world, request_body())
    contact = world.exchange.contacts[message.recipient.id]
    assert contact.name == contact_name_candidates("Jordan Reyes", "jordan.reyes@fabrikam.example")[1]
    assert contact.name.startswith("Jordan Reyes (")
    assert len(contact.name) <= 64


def test_contact_names_fit_exchange_limit_and_depend_on_the_address() -> None:
    long_name = "x" * 256
    names = contact_name_candidates(long_name, "a@b.example")
    assert all(len(name) <= 64 for name in names)
    assert names != contact_name_candidates(long_name, "c@b.example")
    assert names == contact_name_candidates(long_name, "A@B.example")


async def test_address_taken_by_an_internal_user_is_refused(world: World) -> None:
    world.exchange.addresses_of_other_objects.add("jordan.reyes@fabrikam.example")
    world.graph.users["u1"] = DirectoryUser("u1", "jordan.reyes@fabrikam.example", "Member")
    decision = await create_contact(request_body(), delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.ADDRESS_IN_USE_INTERNALLY)


async def test_address_in_use_but_contact_not_visible_yet_retries(world: World) -> None:
    world.exchange.addresses_of_other_objects.add("jordan.reyes@fabrikam.example")
    decision = await create_contact(request_body(), delivery(), world.deps)
    assert isinstance(decision, RetryLater)
    assert "not visible yet" in decision.cause


async def test_microsoft_365_group_invites_a_guest_once(world: World) -> None:
    body = request_body(group={"object_id": world.m365.id})
    first = await pass_on(world, body)
    second = await pass_on(world, body)
    assert first.recipient.kind is RecipientKind.GUEST_USER
    assert first.recipient.created
    assert second.recipient.id == first.recipient.id
    assert not second.recipient.created  # guests carry no provenance stamp (docs: lifecycle)


async def test_internal_member_is_not_invited_as_a_guest(world: World) -> None:
    world.graph.users["u1"] = DirectoryUser("u1", "jordan.reyes@fabrikam.example", "Member")
    decision = await create_contact(request_body(group={"object_id": world.m365.id}), delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.ADDRESS_IN_USE_INTERNALLY)


async def test_an_internal_users_other_address_is_not_invited(world: World) -> None:
    """Entra matches an invitation by UPN and otherMails too: a member's private address is theirs."""
    member = DirectoryUser("u1", "jordan@contoso.com", "Member")
    world.graph.users["u1"] = member
    world.graph.other_addresses["jordan.reyes@fabrikam.example"] = member
    decision = await create_contact(request_body(group={"object_id": world.m365.id}), delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.ADDRESS_IN_USE_INTERNALLY)
    assert "invite_guest" not in world.script.calls


async def test_an_invitation_answering_a_member_is_not_taken_for_a_guest(world: World) -> None:
    world.graph.invited_user_type = "Member"  # invitedUserType: an existing B2B member came back
    decision = await create_contact(request_body(group={"object_id": world.m365.id}), delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.ADDRESS_IN_USE_INTERNALLY)


@pytest.mark.parametrize(
    ("error", "reason", "says"),
    [
        (
            AddressHeldInternallyError(
                "The invited user already exists in the directory as object ID: u1.", face="graph"
            ),
            DeadLetterReason.ADDRESS_IN_USE_INTERNALLY,
            "add that user to the group instead",
        ),
        (
            InvitationRefusedError("Guest invitations not allowed for your company.", face="graph", status=403),
            DeadLetterReason.INVITATION_REFUSED,
            "allow/deny list",
        ),
    ],
)
async def test_an_invitation_graph_refuses_ends_with_its_own_reason(
    world: World, error: DirectoryError, reason: DeadLetterReason, says: str
) -> None:
    world.script.fail_next("invite_guest", error)
    decision = await create_contact(request_body(group={"object_id": world.m365.id}), delivery(), world.deps)
    dead = assert_dead_letter(decision, reason)
    assert says in dead.description and "onboard grant" not in dead.description


async def test_a_group_refusing_guests_is_not_a_missing_right(world: World) -> None:
    message = await pass_on(world, request_body(group={"object_id": world.m365.id}))
    refusal = GuestsNotAllowedError("Guests users are not allowed to join this Unified Group", face="graph", status=403)
    world.script.fail_next("add_group_member", refusal)
    dead = assert_dead_letter(await add_member(message, delivery(), world.deps), DeadLetterReason.GUESTS_NOT_ALLOWED)
    assert "AllowToAddGuests" in dead.description and "onboard grant" not in dead.description


@pytest.mark.parametrize("dry_run", [False, True])
async def test_a_mail_contacts_address_is_not_invited_into_a_microsoft_365_group(world: World, dry_run: bool) -> None:
    """Entra would make a guest without an email address for it: refused, with the fix, before anything is written."""
    await pass_on(world, request_body())  # a distribution group first: the contact now holds the address
    (contact,) = world.exchange.contacts.values()
    body = request_body(group={"object_id": world.m365.id}, dry_run=dry_run)
    decision = await create_contact(body, delivery(), world.deps)
    if dry_run:
        assert isinstance(decision, Finish) and decision.outcome.reason == DeadLetterReason.ADDRESS_HELD_BY_MAIL_CONTACT
        description = decision.outcome.description
    else:
        description = assert_dead_letter(decision, DeadLetterReason.ADDRESS_HELD_BY_MAIL_CONTACT).description
    assert f"Remove-MailContact -Identity {contact.identity}" in description
    assert "jordan.reyes" not in description
    assert "invite_guest" not in world.script.calls and not world.graph.users


async def test_a_guest_holding_the_address_joins_a_distribution_group_without_a_contact(world: World) -> None:
    world.graph.users["g1"] = DirectoryUser("g1", "jordan.reyes@fabrikam.example", "Guest")
    message = await pass_on(world, request_body())
    assert (message.recipient.kind, message.recipient.id, message.recipient.created) == (
        RecipientKind.GUEST_USER,
        "g1",
        False,
    )
    assert "new_mail_contact" not in world.script.calls  # Entra was asked first, not Exchange's refusal awaited


async def test_address_in_an_accepted_domain_is_refused(world: World) -> None:
    decision = await create_contact(request_body(external_email="adele@contoso.com"), delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.ADDRESS_IN_USE_INTERNALLY)
    assert not world.exchange.contacts


async def test_unknown_group_dead_letters_with_group_not_found(world: World) -> None:
    decision = await create_contact(request_body(group={"smtp_address": "nobody@contoso.com"}), delivery(), world.deps)
    dead = assert_dead_letter(decision, DeadLetterReason.GROUP_NOT_FOUND)
    assert "nobody@contoso.com" in dead.description
    assert dead.outcome.request_id == "req-1"
    assert dead.outcome.source_system == "hr"


@pytest.mark.parametrize(
    ("kind", "mail", "dynamic"),
    [(GroupKind.SECURITY, None, False), (GroupKind.MICROSOFT_365, "all@contoso.com", True)],
)
async def test_security_and_dynamic_groups_are_unsupported(
    world: World, kind: GroupKind, mail: str | None, dynamic: bool
) -> None:
    group = world.graph.add_group(kind, mail, dynamic=dynamic)
    decision = await create_contact(request_body(group={"object_id": group.id}), delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.UNSUPPORTED_GROUP_KIND)


@pytest.mark.parametrize(
    ("policy", "overrides"),
    [
        ({"sources": {}}, {}),
        ({"sources": {"hr": {"allowed_groups": ["other@contoso.com"]}}}, {}),
        (
            {"sources": {"hr": {"allowed_groups": ["*"]}}, "blocked_domains": ["fabrikam.example"]},
            {"external_email": "x@sub.fabrikam.example"},
        ),
    ],
    ids=["unknown-source", "group-not-listed", "blocked-domain"],
)
async def test_policy_violations_dead_letter_before_any_write(
    world: World, policy: dict[str, Any], overrides: dict[str, Any]
) -> None:
    world.policy = OnboardingPolicy.model_validate(policy)
    decision = await create_contact(request_body(**overrides), delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.POLICY_DENIED)
    assert "new_mail_contact" not in world.script.calls


async def test_throttling_retries_no_sooner_than_retry_after(world: World) -> None:
    world.script.fail_next("find_group_by_mail", ThrottledError("slow down", face="graph", status=429, retry_after=30))
    decision = await create_contact(request_body(), delivery(), world.deps)
    assert isinstance(decision, RetryLater)
    assert decision.delay >= timedelta(seconds=30)
    assert "429" in decision.cause


async def test_transient_failure_on_the_last_attempt_gives_up(world: World) -> None:
    world.script.fail_next("find_group_by_mail", TransientDirectoryError("boom", face="graph", status=503))
    decision = await create_contact(request_body(), delivery(attempt=3), world.deps)
    dead = assert_dead_letter(decision, DeadLetterReason.RETRIES_EXHAUSTED)
    assert "after 3 attempts" in dead.description


async def test_refused_permission_dead_letters_with_the_fix(world: World) -> None:
    refused = PermissionDeniedError("forbidden", face="graph", status=403)
    refused.needed = "Group.Read.All"  # as the Graph adapter names it
    world.script.fail_next("find_group_by_mail", refused)
    dead = assert_dead_letter(
        await create_contact(request_body(), delivery(), world.deps), DeadLetterReason.PERMISSION_DENIED
    )
    assert "It needs Group.Read.All." in dead.description
    assert "onboard grant" in dead.description


# --- add-member -----------------------------------------------------------------------------


async def test_add_member_is_idempotent_for_distribution_groups(world: World) -> None:
    message = await pass_on(world, request_body())
    body = message
    for _ in range(2):
        decision = await add_member(body, delivery(), world.deps)
        assert isinstance(decision, PassOn)
        assert decision.next_stage is StageName.VERIFY_DELIVERY
    assert world.exchange.members["partners@contoso.com"] == {message.recipient.id}


async def test_add_member_uses_graph_for_microsoft_365_groups(world: World) -> None:
    message = await pass_on(world, request_body(group={"object_id": world.m365.id}))
    decision = await add_member(message, delivery(), world.deps)
    assert isinstance(decision, PassOn)
    assert world.graph.members[world.m365.id] == {message.recipient.id}
    assert "add_distribution_group_member" not in world.script.calls


async def test_not_found_right_after_create_is_replication_lag_waited_out_briefly_then_retried(world: World) -> None:
    """The add is tried again after each of a few short pauses within the invocation (2 s in all);
    a lag that outlasts them becomes a scheduled retry."""
    message = await pass_on(world, request_body())
    lag = NotFoundError("Couldn't find object", face="exchange")
    world.script.fail_next("add_distribution_group_member", lag, lag)
    assert isinstance(await add_member(message, delivery(), world.deps), PassOn)
    assert world.paused == [0.25, 0.25]
    world.paused.clear()
    world.script.fail_next("add_distribution_group_member", *[lag] * (len(REPLICATION_PAUSES_SECONDS) + 1))
    decision = await add_member(message, delivery(), world.deps)
    assert isinstance(decision, RetryLater)
    assert "replication lag" in decision.cause
    assert world.paused == list(REPLICATION_PAUSES_SECONDS) and sum(world.paused) == 2


# --- verify-delivery ------------------------------------------------------------------------


async def member_message(world: World, **overrides: Any) -> StageMessage:
    message = await pass_on(world, request_body(**overrides))
    decision = await add_member(message, delivery(), world.deps)
    assert isinstance(decision, PassOn)
    return decision.message


async def test_verify_fixes_sender_authentication_when_policy_allows(world: World) -> None:
    decision = await verify_delivery(await member_message(world), delivery(), world.deps)
    assert isinstance(decision, Finish)
    assert decision.outcome.status is OutcomeStatus.SUCCEEDED
    assert "RequireSenderAuthenticationEnabled" in decision.outcome.changes[0]
    assert not world.exchange.restrictions["partners@contoso.com"].require_sender_authentication


async def test_verify_warns_with_the_fix_when_policy_forbids_it(world: World) -> None:
    world.policy = OnboardingPolicy.model_validate({"sources": {"hr": {"allowed_groups": ["*"]}}})
    decision = await verify_delivery(await member_message(world), delivery(), world.deps)
    assert isinstance(decision, Finish)
    assert decision.outcome.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS
    assert "5.7.133" in decision.outcome.warnings[0]
    assert "Set-DistributionGroup -Identity 'partners@contoso.com'" in decision.outcome.warnings[0]
    assert "set_require_sender_authentication" not in world.script.calls


async def test_verify_reports_moderation_and_accept_lists(world: World) -> None:
    world.exchange.restrictions["partners@contoso.com"] = SenderRestrictions(False, ("someone-else",), (), True)
    decision = await verify_delivery(await member_message(world), delivery(), world.deps)
    assert isinstance(decision, Finish)
    assert len(decision.outcome.warnings) == 2


async def test_verify_retries_until_membership_is_visible(world: World) -> None:
    body = await member_message(world)
    world.exchange.members["partners@contoso.com"].clear()
    decision = await verify_delivery(body, delivery(), world.deps)
    assert isinstance(decision, RetryLater)
    assert "not visible" in decision.cause


async def test_verify_checks_membership_with_one_call_for_each_kind(world: World) -> None:
    for group, person, membership_call in (
        ("partners@contoso.com", "jo@fabrikam.example", "is_contact_member"),  # a contact: GET /contacts/{id}/memberOf
        ("falcon@contoso.com", "kim@tailspin.example", "is_group_member"),  # a guest: checkMemberGroups
    ):
        # Two people: the contact the first makes would hold the address against a guest (AddressHeldByMailContact).
        message = await member_message(
            world, group={"smtp_address": group}, external_email=person, allow_external_senders=False
        )
        assert message.recipient.directory_object_id is not None
        world.script.calls.clear()
        decision = await verify_delivery(message, delivery(), world.deps)
        assert isinstance(decision, Finish), decision
        # (a Microsoft 365 group's subscription check is one more call, not a membership listing; the
        # admission reads the group and the recipient, shared/stages/admission.py)
        others = [c for c in world.script.calls if c != "list_unified_group_subscribers" and c not in ADMISSION_CALLS]
        assert others == [membership_call]


async def test_verify_waits_while_exchange_has_not_listed_a_new_guest(world: World) -> None:
    message = await member_message(world, group={"smtp_address": "falcon@contoso.com"}, allow_external_senders=False)
    world.exchange.subscribers["falcon@contoso.com"].clear()  # Exchange has not learned of the add yet
    decision = await verify_delivery(message, delivery(), world.deps)
    assert isinstance(decision, RetryLater) and "sync lag" in decision.cause
    # The retry budget spent (3 attempts here): it finishes, saying Exchange had not caught up, not "unsubscribed".
    last = await verify_delivery(message, delivery(attempt=3), world.deps)
    assert isinstance(last, Finish) and last.outcome.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS
    (warning,) = last.outcome.warnings
    assert "did not yet show the guest" in warning and "Get-UnifiedGroupLinks -Identity 'falcon@contoso.com'" in warning


async def test_verify_warns_at_once_about_a_member_from_before_who_is_not_subscribed(world: World) -> None:
    message = await member_message(world, group={"smtp_address": "falcon@contoso.com"}, allow_external_senders=False)
    world.exchange.subscribers["falcon@contoso.com"].clear()  # an administrator removed the subscription
    decision = await verify_delivery(message.model_copy(update={"newly_added": False}), delivery(), world.deps)
    assert isinstance(decision, Finish)
    assert any("Add-UnifiedGroupLinks" in warning for warning in decision.outcome.warnings)


async def test_verify_of_a_message_without_the_object_id_takes_it_from_the_directory(world: World) -> None:
    message = await member_message(world, allow_external_senders=False)
    older = message.model_copy(update={"recipient": message.recipient.model_copy(update={"directory_object_id": None})})
    world.script.calls.clear()
    decision = await verify_delivery(older, delivery(), world.deps)
    assert isinstance(decision, Finish)
    assert "is_contact_member" in world.script.calls and "list_distribution_group_members" not in world.script.calls
    assert decision.outcome.recipient == message.recipient  # the Entra id found again travels on


async def test_verify_waits_while_entra_has_no_id_for_the_contact(world: World) -> None:
    """New-MailContact may answer before Entra has the contact: no empty id goes to Graph, it is read again later."""
    message = await member_message(world, allow_external_senders=False)
    contact = world.exchange.contacts[message.recipient.id]
    world.exchange.contacts[contact.identity] = replace(contact, external_directory_object_id=None)
    early = message.model_copy(update={"recipient": message.recipient.model_copy(update={"directory_object_id": None})})
    world.script.calls.clear()
    decision = await verify_delivery(early, delivery(), world.deps)
    assert isinstance(decision, RetryLater) and "not visible yet" in decision.cause
    assert not {"is_contact_member", "list_distribution_group_members"} & set(world.script.calls)


async def test_verify_skips_sender_checks_when_not_asked(world: World) -> None:
    decision = await verify_delivery(await member_message(world, allow_external_senders=False), delivery(), world.deps)
    assert isinstance(decision, Finish)
    assert not decision.outcome.changes
    assert "get_sender_restrictions" not in world.script.calls


# --- verify-delivery: the welcome message -------------------------------------------------

WELCOME = WelcomeMail("welcome@contoso.com", "Welcome to {group}", timedelta(minutes=5), timedelta(hours=1))
PERSON = "jordan.reyes@fabrikam.example"


async def welcome_sent(world: World) -> PassOn:
    world.welcome = WELCOME
    decision = await verify_delivery(await member_message(world), delivery(), world.deps)
    assert isinstance(decision, PassOn)
    return decision


def trace(world: World, status: str) -> None:
    world.exchange.traces.append(TraceEntry("<m1@contoso.onmicrosoft.com>", PERSON, status, world.now))


async def test_welcome_is_sent_once_then_rechecked_on_a_schedule(world: World) -> None:
    decision = await welcome_sent(world)
    assert world.graph.sent == [("welcome@contoso.com", PERSON, "Welcome to Group partners@contoso.com")]
    assert decision.next_stage is StageName.VERIFY_DELIVERY and decision.delay == WELCOME.check_interval
    assert decision.message.welcome is not None and decision.message.welcome.checks == 1
    assert "RequireSenderAuthenticationEnabled" in decision.message.changes[0]  # carried to the outcome


async def test_welcome_delivered_finishes_without_repeating_the_checks(world: World) -> None:
    message = (await welcome_sent(world)).message
    world.script.calls.clear()
    world.now += timedelta(minutes=5)
    trace(world, "Delivered")
    decision = await verify_delivery(message, delivery(), world.deps)
    assert isinstance(decision, Finish) and decision.outcome.status is OutcomeStatus.SUCCEEDED
    assert "welcome message was delivered" in decision.outcome.description
    assert decision.outcome.changes == message.changes
    assert [call for call in world.script.calls if call not in ADMISSION_CALLS] == ["message_trace"]
    assert len(world.graph.sent) == 1


async def test_welcome_bounce_dead_letters_with_delivery_failed(world: World) -> None:
    message = (await welcome_sent(world)).message
    trace(world, "Failed")
    decision = await verify_delivery(message, delivery(), world.deps)
    dead = assert_dead_letter(decision, DeadLetterReason.DELIVERY_FAILED)
    assert "message trace: Failed" in dead.description


async def test_welcome_not_traced_yet_is_rechecked_until_the_deadline(world: World) -> None:
    message = (await welcome_sent(world)).message
    trace(world, "Pending")
    world.now += timedelta(minutes=5)
    again = await verify_delivery(message, delivery(), world.deps)
    assert isinstance(again, PassOn) and again.message.welcome is not None and again.message.welcome.checks == 2
    world.now += WELCOME.deadline
    late = await verify_delivery(again.message, delivery(), world.deps)
    assert isinstance(late, Finish) and late.outcome.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS
    assert "not confirmed" in late.outcome.warnings[-1] and "Pending" in late.outcome.warnings[-1]


async def test_welcome_trace_throttled_retries(world: World) -> None:
    message = (await welcome_sent(world)).message
    world.script.fail_next("message_trace", ThrottledError("slow down", face="exchange", status=429, retry_after=30))
    decision = await verify_delivery(message, delivery(), world.deps)
    assert isinstance(decision, RetryLater) and decision.delay >= timedelta(seconds=30)
