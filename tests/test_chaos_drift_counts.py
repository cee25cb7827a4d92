"""How the chaos run counts its drift sweep (tools/chaos_drift.py), on its own: the report's verdicts from a
roster, recorded checks and drift events, the recorded-check counter on a real SQLite journal, and the kills'
window against the pages' spacing. The sweep itself, through kills, is tests/test_chaos.py."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.contracts import DriftKind, GroupKind, Recipient, RecipientKind, ResolvedGroup
from shared.drift.model import Membership, membership_key
from shared.journal import SqliteJournal
from tools.chaos_drift import (
    SWEEP_SECONDS,
    Broken,
    DriftReport,
    count_recorded_checks,
    least_fan_out_seconds,
    recorded_checks,
)

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
PERIOD = "20261207T000000Z"
GROUP = ResolvedGroup(
    id="7c1d2e3f-0001-4b5c-8d9e-0f1a2b3c4d01", display_name="Partners", mail="partners@contoso.com",
    kind=GroupKind.DISTRIBUTION,
)  # fmt: skip


def member(n: int, *, checked: str | None = PERIOD) -> Membership:
    address = f"person{n:05d}@fabrikam.example"
    return Membership(
        key=membership_key(address, GROUP.id),
        external_email=address,
        display_name=f"Person {n}",
        group=GROUP,
        recipient=Recipient(kind=RecipientKind.MAIL_CONTACT, id=f"guid-{n}", created=True),
        allow_external_senders=False,
        source_system="demo-hr",
        request_id=f"chaos-{n:05d}",
        correlation_id=f"chaos-{n:05d}",
        verified_at=NOW,
        last_seen_right_at=NOW,
        checked_period=checked,
        updated_at=NOW,
    )


def test_a_clean_sweep_is_ok_and_each_kind_of_fault_is_named_by_key() -> None:
    people = [member(n) for n in range(6)]
    keys = [m.key for m in people]
    clean = DriftReport(period=PERIOD, broken=Broken(frozenset(keys[:1]), frozenset(keys[1:2])))
    clean.events, clean.kinds = Counter(keys[:2]), {keys[0]: {DriftKind.NOT_A_MEMBER}}
    clean.kinds[keys[1]] = {DriftKind.SENDER_AUTHENTICATION_REQUIRED}
    clean.count(people, Counter(keys))
    assert clean.ok, clean.lines()

    faulty = DriftReport(period=PERIOD, broken=Broken(frozenset(keys[:2]), frozenset(keys[2:3])))
    faulty.events = Counter({keys[0]: 2, keys[2]: 1, keys[3]: 1})  # keys[1] broken, never reported
    faulty.kinds = {keys[0]: {DriftKind.NOT_A_MEMBER}, keys[2]: {DriftKind.NOT_A_MEMBER}, keys[3]: set()}
    faulty.count([*people[:5], member(5, checked=None)], Counter({**dict.fromkeys(keys, 1), keys[4]: 2}))
    assert not faulty.ok
    assert dict(faulty.failures()) == {
        "skipped": [keys[5]],
        "checked twice": [keys[4]],
        "broken and not reported": [keys[1]],
        "reported twice": [keys[0]],
        "reported and not broken": [keys[3]],
        "reported without the finding": [keys[2]],  # its group requires authentication: not NotAMember
    }


async def test_the_counter_sees_each_recorded_check_and_a_second_one_in_a_period(tmp_path: Path) -> None:
    database = tmp_path / "journal.db"
    journal = SqliteJournal(database)
    try:
        first, second = member(1, checked=None), member(2, checked=None)
        for membership in (first, second):
            await journal.keep_membership(membership)
        count_recorded_checks(database)
        assert await journal.record_check(first.key, PERIOD, (), NOW) is not None
        assert await journal.record_check(first.key, PERIOD, (), NOW) is None  # once per period
        assert recorded_checks(database, PERIOD) == Counter({first.key: 1})
        # A roster that let a second check through would be counted: forget the first, record again.
        await journal.keep_membership(first)
        assert await journal.record_check(first.key, PERIOD, (), NOW) is not None
        assert recorded_checks(database, PERIOD) == Counter({first.key: 2})
    finally:
        await journal.close()


@pytest.mark.parametrize("active", [20, 52, 60, 378, 8500])
def test_the_pages_take_about_the_same_time_whatever_the_roster_so_the_kills_land_mid_sweep(active: int) -> None:
    """The kills come within 0.8 of this from the sweep's start: it must leave them room at any size."""
    assert SWEEP_SECONDS / 2 <= least_fan_out_seconds(active) <= SWEEP_SECONDS
