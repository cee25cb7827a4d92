"""The dead-letter sweep's decisions: on the Functions host it is the only guarantee of an outcome for
what Service Bus dead-letters by itself, so it must publish exactly when no one else does, and leave
every dead letter where it is.

Pure logic with hand-written fakes; the path through the SDK, emulator and local host is in
tests/test_one_outcome.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.contracts import DeadLetterReason, OutcomeEvent, OutcomeStatus, StageName
from shared.dead_letters import DeadLetterReporter, DeadLetterSweep
from shared.journal import SqliteJournal, Transition, TransitionKind
from tests.fakes import FakeReceivedMessage, Recorder, RecordingOutbox
from tests.samples import sample_request_json

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OUTCOMES = "onboarding-outcomes"
ENQUEUED = NOW - timedelta(minutes=5)  # when the dead-lettered message was enqueued


@dataclass
class DeadLettered(FakeReceivedMessage):
    dead_letter_reason: str | None = "MaxDeliveryCountExceeded"
    dead_letter_error_description: str | None = None
    enqueued_time_utc: datetime | None = ENQUEUED


class UnreadableJournal(SqliteJournal):
    async def history(self, request_id: str) -> list[Transition]:
        raise OSError("the storage account is unreachable")


def reporter(recorder: Recorder, stage: StageName, journal: SqliteJournal | None) -> DeadLetterReporter:
    return DeadLetterReporter(stage, RecordingOutbox(recorder), OUTCOMES, lambda: NOW, journal)


def transition(
    stage: StageName, kind: TransitionKind, status: OutcomeStatus | None = None, at: datetime = NOW
) -> Transition:
    return Transition(request_id="hr-7", stage=stage, decision=kind, attempt=1, outcome_status=status, at=at)


def request_message(**envelope: object) -> DeadLettered:
    return DeadLettered(sample_request_json(request_id="hr-7"), message_id="sb-1", **envelope)  # type: ignore[arg-type]


async def report_on_create_contact(*history: Transition) -> list[str]:
    """What the create-contact reporter did with a dead-lettered request whose journal holds `history`."""
    journal = SqliteJournal(":memory:")
    for recorded in history:
        await journal.record(recorded)
    recorder = Recorder()
    await reporter(recorder, StageName.CREATE_CONTACT, journal).report(request_message())
    return recorder.kinds()


async def test_a_request_that_already_ended_gets_no_second_outcome() -> None:
    ended = transition(StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED)
    assert await report_on_create_contact(ended) == []


async def test_a_request_that_went_on_to_a_later_stage_is_left_to_it() -> None:
    # create-contact sent add-member's message, then could not settle its own on any delivery: the
    # request is alive, and a Failed outcome now would beat its real outcome in duplicate detection.
    passed_on = transition(StageName.CREATE_CONTACT, TransitionKind.PASSED_ON)
    assert (
        await report_on_create_contact(passed_on, transition(StageName.ADD_MEMBER, TransitionKind.RETRY_SCHEDULED))
        == []
    )


async def test_a_message_seen_twice_publishes_once_even_after_duplicate_detection_forgot() -> None:
    journal = SqliteJournal(":memory:")
    await journal.record(transition(StageName.CREATE_CONTACT, TransitionKind.CRASHED))
    recorder = Recorder()
    dead_letters = reporter(recorder, StageName.CREATE_CONTACT, journal)
    first = await dead_letters.report(request_message())
    again = await dead_letters.report(request_message())  # a later sweep, in another process
    assert first is not None and again is None
    assert recorder.kinds() == ["send"]
    ((queue, message, _),) = recorder.sent
    outcome = OutcomeEvent.model_validate_json(b"".join(message.body))
    assert (queue, message.message_id) == (OUTCOMES, "demo-hr/hr-7/outcome")
    assert (outcome.request_id, outcome.reason) == ("hr-7", DeadLetterReason.MAX_DELIVERY_COUNT_EXCEEDED)
    assert [t.outcome_status for t in await journal.history("hr-7")][-1] is OutcomeStatus.FAILED


async def test_a_replayed_request_gets_its_own_outcome() -> None:
    # The first try ended (Failed) an hour before an operator re-sent the message; the replay then
    # died on every delivery too: what happened before it was enqueued does not count.
    for before in (NOW - timedelta(hours=1), ENQUEUED - timedelta(seconds=1)):
        first_try = transition(StageName.ADD_MEMBER, TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED, before)
        assert await report_on_create_contact(first_try) == ["send"]


async def test_a_journal_that_cannot_be_read_does_not_silence_the_outcome() -> None:
    recorder = Recorder()
    published = await reporter(recorder, StageName.ADD_MEMBER, UnreadableJournal(":memory:")).report(request_message())
    assert published is not None and recorder.kinds() == ["send"]


async def test_a_message_that_cannot_even_be_read_still_gets_an_outcome() -> None:
    # Whatever decode trips over, this function is the last one that can report.
    strange = request_message(application_properties=["not", "a", "map"])
    recorder = Recorder()
    published = await reporter(recorder, StageName.CREATE_CONTACT, None).report(strange)
    assert published is not None
    assert recorder.kinds() == ["send"]
    assert recorder.sent[0][1].message_id == "sb-1/outcome"


async def test_what_the_pipeline_dead_lettered_itself_needs_nothing() -> None:
    recorder = Recorder()
    published = await reporter(recorder, StageName.ADD_MEMBER, None).report(
        request_message(dead_letter_reason="GroupNotFound")
    )
    assert published is None and recorder.kinds() == []


# --- the sweep over every dead-letter sub-queue -----------------------------------------------------


class DeadLetterQueuesHolding:
    """Dead-letter sub-queues as Service Bus holds them, peeked; `unreadable` queues raise."""

    def __init__(self, held: Mapping[str, Sequence[DeadLettered]], unreadable: frozenset[str] = frozenset()) -> None:
        self.held = {queue: list(messages) for queue, messages in held.items()}
        self.unreadable = unreadable

    async def dead_letters(self, queue: str) -> AsyncIterator[DeadLettered]:
        if queue in self.unreadable:
            raise ConnectionError(queue)
        for message in self.held.get(queue, []):
            yield message


def sweep_of(source: DeadLetterQueuesHolding, recorder: Recorder, journal: SqliteJournal | None) -> DeadLetterSweep:
    queues = {"intake-partner": StageName.CREATE_CONTACT, "create-contact": StageName.CREATE_CONTACT}
    return DeadLetterSweep(source, queues, lambda stage: reporter(recorder, stage, journal))


def dead_letter(request_id: str, sequence_number: int, reason: str = "MaxDeliveryCountExceeded") -> DeadLettered:
    body = sample_request_json(request_id=request_id)
    return DeadLettered(body, message_id=request_id, sequence_number=sequence_number, dead_letter_reason=reason)


async def test_a_sweep_reports_each_dead_letter_once_and_settles_nothing() -> None:
    source = DeadLetterQueuesHolding(
        {
            "create-contact": [dead_letter("hr-1", 1), dead_letter("hr-2", 2, "PolicyDenied")],
            "intake-partner": [dead_letter("hr-3", 1)],
        }
    )
    recorder = Recorder()
    sweep = sweep_of(source, recorder, SqliteJournal(":memory:"))
    first = await sweep.run()
    again = await sweep.run()
    assert sorted(d.outcome.request_id for d in first) == ["hr-1", "hr-3"] and again == []
    assert recorder.kinds() == ["send", "send"]  # nothing settled: every dead letter stays for operators


async def test_a_new_process_asks_the_journal_and_publishes_nothing_twice() -> None:
    source = DeadLetterQueuesHolding({"create-contact": [dead_letter("hr-1", 1)]})
    journal, recorder = SqliteJournal(":memory:"), Recorder()
    await sweep_of(source, recorder, journal).run()
    assert await sweep_of(source, recorder, journal).run() == []  # a fresh sweep: no memory but the journal
    assert recorder.kinds() == ["send"]


async def test_a_failed_report_is_tried_again_and_one_queue_does_not_stop_the_others() -> None:
    source = DeadLetterQueuesHolding(
        {"create-contact": [dead_letter("hr-1", 1)]}, unreadable=frozenset({"intake-partner"})
    )
    recorder = Recorder()
    recorder.failing.add("send")
    sweep = sweep_of(source, recorder, None)
    assert await sweep.run() == []
    recorder.failing.clear()
    assert [d.outcome.request_id for d in await sweep.run()] == ["hr-1"]


async def test_without_a_journal_a_process_remembers_only_what_is_still_there() -> None:
    source = DeadLetterQueuesHolding({"create-contact": [dead_letter("hr-1", 1), dead_letter("hr-2", 2)]})
    recorder = Recorder()
    sweep = sweep_of(source, recorder, None)
    await sweep.run()
    source.held["create-contact"] = [dead_letter("hr-2", 2)]  # hr-1 replayed or purged by an operator
    assert await sweep.run() == []
    assert sweep.handled["create-contact"] == {(2, "hr-2")}
