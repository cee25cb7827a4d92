"""The journal in one SQLite file (or in memory), for local runs and tests; with it, the throttle
holds every local host process shares (shared/directory/throttle.py `SharedHolds`).

sqlite3 blocks, so every call runs in a worker thread (asyncio.to_thread) on one connection
opened with check_same_thread=False; a lock keeps those calls one at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from shared.contracts import DriftFinding, OutcomeStatus, StageName
from shared.drift.model import Membership, MembershipState, Sweep, SweepCounts
from shared.drift.roster import as_checked, as_ended, as_renamed, is_drifting, was_repaired
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
CREATE TABLE IF NOT EXISTS roster (
    key            TEXT PRIMARY KEY,
    state          TEXT NOT NULL,
    checked_period TEXT,
    drifting       INTEGER NOT NULL,
    repaired       INTEGER NOT NULL,
    drifting_since TEXT,
    body           TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS roster_by_state ON roster (state, key);
CREATE TABLE IF NOT EXISTS sweeps (
    period TEXT PRIMARY KEY,
    body   TEXT NOT NULL
) WITHOUT ROWID;
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
# The drift watch's roster (shared/drift/model.py), kept like leases: the membership whole as JSON, and the
# columns a sweep pages by (state, key), a check's condition (checked_period) and the counts read.
_KEEP_MEMBERSHIP = """
    INSERT OR REPLACE INTO roster (key, state, checked_period, drifting, repaired, drifting_since, body)
    VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_MEMBERSHIP = "SELECT body FROM roster WHERE key = ?"
_MEMBERSHIPS = "SELECT body FROM roster WHERE state = ? AND key > ? ORDER BY key LIMIT ?"
_CHANGE_ACTIVE_MEMBERSHIP = "UPDATE roster SET state = ?, body = ? WHERE key = ? AND state = ?"
# Once per period: the condition is in the one UPDATE, so two checks of one membership cannot both record.
_RECORD_CHECK = """
    UPDATE roster SET checked_period = ?, drifting = ?, repaired = ?, drifting_since = ?, body = ?
    WHERE key = ? AND state = ? AND (checked_period IS NULL OR checked_period < ?)
"""
_DRIFTING = "SELECT body FROM roster WHERE state = ? AND drifting = 1 ORDER BY drifting_since, key"
_ROSTER_COUNTS = """
    SELECT COUNT(*), COALESCE(SUM(checked_period = ?), 0), COALESCE(SUM(drifting), 0), COALESCE(SUM(repaired), 0)
    FROM roster WHERE state = ?
"""
_KEEP_SWEEP = "INSERT OR REPLACE INTO sweeps (period, body) VALUES (?, ?)"
_SWEEP = "SELECT body FROM sweeps WHERE period = ?"
_LATEST_SWEEP = "SELECT body FROM sweeps ORDER BY period DESC LIMIT 1"

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

    async def membership(self, key: str) -> Membership | None:
        row = await self._run(lambda c: c.execute(_MEMBERSHIP, (key,)).fetchone())
        return None if row is None else Membership.model_validate_json(row[0])

    async def keep_membership(self, membership: Membership) -> None:
        await self._run(lambda c: c.execute(_KEEP_MEMBERSHIP, _membership_row(membership)))

    async def end_membership(self, key: str, at: datetime) -> bool:
        return await self._change_active(key, lambda membership: as_ended(membership, at))

    async def rename_membership(self, key: str, display_name: str, at: datetime) -> bool:
        return await self._change_active(key, lambda membership: as_renamed(membership, display_name, at))

    async def _change_active(self, key: str, change: Callable[[Membership], Membership]) -> bool:
        """Write `change` of the membership if it is active; True when it was."""

        def changed(c: sqlite3.Connection) -> bool:
            c.execute("BEGIN IMMEDIATE")  # read and conditional write in one transaction
            try:
                row = c.execute(_MEMBERSHIP, (key,)).fetchone()
                if row is None:
                    return False
                new = change(Membership.model_validate_json(row[0]))
                arguments = (new.state.value, new.model_dump_json(), key, MembershipState.ACTIVE.value)
                return c.execute(_CHANGE_ACTIVE_MEMBERSHIP, arguments).rowcount == 1
            finally:
                c.execute("COMMIT")

        return await self._run(changed)

    async def memberships(self, *, after: str | None, limit: int) -> list[Membership]:
        arguments = (MembershipState.ACTIVE.value, after or "", limit)  # "" sorts before every key
        rows = await self._run(lambda c: c.execute(_MEMBERSHIPS, arguments).fetchall())
        return [Membership.model_validate_json(body) for (body,) in rows]

    async def record_check(
        self, key: str, period: str, findings: Sequence[DriftFinding], at: datetime
    ) -> Membership | None:
        def record(c: sqlite3.Connection) -> Membership | None:
            c.execute("BEGIN IMMEDIATE")  # the new body from the one read, written on the UPDATE's condition
            try:
                row = c.execute(_MEMBERSHIP, (key,)).fetchone()
                if row is None:
                    return None
                checked = as_checked(Membership.model_validate_json(row[0]), period, findings, at)
                _, _, checked_period, drifting, repaired, since, body = _membership_row(checked)
                arguments = (checked_period, drifting, repaired, since, body, key, MembershipState.ACTIVE.value, period)
                return checked if c.execute(_RECORD_CHECK, arguments).rowcount == 1 else None
            finally:
                c.execute("COMMIT")

        return await self._run(record)

    async def drifting(self) -> list[Membership]:
        rows = await self._run(lambda c: c.execute(_DRIFTING, (MembershipState.ACTIVE.value,)).fetchall())
        return [Membership.model_validate_json(body) for (body,) in rows]

    async def sweep(self, period: str) -> Sweep | None:
        row = await self._run(lambda c: c.execute(_SWEEP, (period,)).fetchone())
        return None if row is None else Sweep.model_validate_json(row[0])

    async def keep_sweep(self, sweep: Sweep) -> None:
        await self._run(lambda c: c.execute(_KEEP_SWEEP, (sweep.period, sweep.model_dump_json())))

    async def latest_sweep(self) -> Sweep | None:
        row = await self._run(lambda c: c.execute(_LATEST_SWEEP).fetchone())
        return None if row is None else Sweep.model_validate_json(row[0])

    async def counts(self, period: str | None) -> SweepCounts:
        arguments = (period or "", MembershipState.ACTIVE.value)

        def read(c: sqlite3.Connection) -> tuple[Any, Any]:
            c.execute("BEGIN")  # the sweep and the counts from one snapshot
            try:
                sweep = c.execute(_SWEEP, (period,)).fetchone() if period else None
                return sweep, c.execute(_ROSTER_COUNTS, arguments).fetchone()
            finally:
                c.execute("COMMIT")

        sweep, (active, checked, drifting, repaired) = await self._run(read)
        return SweepCounts(
            sweep=None if sweep is None else Sweep.model_validate_json(sweep[0]),
            active=active,
            checked=checked,
            drifting=drifting,
            repaired=repaired,
        )

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


def _membership_row(membership: Membership) -> tuple[str, str, str | None, int, int, str | None, str]:
    """The roster row: key, state, checked_period, drifting, repaired, drifting_since, body."""
    since = membership.drifting_since
    return (
        membership.key,
        membership.state.value,
        membership.checked_period,
        int(is_drifting(membership)),
        int(was_repaired(membership)),
        None if since is None else _iso(since),
        membership.model_dump_json(),
    )


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
