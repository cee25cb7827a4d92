"""The journal as the app and the CLI see it; adapters: sqlite.py (local), table_storage.py (Azure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol, runtime_checkable

from shared.contracts import OutcomeStatus, StageName
from shared.journal.model import Lease, LeaseState, RequestState, Transition, TransitionKind

# A request whose latest transition is one of these has failed (or crashed and waits for redelivery).
FAILED = frozenset({TransitionKind.DEAD_LETTERED, TransitionKind.CRASHED})
LATEST_FAILURES = 5


class Where(NamedTuple):
    """Where a request's latest transition left it."""

    stage: StageName
    decision: TransitionKind
    outcome_status: OutcomeStatus | None


@dataclass(frozen=True)
class Tally:
    """Every request whose latest transition is at or after `since`, counted by where it stands,
    and the newest of them that failed (`FAILED`), newest first and at most a few."""

    since: datetime
    counts: Mapping[Where, int]
    latest_failures: Sequence[Transition]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Journal(Protocol):
    async def record(self, transition: Transition) -> None:
        """Store one transition; the same request id and `Transition.key` again replaces it (idempotent)."""
        ...

    async def history(self, request_id: str) -> list[Transition]:
        """Every transition of one request, oldest first (by `Transition.key`); [] for an unknown id."""
        ...

    async def summary(self, limit: int = 50) -> list[RequestState]:
        """The latest transition of each request, newest first, at most `limit` requests."""
        ...

    async def tally(self, since: datetime, *, failures: int = LATEST_FAILURES) -> Tally:
        """Count every request whose latest transition is at or after `since` (aware), however many:
        aggregated while reading, so memory does not grow with the requests; at most `failures`
        failed ones come back in full."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class LeaseBook(Protocol):
    """Where leases are kept (docs/leases.md): beside the journal, in the same store. Unlike a transition, a
    lease is the truth the wake-ups act on, so a write that fails raises, and the stage runs again."""

    async def lease(self, key: str) -> Lease | None:
        """The lease of one person and group, whatever its state; None when there never was one."""
        ...

    async def keep_lease(self, lease: Lease) -> None:
        """Write the lease whole (the latest onboarding's end wins, also over an expired or ended one), except
        over this very lease settled already (the same onboarding again, redelivered: Lease.settled_as)."""
        ...

    async def settle_lease(self, key: str, ends_at: datetime, state: LeaseState) -> bool:
        """Move the lease from active to `state`, only if it is still active and still ends at `ends_at`
        (a renewal in between wins); True when this call moved it."""
        ...

    async def leases(self, *, ending_before: datetime | None = None) -> list[Lease]:
        """The active leases, soonest end first; only those ending before `ending_before` when given."""
        ...
