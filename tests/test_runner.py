"""The runner carries out decisions, with recording fakes for the outbox, the settlement and the journal.

Pure logic, no I/O: the same runner runs against the emulator in the stack tests.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.amqp import AmqpMessageBodyType

from shared.contracts import (
    DeadLetterReason,
    GroupKind,
    OnboardingRequest,
    OutcomeEvent,
    OutcomeStatus,
    Recipient,
    RecipientKind,
    ResolvedGroup,
    StageName,
)
from shared.decisions import Decision, Ended, Finish, PassOn, RetryLater
from shared.envelope import ATTEMPT, FIRST_ATTEMPT_AT, REQUEST_ID, Delivery
from shared.journal import Transition, TransitionKind
from shared.outcomes import dead_letter, finish
from shared.policy import OnboardingPolicy
from shared.progress import Progress, Turn
from shared.retry import RetryPolicy
from shared.runner import StageRunner
from shared.stages import Stage, StageDependencies
from tests.fakes import (
    FailureScript,
    FakeExchange,
    FakeGraph,
    FakeReceivedMessage,
    Recorder,
    RecordingActions,
    RecordingJournal,
    RecordingOutbox,
)
from tests.samples import sample_request_json

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
OUTCOMES = "onboarding-outcomes"


def dependencies() -> StageDependencies:
    script = FailureScript()
    return StageDependencies(
        FakeGraph(script), FakeExchange(script), OnboardingPolicy(), RetryPolicy(), "https://x", clock=lambda: NOW
    )


class Harness:
    def __init__(self, decide: Any, *, max_delivery_count: int = 3) -> None:
        self.recorder = Recorder()
        self.seen: list[tuple[OnboardingRequest, Delivery]] = []

        async def handle(request: OnboardingRequest, delivery: Delivery, deps: StageDependencies) -> Decision:
            self.seen.append((request, delivery))
            result: Decision = decide(Turn(StageName.CREATE_CONTACT, delivery, NOW), request)
            return result

        self.journal = RecordingJournal(self.recorder)
        self.runner = StageRunner(
            Stage(StageName.CREATE_CONTACT, handle),
            dependencies(),
            RecordingOutbox(self.recorder),
            OUTCOMES,
            max_delivery_count,
            self.journal,
        )

    async def run(self, message: FakeReceivedMessage) -> Decision | Ended:
        return await self.runner.run(message, RecordingActions(self.recorder))

    def outcome(self) -> OutcomeEvent:
        ((_, message, _),) = [sent for sent in self.recorder.sent if str(sent[1].message_id).endswith("/outcome")]
        return OutcomeEvent.model_validate_json(b"".join(message.body))


def a_finish(turn: Turn, request: OnboardingRequest) -> Decision:
    return finish(turn, Progress(request=request), "done")


def raises(turn: Turn, request: OnboardingRequest) -> Decision:
    raise RuntimeError("a bug")


# --- each decision: send first, settle second, journal last --------------------------------


def _stage_message_of(turn: Turn, request: OnboardingRequest) -> Decision:
    progress = Progress(
        request=request,
        group=ResolvedGroup(id="g", display_name="G", mail="g@contoso.com", kind=GroupKind.DISTRIBUTION),
        recipient=Recipient(kind=RecipientKind.MAIL_CONTACT, id="c", created=True),
        accepted_at=NOW,
    )
    return PassOn(StageName.ADD_MEMBER, progress.stage_message())


@pytest.mark.parametrize(
    ("decide", "expected", "journalled"),
    [
        (
            _stage_message_of,
            [("send", "add-member", "demo-hr/msg-1/add-member"), ("complete",)],
            TransitionKind.PASSED_ON,
        ),
        (
            lambda turn, request: RetryLater(timedelta(seconds=30), "throttled"),
            [("schedule", "create-contact", "demo-hr/msg-1/create-contact/2"), ("complete",)],
            TransitionKind.RETRY_SCHEDULED,
        ),
        (
            lambda turn, request: dead_letter(turn, Progress(), DeadLetterReason.GROUP_NOT_FOUND, "no group"),
            [("send", OUTCOMES, "demo-hr/msg-1/outcome"), ("deadletter", "GroupNotFound")],
            TransitionKind.DEAD_LETTERED,
        ),
        (a_finish, [("send", OUTCOMES, "demo-hr/msg-1/outcome"), ("complete",)], TransitionKind.FINISHED),
    ],
    ids=["pass-on", "retry-later", "dead-letter", "finish"],
)
async def test_each_decision_sends_then_settles_then_journals(
    decide: Any, expected: list[tuple[str, ...]], journalled: TransitionKind
) -> None:
    harness = Harness(decide)
    await harness.run(FakeReceivedMessage(sample_request_json()))
    assert harness.recorder.events == [*expected, ("journal", journalled)]


async def test_a_transition_is_dated_before_the_next_stage_can_run_not_when_it_is_written() -> None:
    """The next stage may finish before this one has settled and journalled; its row must still sort
    after this one, or the journal shows a finished request as under way."""
    ticks = iter(range(1_000))

    def clock() -> datetime:
        return NOW + timedelta(seconds=next(ticks))

    sent_at: list[datetime] = []

    class TimedOutbox(RecordingOutbox):
        async def send(self, queue: str, message: ServiceBusMessage) -> None:
            sent_at.append(clock())
            await super().send(queue, message)

    recorder = Recorder()
    journal = RecordingJournal(recorder)
    deps = replace(dependencies(), clock=clock)
    stage = Stage(StageName.CREATE_CONTACT, _pass_on_at_once)
    runner = StageRunner(stage, deps, TimedOutbox(recorder), OUTCOMES, 3, journal)
    await runner.run(FakeReceivedMessage(sample_request_json()), RecordingActions(recorder))
    ((transition,), (send,)) = journal.transitions, sent_at
    assert transition.at < send


async def _pass_on_at_once(request: OnboardingRequest, delivery: Delivery, deps: StageDependencies) -> Decision:
    return _stage_message_of(Turn(StageName.CREATE_CONTACT, delivery, NOW), request)


async def test_a_retry_is_scheduled_one_attempt_later_with_the_same_body() -> None:
    harness = Harness(lambda turn, request: RetryLater(timedelta(seconds=30), "throttled"))
    body = sample_request_json()
    await harness.run(FakeReceivedMessage(body))
    ((_, retry, at),) = harness.recorder.sent
    assert at == NOW + timedelta(seconds=30)
    assert b"".join(retry.body) == body
    assert retry.application_properties is not None
    assert retry.application_properties[ATTEMPT] == "2"
    assert retry.application_properties[REQUEST_ID] == "msg-1"


async def test_the_outcome_goes_to_the_reply_to_queue() -> None:
    harness = Harness(a_finish)
    await harness.run(FakeReceivedMessage(sample_request_json(), reply_to="hr-outcomes"))
    assert harness.recorder.events[0] == ("send", "hr-outcomes", "demo-hr/msg-1/outcome")


# --- typed input: the message is decoded once, before the stage ------------------------------


async def test_the_bodys_request_id_is_the_identity_of_everything_that_follows() -> None:
    harness = Harness(a_finish)
    await harness.run(FakeReceivedMessage(sample_request_json(request_id="hr-42"), message_id="sb-1"))
    ((_, delivery),) = harness.seen
    assert (delivery.request_id, delivery.correlation_id) == ("hr-42", "hr-42")
    assert harness.recorder.events[0] == ("send", OUTCOMES, "demo-hr/hr-42/outcome")
    assert harness.outcome().request_id == "hr-42"
    assert harness.journal.transitions[0].request_id == "hr-42"


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b"not json at all", "Invalid JSON"),
        (sample_request_json(favourite_colour="blue"), "favourite_colour"),
        (sample_request_json(external_email="not-an-address"), "external_email"),
        (sample_request_json(display_name="x" * 257), "display_name"),
        (sample_request_json(group={"smtp_address": "a@contoso.com", "object_id": "1" * 32}), "exactly one"),
    ],
    ids=["not-json", "unknown-field", "bad-email", "long-display-name", "two-group-refs"],
)
async def test_an_unreadable_request_is_refused_once_before_any_stage_runs(body: bytes, mentions: str) -> None:
    harness = Harness(a_finish)
    await harness.run(FakeReceivedMessage(body))
    assert not harness.seen
    assert harness.recorder.kinds() == ["send", "deadletter", "journal"]
    outcome = harness.outcome()
    assert (outcome.status, outcome.reason) == (OutcomeStatus.FAILED, DeadLetterReason.INVALID_REQUEST)
    assert mentions in outcome.description
    assert "jordan" not in outcome.description.lower() or mentions == "external_email"


async def test_bookkeeping_properties_from_upstream_are_ignored() -> None:
    harness = Harness(a_finish)
    spoofed: dict[str | bytes, Any] = {
        REQUEST_ID.encode(): "someone-else",
        ATTEMPT.encode(): "999",
        FIRST_ATTEMPT_AT.encode(): "garbage",
    }
    await harness.run(FakeReceivedMessage(sample_request_json(), application_properties=spoofed))
    ((_, delivery),) = harness.seen
    assert (delivery.request_id, delivery.attempt, delivery.first_attempt_at) == ("msg-1", 1, NOW)


async def test_the_pipelines_own_retry_keeps_its_attempt() -> None:
    harness = Harness(a_finish)
    own: dict[str | bytes, Any] = {
        REQUEST_ID.encode(): "r-7",
        ATTEMPT.encode(): "3",
        FIRST_ATTEMPT_AT.encode(): NOW.isoformat(),
    }
    body = sample_request_json(request_id="r-7")
    # the MessageId the pipeline derives: scoped by the body's source
    await harness.run(FakeReceivedMessage(body, message_id="demo-hr/r-7/create-contact/3", application_properties=own))
    ((_, delivery),) = harness.seen
    assert (delivery.request_id, delivery.attempt) == ("r-7", 3)


def _retry_of_r7(first_attempt_at: datetime) -> FakeReceivedMessage:
    """create-contact's own retry (attempt 2) of request r-7, whose run began at `first_attempt_at`."""
    own: dict[str | bytes, Any] = {
        REQUEST_ID.encode(): "r-7",
        ATTEMPT.encode(): "2",
        FIRST_ATTEMPT_AT.encode(): first_attempt_at.isoformat(),
    }
    body = sample_request_json(request_id="r-7")
    return FakeReceivedMessage(body, message_id="demo-hr/r-7/create-contact/2", application_properties=own)


def _ended_r7(harness: Harness, at: datetime) -> None:
    harness.journal.transitions.append(
        Transition(
            request_id="r-7",
            stage=StageName.VERIFY_DELIVERY,
            decision=TransitionKind.FINISHED,
            attempt=1,
            outcome_status=OutcomeStatus.SUCCEEDED,
            at=at,
        )
    )


async def test_a_retry_left_behind_by_a_run_that_ended_does_nothing_but_complete() -> None:
    """A delivery scheduled a retry, lost its lock, and its redelivery ended the request: the retry comes
    anyway, maybe past the outcome's duplicate-detection window, and must not act or publish again."""
    harness = Harness(a_finish)
    _ended_r7(harness, NOW - timedelta(minutes=1))
    decision = await harness.run(_retry_of_r7(first_attempt_at=NOW - timedelta(minutes=20)))
    assert decision == Ended(StageName.VERIFY_DELIVERY, OutcomeStatus.SUCCEEDED, NOW - timedelta(minutes=1))
    assert harness.seen == [] and harness.recorder.kinds() == ["complete"]  # nothing sent, nothing journaled


async def test_a_run_that_began_after_an_earlier_outcome_is_handled() -> None:
    """The same request sent again later, or an operator's replay, is a new run: it gets its own outcome."""
    harness = Harness(a_finish)
    _ended_r7(harness, NOW - timedelta(minutes=30))
    assert isinstance(await harness.run(_retry_of_r7(first_attempt_at=NOW - timedelta(minutes=20))), Finish)
    again = Harness(a_finish)
    _ended_r7(again, NOW - timedelta(minutes=1))
    upstream = FakeReceivedMessage(sample_request_json(request_id="r-7"))  # a first attempt: begins now
    assert isinstance(await again.run(upstream), Finish)


async def test_a_journal_that_cannot_be_read_does_not_stop_the_stage() -> None:
    harness = Harness(a_finish)

    async def unreadable(request_id: str) -> list[Transition]:
        raise OSError("storage is down")

    harness.journal.history = unreadable  # type: ignore[method-assign]
    assert isinstance(await harness.run(_retry_of_r7(first_attempt_at=NOW - timedelta(minutes=20))), Finish)


async def test_a_retry_claiming_another_requests_identity_is_not_trusted() -> None:
    harness = Harness(a_finish)
    claimed: dict[str | bytes, Any] = {REQUEST_ID.encode(): "victim", ATTEMPT.encode(): "2"}
    body = sample_request_json(request_id="mine")
    await harness.run(FakeReceivedMessage(body, message_id="victim/create-contact/2", application_properties=claimed))
    ((_, delivery),) = harness.seen
    assert (delivery.request_id, delivery.attempt) == ("mine", 1)


@pytest.mark.parametrize(
    "reply_to",
    ["create-contact", "Add-Member", "verify-delivery/$deadletterqueue", "no spaces allowed", "a" * 300, "q//x"],
)
async def test_an_unusable_reply_to_falls_back_to_the_outcome_queue_with_a_warning(reply_to: str) -> None:
    harness = Harness(a_finish)
    await harness.run(FakeReceivedMessage(sample_request_json(), reply_to=reply_to))
    ((_, delivery),) = harness.seen
    assert delivery.reply_to is None and "ReplyTo" in delivery.warnings[0]
    assert harness.recorder.events[0] == ("send", OUTCOMES, "demo-hr/msg-1/outcome")


async def test_a_reply_to_queue_that_does_not_exist_falls_back_with_a_warning() -> None:
    harness = Harness(a_finish)
    harness.recorder.missing_queues.add("hr-outcomes")
    decision = await harness.run(FakeReceivedMessage(sample_request_json(), reply_to="hr-outcomes"))
    assert harness.recorder.events[:3] == [
        ("send", "hr-outcomes", "demo-hr/msg-1/outcome"),
        ("send", OUTCOMES, "demo-hr/msg-1/outcome"),
        ("complete",),
    ]
    outcome = harness.outcome()
    assert outcome.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS
    assert "'hr-outcomes' does not exist" in outcome.warnings[-1]
    assert isinstance(decision, Finish) and decision.outcome == outcome


async def test_an_unusable_reply_to_is_a_warning_even_on_a_refused_request() -> None:
    harness = Harness(a_finish)
    await harness.run(FakeReceivedMessage(b"not json", reply_to="create-contact"))
    assert harness.recorder.events[0] == ("send", OUTCOMES, "msg-1/outcome")  # no body: no source to scope by
    assert "ReplyTo" in harness.outcome().warnings[0]


@pytest.mark.parametrize("message_id", ["a/b", "with space", "tab\there", "q?x"])
async def test_a_message_id_that_cannot_be_a_request_id_is_refused_with_an_outcome(message_id: str) -> None:
    harness = Harness(a_finish)
    await harness.run(FakeReceivedMessage(sample_request_json(), message_id=message_id))
    assert not harness.seen
    assert harness.outcome().reason == DeadLetterReason.INVALID_REQUEST
    assert "set request_id in the body" in harness.outcome().description


async def test_ids_near_the_service_bus_limit_derive_message_ids_that_fit() -> None:
    harness = Harness(_stage_message_of)
    long_id = "x" * 128
    await harness.run(FakeReceivedMessage(sample_request_json(), message_id=long_id))
    ((_, sent, _),) = harness.recorder.sent
    assert sent.message_id is not None and len(sent.message_id) <= 128
    assert sent.application_properties is not None and sent.application_properties[REQUEST_ID] == long_id


async def test_an_amqp_value_body_that_is_not_text_is_refused() -> None:
    harness = Harness(a_finish)
    await harness.run(FakeReceivedMessage({"a": 1}, body_type=AmqpMessageBodyType.VALUE))
    assert harness.outcome().reason == DeadLetterReason.INVALID_REQUEST
    assert "AMQP value" in harness.outcome().description


# --- failures kept apart ---------------------------------------------------------------------


async def test_a_journal_that_fails_costs_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(a_finish)
    harness.recorder.failing.add("journal")
    decision = await harness.run(FakeReceivedMessage(sample_request_json()))
    assert isinstance(decision, Finish)
    assert harness.recorder.kinds() == ["send", "complete", "journal"]
    assert "could not journal" in caplog.text


async def test_a_failed_settlement_is_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(a_finish)
    harness.recorder.failing.add("complete")
    with caplog.at_level(logging.WARNING):
        decision = await harness.run(FakeReceivedMessage(sample_request_json()))
    assert isinstance(decision, Finish)
    # No abandon, no second (contradicting) outcome: the message simply comes back.
    assert harness.recorder.kinds() == ["send", "complete", "journal"]
    assert "could not settle" in caplog.text


async def test_a_crash_before_the_last_delivery_abandons_for_redelivery() -> None:
    harness = Harness(raises)
    with pytest.raises(RuntimeError, match="a bug"):
        await harness.run(FakeReceivedMessage(sample_request_json(), delivery_count=1))
    assert harness.recorder.events == [("abandon",), ("journal", TransitionKind.CRASHED)]


@pytest.mark.parametrize("delivery_count", [None, 1, 2])
async def test_a_crash_before_the_last_delivery_or_with_no_count_is_never_taken_for_the_last(
    delivery_count: int | None,
) -> None:
    # The Functions host counts deliveries from 1 (AmqpMessageConverter adds 1); extension 1.0.0b2 hands None.
    harness = Harness(raises, max_delivery_count=3)
    with pytest.raises(RuntimeError, match="a bug"):
        await harness.run(FakeReceivedMessage(sample_request_json(), delivery_count=delivery_count))
    assert harness.recorder.kinds() == ["abandon", "journal"]


async def test_a_crash_on_the_last_delivery_dead_letters_with_an_outcome() -> None:
    harness = Harness(raises, max_delivery_count=3)
    decision = await harness.run(FakeReceivedMessage(sample_request_json(), delivery_count=3))
    assert harness.recorder.events == [
        ("send", OUTCOMES, "demo-hr/msg-1/outcome"),
        ("deadletter", "ProcessingFailed"),
        ("journal", TransitionKind.DEAD_LETTERED),
    ]
    assert harness.outcome().reason == DeadLetterReason.PROCESSING_FAILED
    assert "RuntimeError" in harness.outcome().description
    assert decision.outcome.reason == DeadLetterReason.PROCESSING_FAILED  # type: ignore[union-attr]


async def test_a_send_that_fails_is_a_crash_nothing_is_settled_as_done() -> None:
    harness = Harness(a_finish)
    harness.recorder.failing.add("send")
    with pytest.raises(RuntimeError, match="send failed"):
        await harness.run(FakeReceivedMessage(sample_request_json()))
    assert harness.recorder.kinds() == ["send", "abandon", "journal"]


async def test_when_even_the_failure_cannot_be_reported_the_message_is_abandoned() -> None:
    harness = Harness(raises, max_delivery_count=3)
    harness.recorder.failing.add("send")
    with pytest.raises(RuntimeError, match="send failed"):
        await harness.run(FakeReceivedMessage(sample_request_json(), delivery_count=3))
    assert harness.recorder.kinds() == ["send", "abandon"]


def test_sample_request_json_is_a_valid_request() -> None:
    assert OnboardingRequest.model_validate(json.loads(sample_request_json())).source_system == "demo-hr"
