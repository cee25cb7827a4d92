"""The chaos run's drift sweep (docs/reliability.md, docs/drift.md): once the run's requests have their outcomes, a
few of the memberships it onboarded are broken in the sandbox, the timer `drift_sweep` starts the period's sweep
in small pages through a host that is killed (and a broker that restarts) meanwhile, and the roster and the
outcome queue say whether anyone was skipped, checked twice or reported twice.

How often a membership was checked is counted in the journal's own SQLite file: a trigger the run adds to the
roster table writes a row each time a check is recorded (the roster's conditional UPDATE of checked_period),
so a second record of one membership in one period would show however it came about.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from shared.contracts import DriftEvent, DriftKind, RecipientKind
from shared.drift.model import Membership
from shared.journal.sqlite import SqliteJournal
from standins.tenant_sandbox.model import Directory

PAGE_SIZE = 10  # small pages: many page messages, so that the kills land between and within them
SWEEP_SECONDS = 20.0  # the rate is chosen so that the pages are spread over about this long
EVERY_FIVE_SECONDS = "*/5 * * * * *"  # the timer during the sweep: it starts it, later firings resume it
# During the requests the timer must not start the period's sweep (only 29 February would).
NO_SWEEP_SCHEDULE = "0 0 0 29 2 *"
# The policy (tools/demo/policy.json) does not allow the 5.7.133 fix for this group: its people are reported,
# each once, and the watch repairs nothing (a repair would be made once for a group, so who is reported would
# depend on which check came first).
SENDER_AUTHENTICATION_ON = "suppliers-secure@contoso.com"
MEMBERS_REMOVED_FROM = ("partners@contoso.com", "project-falcon@contoso.com")  # a contact's and a guest's group
REMOVED_PER_GROUP = 2

_COUNT_CHECKS = """
CREATE TABLE IF NOT EXISTS chaos_recorded_checks (key TEXT NOT NULL, period TEXT);
CREATE TRIGGER IF NOT EXISTS chaos_count_recorded_checks AFTER UPDATE OF checked_period ON roster
BEGIN
    INSERT INTO chaos_recorded_checks (key, period) VALUES (NEW.key, NEW.checked_period);
END;
"""
_RECORDED_CHECKS = "SELECT key, COUNT(*) FROM chaos_recorded_checks WHERE period = ? GROUP BY key"


def sweep_settings(active: int) -> dict[str, str]:
    """The drift host's settings: the timer every five seconds, pages of PAGE_SIZE, a rate that spreads the
    `active` people over about SWEEP_SECONDS."""
    return {
        "ONBOARDING_DRIFT_SCHEDULE": EVERY_FIVE_SECONDS,
        "ONBOARDING_DRIFT_PAGE_SIZE": str(PAGE_SIZE),
        "ONBOARDING_DRIFT_PER_MINUTE": str(per_minute(active)),
    }


def per_minute(active: int) -> int:
    return max(1, round(max(1, active) * 60 / SWEEP_SECONDS))


def least_fan_out_seconds(active: int) -> float:
    """How long after the sweep starts its last person is sent to be checked, at the least: each full page
    schedules the next one page's spacing ahead, and the last person is on page (active - 1) // PAGE_SIZE + 1."""
    return ((active - 1) // PAGE_SIZE) * PAGE_SIZE * 60 / per_minute(active)


@dataclass(frozen=True)
class Broken:
    """The memberships broken in the sandbox before the sweep: each must be reported by exactly one event."""

    removed: frozenset[str]  # taken out of their group (NotAMember)
    sender_authentication: frozenset[str]  # their group requires authenticated senders again

    @property
    def keys(self) -> frozenset[str]:
        return self.removed | self.sender_authentication


def break_memberships(directory: Directory, active: Iterable[Membership], rng: random.Random) -> Broken:
    """As an administrator would: a few people taken out of their groups, and sender authentication turned
    back on for a group whose fix the policy does not allow."""
    people = sorted(active, key=lambda m: m.key)
    removed: set[str] = set()
    for address in MEMBERS_REMOVED_FROM:
        group = directory.group_by_identity(address)
        assert group is not None, address  # the demo tenant's
        in_group = [m for m in people if m.group.id == group.id]
        for membership in rng.sample(in_group, min(REMOVED_PER_GROUP, len(in_group))):
            directory.remove_member(group, _member_id(directory, membership))
            removed.add(membership.key)
    group = directory.group_by_identity(SENDER_AUTHENTICATION_ON)
    assert group is not None, SENDER_AUTHENTICATION_ON
    directory.change_sender_rules(group, require_sender_authentication=True)
    return Broken(frozenset(removed), frozenset(m.key for m in people if m.group.id == group.id))


def _member_id(directory: Directory, membership: Membership) -> str:
    """A group lists its members by directory object id: a guest's is its id, a contact's its Entra object."""
    if membership.recipient.kind is RecipientKind.GUEST_USER:
        return membership.recipient.id
    contact = directory.contact_by_identity(membership.recipient.id)
    assert contact is not None, membership.key
    return contact.external_directory_object_id


def count_recorded_checks(journal_database: Path) -> None:
    """From now on, every check the roster records is also a row of chaos_recorded_checks."""
    with contextlib.closing(sqlite3.connect(journal_database)) as db, db:
        db.executescript(_COUNT_CHECKS)


def recorded_checks(journal_database: Path, period: str) -> Counter[str]:
    with contextlib.closing(sqlite3.connect(journal_database)) as db:
        return Counter(dict(db.execute(_RECORDED_CHECKS, (period,)).fetchall()))


async def active_memberships(journal: SqliteJournal) -> list[Membership]:
    """The whole roster's active memberships, a page at a time, in key order."""
    active: list[Membership] = []
    while page := await journal.memberships(after=active[-1].key if active else None, limit=500):
        active += page
    return active


def drift_event(body: bytes) -> DriftEvent:
    """The event's data: a drift event is a structured CloudEvent (docs/drift.md)."""
    return DriftEvent.model_validate(json.loads(body)["data"])


@dataclass
class DriftReport:
    """What the run's sweep did, counted from the roster, the recorded checks and the outcome queue."""

    period: str = ""
    not_run: str | None = None  # why the run did not sweep
    active: int = 0  # memberships the sweep had to check
    broken: Broken = field(default_factory=lambda: Broken(frozenset(), frozenset()))
    pages: int = 0
    fanned_out: int = 0
    events: Counter[str] = field(default_factory=Counter)  # drift events by membership key
    kinds: dict[str, set[DriftKind]] = field(default_factory=dict)  # what the events found, by membership key
    kills: int = 0
    kills_mid_sweep: int = 0  # kills while someone active was still unchecked
    emulator_restarts: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # active, not checked in the period
    checked_twice: list[str] = field(default_factory=list)  # a check recorded more than once in the period
    unreported: list[str] = field(default_factory=list)  # broken, no drift event
    double_reported: list[str] = field(default_factory=list)  # more than one drift event
    unexpected: list[str] = field(default_factory=list)  # a drift event for a membership not broken
    misreported: list[str] = field(default_factory=list)  # an event without the finding its breaking makes

    @property
    def ok(self) -> bool:
        return not any(keys for _, keys in self.failures())

    def failures(self) -> list[tuple[str, list[str]]]:
        return [
            ("skipped", self.skipped),
            ("checked twice", self.checked_twice),
            ("broken and not reported", self.unreported),
            ("reported twice", self.double_reported),
            ("reported and not broken", self.unexpected),
            ("reported without the finding", self.misreported),
        ]

    def note(self, event: DriftEvent) -> None:
        self.events[event.membership_id] += 1
        self.kinds.setdefault(event.membership_id, set()).update(finding.kind for finding in event.findings)

    def count(self, active: Iterable[Membership], checks: Counter[str]) -> None:
        """Who was skipped, checked twice, not reported, reported twice or reported for nothing."""
        self.skipped = sorted(m.key for m in active if m.checked_period != self.period)
        self.checked_twice = sorted(key for key, n in checks.items() if n > 1)
        self.unreported = sorted(key for key in self.broken.keys if not self.events[key])
        self.double_reported = sorted(key for key, n in self.events.items() if n > 1)
        self.unexpected = sorted(key for key in self.events if key not in self.broken.keys)
        expected = [(self.broken.removed, DriftKind.NOT_A_MEMBER)]
        expected.append((self.broken.sender_authentication, DriftKind.SENDER_AUTHENTICATION_REQUIRED))
        self.misreported = sorted(
            key for keys, kind in expected for key in keys if self.events[key] and kind not in self.kinds[key]
        )

    def lines(self) -> list[str]:
        def listed(name: str, keys: list[str]) -> str:
            return f"{name} {len(keys)}" + (f" e.g. {keys[:3]}" if keys else "")

        if self.not_run is not None:
            return [f"drift sweep {self.not_run}"]
        return [
            f"drift sweep of period {self.period}: {self.active} active memberships, {self.pages} pages, "
            f"{self.fanned_out} fanned out; broken {len(self.broken.keys)} ({len(self.broken.removed)} removed from "
            f"their group, {len(self.broken.sender_authentication)} in a group requiring authenticated senders); "
            f"{sum(self.events.values())} drift events",
            "drift: " + ", ".join(listed(name, keys) for name, keys in self.failures()),
            f"drift: host killed {self.kills} times ({self.kills_mid_sweep} with people still unchecked), emulator "
            f"restarted {self.emulator_restarts} times, {self.seconds:.0f} s",
        ]
