"""What the drift watch keeps and passes around (docs/drift.md).

The roster holds one Membership per person and group the app onboarded and has not offboarded: the
list a sweep re-checks. It is the truth a message of queue `drift` is read against (the queue is
outside input: a message only says "look now at these keys"). Its key sorts by group, so a page of the
roster is a run of people sharing groups, and one group's reads serve all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Protocol, runtime_checkable

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from shared.addresses import normal_address

# The drift event is a published contract, so it and its parts live with the others (shared/contracts.py).
from shared.contracts import DriftFinding, Recipient, ResolvedGroup

# "<group id>:<digest of the address>": sorts by group; no address in a key (a digest, as lease keys).
MEMBERSHIP_KEY_PATTERN = r"^[0-9a-z-]{1,64}:[0-9a-f]{32}$"
MembershipKey = Annotated[str, StringConstraints(pattern=MEMBERSHIP_KEY_PATTERN)]
# A sweep's period: when it began, compact (20261207T000000Z). One check per person per period.
PeriodId = Annotated[str, StringConstraints(pattern=r"^\d{8}T\d{6}Z$")]


def membership_key(external_email: str, group_id: str) -> str:
    """One roster entry per person and group, however the address is spelt."""
    digest = hashlib.sha256(f"{normal_address(external_email)}\n{group_id.lower()}".encode()).hexdigest()[:32]
    return f"{group_id.lower()}:{digest}"


def period_id(started: datetime) -> str:
    return f"{started.astimezone(UTC):%Y%m%dT%H%M%SZ}"


class MembershipState(StrEnum):
    ACTIVE = "active"  # onboarded and not offboarded (nor expired): the sweep checks it
    OFFBOARDED = "offboarded"  # an offboard (or a lease's end) removed it: history, never checked


class Membership(BaseModel):
    """One person in one group, as the onboarding that verified it left it, and what sweeps found since."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: MembershipKey
    external_email: str = Field(min_length=3, max_length=320)
    display_name: str = Field(min_length=1, max_length=256)
    group: ResolvedGroup
    recipient: Recipient
    allow_external_senders: bool  # the onboarding asked that the person can mail the group
    source_system: str = Field(min_length=1, max_length=64)
    request_id: str = Field(min_length=1, max_length=256)  # the onboarding that verified it (the latest)
    correlation_id: str = Field(min_length=1, max_length=256)
    reply_to: str | None = Field(default=None, max_length=260)  # where its drift events go
    state: MembershipState = MembershipState.ACTIVE
    verified_at: AwareDatetime  # when the onboarding finished
    last_seen_right_at: AwareDatetime  # verified_at, or the last sweep that found nothing wrong
    checked_period: PeriodId | None = None  # the last sweep period that checked it (one check per period)
    findings: tuple[DriftFinding, ...] = ()  # open: seen by the last check, not yet seen right again
    drifting_since: AwareDatetime | None = None  # the first check that found it wrong, while findings are open
    updated_at: AwareDatetime

    @field_validator("verified_at", "last_seen_right_at", "drifting_since", "updated_at")
    @classmethod
    def _in_utc(cls, at: datetime | None) -> datetime | None:
        return None if at is None else at.astimezone(UTC)


class Sweep(BaseModel):
    """One period's sweep: how far its fan-out got (resumable from `cursor`) and when it ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    period: PeriodId
    started_at: AwareDatetime
    cursor: MembershipKey | None = None  # the last key fanned out; the next page starts after it
    moved_from: MembershipKey | None = None  # the `after` of the page that last moved the cursor (None: the first)
    pages: int = Field(default=0, ge=0)
    fanned_out: int = Field(default=0, ge=0)  # people sent to be checked
    fanned_out_at: AwareDatetime | None = None  # the last page was sent: the fan-out is complete


class SweepCounts(BaseModel):
    """What `onboard status --watch` shows of a sweep, counted from the roster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sweep: Sweep | None
    active: int  # memberships the sweep should check
    checked: int  # of them, checked in this sweep's period
    drifting: int  # with open findings
    repaired: int  # whose last check repaired something


@runtime_checkable
class Roster(Protocol):
    """Where memberships and sweeps are kept: beside the journal, in the same store (like the lease book).
    A write that fails raises: the stage or the check runs again."""

    async def membership(self, key: str) -> Membership | None: ...

    async def keep_membership(self, membership: Membership) -> None:
        """Write it whole: a finished onboarding (again: the latest verification wins, findings cleared)."""
        ...

    async def end_membership(self, key: str, at: datetime) -> bool:
        """Mark it offboarded; True when it was active."""
        ...

    async def rename_membership(self, key: str, display_name: str, at: datetime) -> bool:
        """An update changed the person's names: the active membership's display name; True when it was active."""
        ...

    async def memberships(self, *, after: str | None, limit: int) -> list[Membership]:
        """Active memberships in key order (by group), after `after`, at most `limit`."""
        ...

    async def record_check(
        self, key: str, period: str, findings: Sequence[DriftFinding], at: datetime
    ) -> Membership | None:
        """Record one period's check of an active membership, only once per period (a conditional write):
        the membership as recorded, or None when it is not active or was checked in `period` already."""
        ...

    async def drifting(self) -> list[Membership]:
        """Active memberships with open findings, the longest drifting first."""
        ...

    async def sweep(self, period: str) -> Sweep | None: ...

    async def keep_sweep(self, sweep: Sweep) -> None: ...

    async def latest_sweep(self) -> Sweep | None: ...

    async def counts(self, period: str | None) -> SweepCounts: ...


class GroupChecker(Protocol):
    """Re-verifies the members of one group, sharing the group's reads: open findings per membership key
    (an empty tuple: seen right). Repairs what the policy allows, saying so in the finding."""

    async def __call__(
        self, group: ResolvedGroup, members: Sequence[Membership]
    ) -> Mapping[str, tuple[DriftFinding, ...]]: ...
