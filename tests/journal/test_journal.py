"""One contract for both journals: SQLite (a file in tmp_path) and Table Storage (Azurite)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.data.tables.aio import TableServiceClient
from pydantic import ValidationError

from shared.contracts import OutcomeStatus, StageName
from shared.directory.throttle import SharedHolds
from shared.journal import (
    Journal,
    JournalSettingError,
    SqliteJournal,
    Transition,
    TransitionKind,
    open_journal,
)
from shared.journal.setting import MEMORY
from shared.journal.table_storage import TableStorageJournal
from shared.logs import request_context
from tests.fixtures.azurite import Azurite

T0 = datetime(2026, 11, 23, 9, 0, 0, 123456, tzinfo=UTC)


def transition(
    request_id: str,
    seconds: float,
    stage: StageName = StageName.CREATE_CONTACT,
    decision: TransitionKind = TransitionKind.PASSED_ON,
    attempt: int = 1,
    cause: str | None = None,
    outcome_status: OutcomeStatus | None = None,
) -> Transition:
    return Transition(
        request_id=request_id,
        stage=stage,
        decision=decision,
        attempt=attempt,
        cause=cause,
        outcome_status=outcome_status,
        at=T0 + timedelta(seconds=seconds),
    )


async def test_history_is_in_time_order_with_every_field(journal: Journal) -> None:
    retry = transition("hr-1", 5, StageName.ADD_MEMBER, TransitionKind.RETRY_SCHEDULED, 1, cause="Throttled (429)")
    first = transition("hr-1", 0)
    finished = transition(
        "hr-1",
        65,
        StageName.VERIFY_DELIVERY,
        TransitionKind.FINISHED,
        1,
        cause="Succeeded",
        outcome_status=OutcomeStatus.SUCCEEDED,
    )
    second_try = transition("hr-1", 35, StageName.ADD_MEMBER, TransitionKind.PASSED_ON, 2)
    for recorded in (retry, finished, first, second_try):  # out of order on purpose
        await journal.record(recorded)

    assert await journal.history("hr-1") == [first, retry, second_try, finished]


async def test_history_keeps_requests_apart_and_is_empty_for_an_unknown_id(journal: Journal) -> None:
    await journal.record(transition("hr-1", 0))
    await journal.record(transition("hr-10", 1))

    assert [t.request_id for t in await journal.history("hr-1")] == ["hr-1"]
    assert await journal.history("hr-unknown") == []


async def test_recording_the_same_transition_again_is_idempotent(journal: Journal) -> None:
    crash = transition("hr-2", 0, StageName.ADD_MEMBER, TransitionKind.CRASHED, 3, cause="KeyError")
    await journal.record(crash)
    await journal.record(crash)
    assert await journal.history("hr-2") == [crash]

    # Same key (time, stage, attempt, kind): the last write wins, also for a cause it no longer has.
    corrected = crash.model_copy(update={"cause": None})
    await journal.record(corrected)
    assert await journal.history("hr-2") == [corrected]
    (state,) = await journal.summary()
    assert state.attempts == 1


async def test_summary_is_the_latest_transition_per_request_newest_first(journal: Journal) -> None:
    await journal.record(transition("hr-a", 0))
    await journal.record(transition("hr-a", 10, StageName.ADD_MEMBER, TransitionKind.RETRY_SCHEDULED, cause="Lag"))
    await journal.record(
        transition(
            "hr-b",
            5,
            StageName.CREATE_CONTACT,
            TransitionKind.DEAD_LETTERED,
            cause="GroupNotFound: no group <g***@contoso.com>",
            outcome_status=OutcomeStatus.FAILED,
        )
    )
    await journal.record(transition("hr-c", 20, StageName.ADD_MEMBER, TransitionKind.CRASHED, 2, cause="TimeoutError"))

    states = await journal.summary(limit=10)

    assert [(s.request_id, s.last_stage, s.last_decision, s.attempts) for s in states] == [
        ("hr-c", StageName.ADD_MEMBER, TransitionKind.CRASHED, 1),
        ("hr-a", StageName.ADD_MEMBER, TransitionKind.RETRY_SCHEDULED, 2),
        ("hr-b", StageName.CREATE_CONTACT, TransitionKind.DEAD_LETTERED, 1),
    ]
    assert states[1].last_at == T0 + timedelta(seconds=10)
    assert states[2].last_outcome_status is OutcomeStatus.FAILED
    assert [s.request_id for s in await journal.summary(limit=2)] == ["hr-c", "hr-a"]


async def test_summary_of_an_empty_journal_is_empty_and_a_limit_below_one_is_refused(journal: Journal) -> None:
    assert await journal.summary() == []
    with pytest.raises(ValueError, match="at least 1"):
        await journal.summary(limit=0)


async def test_times_come_back_in_utc_to_the_microsecond(journal: Journal) -> None:
    local = datetime(2026, 11, 23, 10, 0, 0, 1, tzinfo=timezone(timedelta(hours=1)))
    await journal.record(
        Transition(
            request_id="hr-3", stage=StageName.CREATE_CONTACT, decision=TransitionKind.PASSED_ON, attempt=1, at=local
        )
    )

    (stored,) = await journal.history("hr-3")
    assert stored.at == local
    assert stored.at.utcoffset() == timedelta(0)
    assert stored.at.microsecond == 1


# --- the model --------------------------------------------------------------------------------


async def test_a_cause_shows_the_requests_group_and_keeps_it_when_read_without_a_request(journal: Journal) -> None:
    cause = "GroupNotFound: No group <partners@contoso.com>; not jordan.reyes@fabrikam.example"
    with request_context("hr-5", "hr-5", shown=["partners@contoso.com"]):
        await journal.record(transition("hr-5", 0, cause=cause))
    (stored,) = await journal.history("hr-5")  # as `onboard status` reads it: no request in hand
    assert stored.cause == "GroupNotFound: No group <partners@contoso.com>; not j***@fabrikam.example"
    (state,) = [s for s in await journal.summary() if s.request_id == "hr-5"]
    assert state.last_cause == stored.cause


def test_a_cause_never_keeps_an_email_address() -> None:
    masked = transition("hr-4", 0, cause="DirectoryRejected: jordan.reyes@fabrikam.example is in use")
    assert masked.cause == "DirectoryRejected: j***@fabrikam.example is in use"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("attempt", 0),
        ("request_id", "x" * 257),  # longer than any MessageId Service Bus accepts, with room
        ("request_id", ""),
        ("at", datetime(2026, 11, 23, 9, 0)),  # naive: no way to tell when it was
        ("cause", "x" * 2001),
    ],
)
def test_a_malformed_transition_is_refused(field: str, value: object) -> None:
    fields: dict[str, object] = {
        "request_id": "hr-5",
        "stage": "create-contact",
        "decision": "passed-on",
        "attempt": 1,
        "at": T0,
    }
    fields[field] = value
    with pytest.raises(ValidationError, match=field):
        Transition.model_validate(fields)


def test_only_an_ending_transition_carries_an_outcome_status() -> None:
    with pytest.raises(ValidationError, match="outcome_status"):
        transition("hr-6", 0, decision=TransitionKind.RETRY_SCHEDULED, outcome_status=OutcomeStatus.FAILED)


# --- the setting ------------------------------------------------------------------------------


async def test_no_setting_means_no_journal() -> None:
    assert open_journal(None) is None
    assert open_journal("  ") is None


async def test_sqlite_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = tmp_path / "absolute.db"
    for setting, path in [
        ("sqlite::memory:", MEMORY),
        (f"sqlite://{absolute}", str(absolute)),  # sqlite:///tmp/…: three slashes, as in file URLs
        ("sqlite:relative/journal.db", "relative/journal.db"),
    ]:
        opened = open_journal(setting)
        assert isinstance(opened, SqliteJournal), setting
        assert opened.path == path
        await opened.record(transition("hr-7", 0))
        await opened.close()
    assert absolute.exists()
    assert (tmp_path / "relative" / "journal.db").exists()


async def test_an_endpoint_setting_uses_the_given_token_credential() -> None:
    from standins.tenant_sandbox.credential import FullRightsCredential

    opened = open_journal("https://onboarding.table.core.windows.net/Journal", credential=FullRightsCredential("t"))
    assert isinstance(opened, TableStorageJournal)
    assert opened.table_name == "Journal"
    assert opened.endpoint == "https://onboarding.table.core.windows.net"
    await opened.close()  # no request was made: nothing reaches the network


SECRET = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LWxlYWs="


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("postgres://db/journal", "unknown form"),
        (f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={SECRET}", "prefix tables:TableName="),
        ("sqlite:", "needs a file path"),
        ("sqlite://host/journal.db", "takes no host"),
        ("http://onboarding.table.core.windows.net/Journal", "use https://"),
        ("https://onboarding.table.core.windows.net", "names no table"),
        ("https://onboarding.table.core.windows.net/journal-1", "table name is 3 to 57 letters or digits"),
        ("https://onboarding.table.core.windows.net/Journal?sv=2024&sig=abc", "takes no query"),
        (f"tables:AccountName=a;AccountKey={SECRET}", "exactly one TableName"),
        (f"tables:TableName=j;AccountName=a;AccountKey={SECRET}", "table name is 3 to 57"),
        (f"tables:TableName=Journal;Nonsense={SECRET}", "connection string is not usable"),
    ],
)
def test_a_bad_setting_names_the_problem_and_never_echoes_a_key(setting: str, message: str) -> None:
    with pytest.raises(JournalSettingError, match=message) as raised:
        open_journal(setting)
    assert SECRET not in str(raised.value)


async def test_a_refused_message_id_that_is_no_valid_key_is_still_journalled(journal: Journal) -> None:
    """A refusal (InvalidRequest) is journalled under the MessageId Service Bus accepted, which may hold
    characters Table Storage forbids in keys (/ \\ # ? and control characters)."""
    hostile = "a/b\\c#d?e\x01f\x7fg%2F"
    refused = transition(hostile, 0, decision=TransitionKind.DEAD_LETTERED, outcome_status=OutcomeStatus.FAILED)
    await journal.record(refused)
    await journal.record(transition("a%2Fb", 1))  # a valid id that looks like an escaped one stays apart

    assert await journal.history(hostile) == [refused]
    assert [state.request_id for state in await journal.summary()] == ["a%2Fb", hostile]


@pytest.mark.stack
async def test_reading_table_storage_never_creates_the_table(azurite: Azurite) -> None:
    """`onboard status` reads as an operator with Storage Table Data Reader, which may not create a
    table: reading a table that does not exist finds nothing and leaves it missing; a write creates it."""
    table = "journalreadfirst"
    opened = open_journal(f"tables:TableName={table};{azurite.connection_string}")
    assert opened is not None
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:

        async def table_exists() -> bool:
            return [t.name async for t in service.query_tables("TableName eq @name", parameters={"name": table})] != []

        try:
            assert await opened.history("hr-1") == []
            assert await opened.summary() == []
            assert (await opened.tally(T0)).total == 0
            assert not await table_exists()
            await opened.record(transition("hr-1", 0))
            assert await table_exists()
            assert await opened.history("hr-1") == [transition("hr-1", 0)]
        finally:
            await opened.close()


async def test_throttle_holds_keep_the_later_one_and_are_no_request(journal: Journal) -> None:
    """Every instance's throttle gate shares its holds through the journal's store (shared/directory/throttle.py):
    a hold is only ever extended, concurrent writers end with the latest, and the holds never show as a request."""
    assert isinstance(journal, SharedHolds)
    assert await journal.read_holds() == {}
    await journal.extend_hold("exchange", 1_000.5)
    await journal.extend_hold("exchange", 900.0)  # earlier: the later hold stays
    await asyncio.gather(*(journal.extend_hold("graph", 950.0 + n) for n in range(5)))
    assert await journal.read_holds() == {"exchange": 1_000.5, "graph": 954.0}

    await journal.record(transition("hr-1", 0))
    assert [state.request_id for state in await journal.summary()] == ["hr-1"]
    assert (await journal.tally(T0 - timedelta(days=1))).total == 1
