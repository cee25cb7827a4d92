"""The journal in one SQLite file (or in memory), for local runs and tests; with it, the throttle
holds every local host process shares (shared/directory/throttle.py `SharedHolds`).

sqlite3 blocks, so every call runs in a worker thread (asyncio.to_thread) on one connection
opened with check_same_thread=False; a lock keeps those calls one at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from shared.contracts import OutcomeStatus, StageName
from shared.journal.model import Lease, LeaseState, RequestState, Transition, TransitionKind, check_limit
from shared.journal.ports import FAILED, LATEST_FAILURES, Tally, Where
from shared.journal.setting import MEMORY

T = TypeVar("T")


# (request_id, row_key) is the primary key: row_key = Transition.key (time, stage, attempt, kind), the
# same identity as Table Storage's RowKey, so re-recording a transition replaces its row.
# `at` is ISO 8601 in UTC with microseconds: it sorts as text.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS transitions (
    request_id     TEXT NOT NULL,
    row_key        TEXT NOT NULL,
    stage          TEXT NOT NULL,
    decision       TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    cause          TEXT,
    outcome_status TEXT,
    at             TEXT NOT NULL,
    PRIMARY KEY (request_id, row_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS transitions_by_time ON transitions (at);
CREATE TABLE IF NOT EXISTS leases (
    key     TEXT PRIMARY KEY,
    state   TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    body    TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_by_end ON leases (state, ends_at);
CREATE TABLE IF NOT EXISTS throttle_holds (
    face  TEXT PRIMARY KEY,
    until REAL NOT NULL
) WITHOUT ROWID;
"""
# A lease is kept whole as its JSON (Lease.model_dump_json); state and ends_at are columns to query and to
# make the settling update conditional.
_KEEP_LEASE = "INSERT OR REPLACE INTO leases (key, state, ends_at, body) VALUES (?, ?, ?, ?)"
_LEASE = "SELECT body FROM leases WHERE key = ?"
_SETTLE_LEASE = "UPDATE leases SET state = ?, body = ? WHERE key = ? AND state = ? AND ends_at = ?"
_ACTIVE_LEASES = "SELECT body FROM leases WHERE state = ? AND ends_at < ? ORDER BY ends_at, key"

# Plain literals (no f-strings): the queries take values only through placeholders.
_INSERT = """
    INSERT OR REPLACE INTO transitions (request_id, row_key, stage, decision, attempt, cause, outcome_status, at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_HISTORY = """
    SELECT request_id, row_key, stage, decision, attempt, cause, outcome_status, at
    FROM transitions WHERE request_id = ? ORDER BY row_key
"""
# A throttle hold every instance shares (shared/directory/throttle.py): the later one is kept.
_EXTEND_HOLD = """
    INSERT INTO throttle_holds (face, until) VALUES (?, ?)
    ON CONFLICT (face) DO UPDATE SET until = max(until, excluded.until)
"""
_HOLDS = "SELECT face, until FROM throttle_holds"
# The latest row per request is the one with the greatest row_key (keys start with the time).
_SUMMARY = """
    SELECT t.request_id, t.row_key, t.stage, t.decision, t.attempt, t.cause, t.outcome_status, t.at, counts.n
    FROM transitions AS t
    JOIN (SELECT request_id, MAX(row_key) AS last_key, COUNT(*) AS n FROM transitions GROUP BY request_id) AS counts
      ON t.request_id = counts.request_id AND t.row_key = counts.last_key
    ORDER BY t.row_key DESC, t.request_id
    LIMIT ?
"""
# The counts: each request's latest transition at or after a time (which is its latest of all: keys,
# like `at`, start with the time), counted by where it left the request. SQLite fills the bare
# columns from the row holding MAX(row_key) (https://sqlite.org/lang_select.html#bare_columns_in_an_aggregate_query),
# so the inner query is one row per request without a self-join, and only the counts reach Python.
_TALLY = """
    SELECT stage, decision, outcome_status, COUNT(*) FROM (
        SELECT MAX(row_key), stage, decision, outcome_status FROM transitions WHERE at >= ? GROUP BY request_id
    )
    GROUP BY stage, decision, outcome_status
"""
# The newest requests among them whose latest transition is a failure (`ports.FAILED`: two kinds).
_FAILED_SINCE = """
    SELECT request_id, last_key, stage, decision, attempt, cause, outcome_status, at FROM (
        SELECT request_id, MAX(row_key) AS last_key, stage, decision, attempt, cause, outcome_status, at
        FROM transitions WHERE at >= ? GROUP BY request_id
    )
    WHERE decision IN (?, ?)
    ORDER BY last_key DESC, request_id DESC
    LIMIT ?
"""


class SqliteJournal:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if self.path != MEMORY:
                # WAL: the CLI can read while the host writes.
                self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA busy_timeout=5000")
            self._connection.executescript(_SCHEMA)

    async def record(self, transition: Transition) -> None:
        row = (
            transition.request_id,
            transition.key,
            transition.stage.value,
            transition.decision.value,
            transition.attempt,
            transition.cause,
            transition.outcome_status.value if transition.outcome_status else None,
            _iso(transition.at),
        )
        await self._run(lambda c: c.execute(_INSERT, row))

    async def history(self, request_id: str) -> list[Transition]:
        rows = await self._run(lambda c: c.execute(_HISTORY, (request_id,)).fetchall())
        return [_transition(row) for row in rows]

    async def summary(self, limit: int = 50) -> list[RequestState]:
        check_limit(limit)
        rows = await self._run(lambda c: c.execute(_SUMMARY, (limit,)).fetchall())
        return [RequestState.of(_transition(row[:-1]), attempts=row[-1]) for row in rows]

    async def tally(self, since: datetime, *, failures: int = LATEST_FAILURES) -> Tally:
        cutoff = _iso(since)
        failed = sorted(kind.value for kind in FAILED)  # the two placeholders of _FAILED_SINCE

        def read(c: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            c.execute("BEGIN")  # one read transaction: the counts and the failures from one snapshot
            try:
                counted = c.execute(_TALLY, (cutoff,)).fetchall()
                latest = c.execute(_FAILED_SINCE, (cutoff, *failed, failures)).fetchall() if failures > 0 else []
            finally:
                c.execute("COMMIT")
            return counted, latest

        counted, latest = await self._run(read)
        counts = {
            Where(StageName(stage), TransitionKind(decision), OutcomeStatus(status) if status else None): n
            for stage, decision, status, n in counted
        }
        return Tally(since, counts, [_transition(row) for row in latest])

    async def lease(self, key: str) -> Lease | None:
        row = await self._run(lambda c: c.execute(_LEASE, (key,)).fetchone())
        return None if row is None else Lease.model_validate_json(row[0])

    async def keep_lease(self, lease: Lease) -> None:
        row = (lease.key, lease.state.value, _iso(lease.ends_at), lease.model_dump_json())

        def keep(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")  # read and write in one transaction
            try:
                found = c.execute(_LEASE, (lease.key,)).fetchone()
                if not lease.settled_as(None if found is None else Lease.model_validate_json(found[0])):
                    c.execute(_KEEP_LEASE, row)
            finally:
                c.execute("COMMIT")

        await self._run(keep)

    async def settle_lease(self, key: str, ends_at: datetime, state: LeaseState) -> bool:
        def settle(c: sqlite3.Connection) -> bool:
            c.execute("BEGIN IMMEDIATE")  # read and conditional write in one transaction
            try:
                row = c.execute(_LEASE, (key,)).fetchone()
                if row is None:
                    return False
                settled = Lease.model_validate_json(row[0]).model_copy(update={"state": state})
                arguments = (state.value, settled.model_dump_json(), key, LeaseState.ACTIVE.value, _iso(ends_at))
                return c.execute(_SETTLE_LEASE, arguments).rowcount == 1
            finally:
                c.execute("COMMIT")

        return await self._run(settle)

    async def leases(self, *, ending_before: datetime | None = None) -> list[Lease]:
        before = _iso(ending_before) if ending_before is not None else "9999"  # ISO times sort as text
        rows = await self._run(lambda c: c.execute(_ACTIVE_LEASES, (LeaseState.ACTIVE.value, before)).fetchall())
        return [Lease.model_validate_json(body) for (body,) in rows]

    async def read_holds(self) -> dict[str, float]:
        rows = await self._run(lambda c: c.execute(_HOLDS).fetchall())
        return {face: until for face, until in rows}

    async def extend_hold(self, face: str, until: float) -> None:
        await self._run(lambda c: c.execute(_EXTEND_HOLD, (face, until)))

    async def close(self) -> None:
        await self._run(lambda c: c.close())

    async def _run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return call(self._connection)

        return await asyncio.to_thread(locked)


def _iso(at: datetime) -> str:
    """As `at` is stored: ISO 8601 in UTC to the microsecond, which sorts as text."""
    if at.tzinfo is None:
        raise ValueError(f"a journal time must be timezone-aware, not {at!r}")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _transition(row: tuple[Any, ...]) -> Transition:
    request_id, _key, stage, decision, attempt, cause, outcome_status, at = row
    return Transition.as_stored(
        request_id=request_id,
        stage=stage,
        decision=decision,
        attempt=attempt,
        cause=cause,
        outcome_status=outcome_status,
        at=datetime.fromisoformat(at),
    )
