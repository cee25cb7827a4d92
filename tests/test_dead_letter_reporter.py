"""The dead-letter functions' decisions: on the Functions host they are the only guarantee of an outcome
for what Service Bus dead-letters by itself, so they must publish exactly when no one else does.

Pure logic with hand-written fakes; the path through the SDK, emulator and local host is in
tests/test_one_outcome.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.contracts import DeadLetterReason, OutcomeEvent, OutcomeStatus, StageName
from shared.dead_letters import DeadLetterReporter
from shared.journal import SqliteJournal, Transition, TransitionKind
from tests.fakes import FakeReceivedMessage, Recorder, RecordingActions, RecordingOutbox
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
    await reporter(recorder, StageName.CREATE_CONTACT, journal).run(request_message(), RecordingActions(recorder))
    return recorder.kinds()


async def test_a_request_that_already_ended_gets_no_second_outcome() -> None:
    ended = transition(StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED)
    assert await report_on_create_contact(ended) == ["defer"]


async def test_a_request_that_went_on_to_a_later_stage_is_left_to_it() -> None:
    # create-contact sent add-member's message, then could not settle its own on any delivery: the
    # request is alive, and a Failed outcome now would beat its real outcome in duplicate detection.
    passed_on = transition(StageName.CREATE_CONTACT, TransitionKind.PASSED_ON)
    assert await report_on_create_contact(
        passed_on, transition(StageName.ADD_MEMBER, TransitionKind.RETRY_SCHEDULED)
    ) == ["defer"]


async def test_a_message_seen_twice_publishes_once_even_after_duplicate_detection_forgot() -> None:
    journal = SqliteJournal(":memory:")
    await journal.record(transition(StageName.CREATE_CONTACT, TransitionKind.CRASHED))
    recorder = Recorder()
    dead_letters = reporter(recorder, StageName.CREATE_CONTACT, journal)
    first = await dead_letters.run(request_message(), RecordingActions(recorder))
    again = await dead_letters.run(request_message(), RecordingActions(recorder))  # its deferral was lost
    assert first is not None and again is None
    assert recorder.kinds() == ["send", "defer", "defer"]
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
        assert (await report_on_create_contact(first_try))[:2] == ["send", "defer"]


async def test_a_journal_that_cannot_be_read_does_not_silence_the_outcome() -> None:
    recorder = Recorder()
    published = await reporter(recorder, StageName.ADD_MEMBER, UnreadableJournal(":memory:")).run(
        request_message(), RecordingActions(recorder)
    )
    assert published is not None and recorder.kinds()[:2] == ["send", "defer"]


async def test_a_message_that_cannot_even_be_read_still_gets_an_outcome() -> None:
    # Whatever decode trips over, this function is the last one that can report.
    strange = request_message(application_properties=["not", "a", "map"])
    recorder = Recorder()
    published = await reporter(recorder, StageName.CREATE_CONTACT, None).run(strange, RecordingActions(recorder))
    assert published is not None
    assert recorder.kinds() == ["send", "defer"]
    assert recorder.sent[0][1].message_id == "sb-1/outcome"


async def test_what_the_pipeline_dead_lettered_itself_is_only_deferred() -> None:
    recorder = Recorder()
    published = await reporter(recorder, StageName.ADD_MEMBER, None).run(
        request_message(dead_letter_reason="GroupNotFound"), RecordingActions(recorder)
    )
    assert published is None and recorder.kinds() == ["defer"]
