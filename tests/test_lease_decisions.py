"""Leases and sponsors as decisions (pure logic: hand-written fakes, an in-memory SQLite lease book).

What intake refuses, what the policy gives, what verify-delivery keeps when an onboarding finishes, and
what a wake-up does with the lease it finds. End to end through the stand-ins: tests/test_leases.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from shared.contracts import DeadLetterReason, OutcomeStatus
from shared.decisions import Finish
from shared.journal import SqliteJournal
from shared.journal.model import LeaseState
from shared.lease_watch import LeaseWatch
from shared.leases import NO_LEASE_BOOK, LeaseKeeper, LeaseWake, expiry_request_id, lease_key
from shared.policy import OnboardingPolicy
from shared.stages import create_contact, verify_delivery
from tests.fakes import FakeReceivedMessage, Recorder, RecordingActions, RecordingOutbox
from tests.test_stage_decisions import NOW, World, assert_dead_letter, delivery, pass_on, request_body

SPONSOR, POLICY_SPONSOR = uuid.uuid4(), uuid.uuid4()


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def book() -> AsyncIterator[SqliteJournal]:
    journal = SqliteJournal(":memory:")
    yield journal
    await journal.close()


def _keeper(book: SqliteJournal, recorder: Recorder, world: World) -> LeaseKeeper:
    return LeaseKeeper(book, RecordingOutbox(recorder), timedelta(days=7), lambda: world.now)


@pytest.mark.parametrize(
    ("ends_in", "said"),
    [
        (timedelta(0), "not in the future"),
        (timedelta(days=-1), "not in the future"),
        (timedelta(days=1200), "more than"),
    ],
)
async def test_intake_refuses_an_end_in_the_past_or_too_far_away(
    world: World, book: SqliteJournal, ends_in: timedelta, said: str
) -> None:
    world.leases = _keeper(book, Recorder(), world)
    decision = await create_contact(request_body(expires_at=(NOW + ends_in).isoformat()), delivery(), world.deps)
    assert said in assert_dead_letter(decision, DeadLetterReason.INVALID_REQUEST).description


async def test_an_end_on_an_offboard_is_refused_before_anything_is_removed(world: World) -> None:
    offboard = request_body(action="offboard", expires_at=(NOW + timedelta(days=1)).isoformat())
    decision = await create_contact(offboard, delivery(), world.deps)
    assert "onboarding" in assert_dead_letter(decision, DeadLetterReason.INVALID_REQUEST).description
    assert world.script.calls == []


async def test_without_a_lease_book_an_end_is_refused_rather_than_granted_for_good(world: World) -> None:
    decision = await create_contact(
        request_body(expires_at=(NOW + timedelta(days=1)).isoformat()), delivery(), world.deps
    )
    assert assert_dead_letter(decision, DeadLetterReason.POLICY_DENIED).description == NO_LEASE_BOOK
    world.policy = OnboardingPolicy.model_validate(
        {"sources": {"hr": {"allowed_groups": ["*"]}}, "groups": {"partners@contoso.com": {"default_lease": "P30D"}}}
    )
    decision = await create_contact(request_body(), delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.POLICY_DENIED)


async def test_a_guest_is_invited_with_the_requests_sponsors_else_the_policys(world: World) -> None:
    world.policy = OnboardingPolicy.model_validate(
        {"sources": {"hr": {"allowed_groups": ["*"]}}, "groups": {"*": {"sponsors": [str(POLICY_SPONSOR)]}}}
    )
    await pass_on(world, request_body(group={"object_id": world.m365.id}, sponsors=[str(SPONSOR)]))
    assert world.graph.invited_sponsors["jordan.reyes@fabrikam.example"] == (str(SPONSOR),)
    await pass_on(world, request_body(external_email="mei@fabrikam.example", group={"object_id": world.m365.id}))
    assert world.graph.invited_sponsors["mei@fabrikam.example"] == (str(POLICY_SPONSOR),)


async def test_a_dry_run_says_when_the_membership_would_end(world: World, book: SqliteJournal) -> None:
    world.leases = _keeper(book, Recorder(), world)
    ends_at = NOW + timedelta(days=30)
    decision = await create_contact(request_body(expires_at=ends_at.isoformat(), dry_run=True), delivery(), world.deps)
    assert isinstance(decision, Finish) and decision.outcome.status is OutcomeStatus.PLANNED
    assert f"End the membership at {ends_at:%Y-%m-%d %H:%M} UTC" in decision.outcome.description
    assert await book.leases() == []


async def _onboarded(world: World, **request: object) -> Finish:
    message = await pass_on(world, request_body(**request))
    if message.recipient.id not in world.exchange.members[message.group.mail]:  # what add-member does
        await world.exchange.add_distribution_group_member(message.group.mail, message.recipient.id)
    decision = await verify_delivery(message, delivery(), world.deps)
    assert isinstance(decision, Finish), decision
    return decision


async def test_a_finished_onboarding_keeps_its_lease_and_schedules_the_notice_then_the_end(
    world: World, book: SqliteJournal
) -> None:
    recorder = Recorder()
    world.leases = _keeper(book, recorder, world)
    ends_at = NOW + timedelta(days=30)
    finished = await _onboarded(world, expires_at=ends_at.isoformat())
    assert finished.outcome.expires_at == ends_at
    key = lease_key("Jordan.Reyes@fabrikam.example", world.dl.id)
    lease = await book.lease(key)
    assert lease is not None and lease.state is LeaseState.ACTIVE and lease.notice_at == ends_at - timedelta(days=7)
    scheduled = [(queue, at) for queue, _, at in recorder.sent]
    assert scheduled == [("leases", ends_at - timedelta(days=7)), ("leases", ends_at)]
    # The group's default lease, from when the request was accepted, when the request names no end.
    world.policy = OnboardingPolicy.model_validate(
        {"sources": {"hr": {"allowed_groups": ["*"]}}, "groups": {world.dl.id: {"default_lease": "P90D"}}}
    )
    renewed = await _onboarded(world)
    assert renewed.outcome.expires_at == NOW + timedelta(days=90)


async def test_an_onboarding_without_an_end_removes_the_lease(world: World, book: SqliteJournal) -> None:
    world.leases = _keeper(book, Recorder(), world)
    await _onboarded(world, expires_at=(NOW + timedelta(days=30)).isoformat())
    forever = await _onboarded(world)
    assert forever.outcome.expires_at is None
    assert any("no longer ends" in change for change in forever.outcome.changes)
    lease = await book.lease(lease_key("jordan.reyes@fabrikam.example", world.dl.id))
    assert lease is not None and lease.state is LeaseState.ENDED


async def _wake(book: SqliteJournal, recorder: Recorder, world: World, wake: LeaseWake) -> str:
    watch = LeaseWatch(book, RecordingOutbox(recorder), world.policy, "onboarding-outcomes", lambda: world.now)
    return await watch.run(FakeReceivedMessage(wake.model_dump_json().encode()), RecordingActions(recorder))


async def test_a_wake_up_acts_only_on_the_active_lease_with_its_end_and_only_once(
    world: World, book: SqliteJournal
) -> None:
    recorder = Recorder()
    world.leases = _keeper(book, recorder, world)
    first_end, later_end = NOW + timedelta(days=30), NOW + timedelta(days=60)
    await _onboarded(world, expires_at=first_end.isoformat())
    await _onboarded(world, expires_at=later_end.isoformat())  # a renewal
    key = lease_key("jordan.reyes@fabrikam.example", world.dl.id)
    recorder.sent.clear()
    assert await _wake(book, recorder, world, LeaseWake(key=key, ends_at=first_end, kind="notice")) == "superseded"
    assert await _wake(book, recorder, world, LeaseWake(key=key, ends_at=first_end, kind="expiry")) == "superseded"
    assert recorder.sent == []
    world.now = later_end - timedelta(days=7)  # the notice's time
    assert await _wake(book, recorder, world, LeaseWake(key=key, ends_at=later_end, kind="notice")) == "noticed"
    world.now = later_end
    assert await _wake(book, recorder, world, LeaseWake(key=key, ends_at=later_end, kind="expiry")) == "expired"
    # A second delivery of the end's wake-up sends the same request again: Service Bus drops its MessageId.
    assert await _wake(book, recorder, world, LeaseWake(key=key, ends_at=later_end, kind="expiry")) == "expired"
    notice, offboard, again = ((queue, str(message.message_id)) for queue, message, _ in recorder.sent)
    assert notice[0] == "onboarding-outcomes"
    assert offboard == again == ("create-contact", expiry_request_id(key, later_end))
    assert "complete" in recorder.kinds()


async def test_a_wake_up_before_its_time_removes_nothing_and_is_put_back_at_its_time(
    world: World, book: SqliteJournal
) -> None:
    """Anyone who may send to `leases` could forge the end's wake-up of a lease (its key and end are in the
    onboarding's outcome): before the end it must not offboard the person."""
    recorder = Recorder()
    world.leases = _keeper(book, recorder, world)
    end = NOW + timedelta(days=30)
    await _onboarded(world, expires_at=end.isoformat())
    key = lease_key("jordan.reyes@fabrikam.example", world.dl.id)
    recorder.sent.clear()
    assert await _wake(book, recorder, world, LeaseWake(key=key, ends_at=end, kind="expiry")) == "early"
    assert [(queue, at) for queue, _, at in recorder.sent] == [("leases", end)]  # back at its time, nothing sent
    lease = await book.lease(key)
    assert lease is not None and lease.state is LeaseState.ACTIVE


async def test_an_onboarding_without_an_end_does_not_wait_for_a_lease_book_that_is_down(
    world: World, book: SqliteJournal
) -> None:
    world.leases = _keeper(book, Recorder(), world)
    await book.close()  # the journal's storage is gone
    finished = await _onboarded(world)
    assert finished.outcome.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS
    assert any("Could not read the lease book" in warning for warning in finished.outcome.warnings)
