"""The drift watch's roster beside the journal, on SQLite and on Azurite's Table Storage (docs/drift.md)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from shared.contracts import DriftFinding, DriftKind, GroupKind, Recipient, RecipientKind, ResolvedGroup
from shared.drift.model import (
    Membership,
    MembershipState,
    Roster,
    Sweep,
    membership_key,
    period_id,
)
from shared.journal import Journal

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
TODAY = period_id(datetime(2026, 12, 7, tzinfo=UTC))
TOMORROW = period_id(datetime(2026, 12, 8, tzinfo=UTC))
FALCON = ResolvedGroup(
    id="7c1d2e3f-0003-4b5c-8d9e-0f1a2b3c4d03",
    display_name="Project Falcon",
    mail="falcon@contoso.com",
    kind=GroupKind.MICROSOFT_365,
)
PARTNERS = ResolvedGroup(
    id="1a2b3c4d-0001-4b5c-8d9e-0f1a2b3c4d01",
    display_name="Partners",
    mail="partners@contoso.com",
    kind=GroupKind.DISTRIBUTION,
)
REMOVED = DriftFinding(kind=DriftKind.NOT_A_MEMBER, description="Not a member any more.", fix="onboard submit ...")
REPAIRED = DriftFinding(
    kind=DriftKind.SENDER_AUTHENTICATION_REQUIRED, description="5.7.133 was back.", fix="none", repaired=True
)


def _membership(email: str, group: ResolvedGroup = FALCON) -> Membership:
    return Membership(
        key=membership_key(email, group.id),
        external_email=email,
        display_name="Ana Silva",
        group=group,
        recipient=Recipient(kind=RecipientKind.MAIL_CONTACT, id="c-1", created=True),
        allow_external_senders=True,
        source_system="demo-hr",
        request_id="hr-1",
        correlation_id="hr-1",
        verified_at=NOW,
        last_seen_right_at=NOW,
        updated_at=NOW,
    )


def _roster(journal: Journal) -> Roster:
    """Both adapters keep the roster beside their transitions."""
    assert isinstance(journal, Roster)
    return journal


async def test_memberships_page_in_key_order_active_only(journal: Journal) -> None:
    roster = _roster(journal)
    people = [_membership(f"p{n}@fabrikam.example", FALCON if n % 2 else PARTNERS) for n in range(5)]
    for membership in people:
        await roster.keep_membership(membership)
    assert await roster.end_membership(people[0].key, NOW) is True
    assert await roster.end_membership(people[0].key, NOW) is False  # ended already
    assert await roster.end_membership("0000:" + "0" * 32, NOW) is False  # never kept
    active = sorted(m.key for m in people[1:])
    first = await roster.memberships(after=None, limit=2)
    rest = await roster.memberships(after=first[-1].key, limit=10)
    assert [m.key for m in first + rest] == active  # by group, then digest: one group's people together
    ended = await roster.membership(people[0].key)
    assert ended is not None and ended.state is MembershipState.OFFBOARDED


async def test_an_update_renames_an_active_membership_only(journal: Journal) -> None:
    roster = _roster(journal)
    kept, ended = _membership("ana@fabrikam.example"), _membership("bo@fabrikam.example")
    for membership in (kept, ended):
        await roster.keep_membership(membership)
    await roster.end_membership(ended.key, NOW)
    later = NOW + timedelta(hours=1)
    assert await roster.rename_membership(kept.key, "Ana Lima-Costa", later) is True
    assert await roster.rename_membership(ended.key, "Bo Renamed", later) is False
    assert await roster.rename_membership("0000:" + "0" * 32, "Nobody", later) is False  # never kept
    renamed = await roster.membership(kept.key)
    assert renamed == kept.model_copy(update={"display_name": "Ana Lima-Costa", "updated_at": later})
    still = await roster.membership(ended.key)
    assert still is not None and still.display_name == "Ana Silva"


async def test_a_check_is_recorded_once_per_period(journal: Journal) -> None:
    roster = _roster(journal)
    kept = _membership("ana@fabrikam.example")
    await roster.keep_membership(kept)
    later = NOW + timedelta(hours=1)
    recorded = await roster.record_check(kept.key, TODAY, [REMOVED], later)
    assert recorded is not None and recorded.findings == (REMOVED,) and recorded.drifting_since == later
    assert recorded.last_seen_right_at == NOW and recorded.checked_period == TODAY
    assert await roster.record_check(kept.key, TODAY, [], later) is None  # once per period
    assert [m.key for m in await roster.drifting()] == [kept.key]
    cleared = await roster.record_check(kept.key, TOMORROW, [], later + timedelta(days=1))
    assert cleared is not None and cleared.findings == () and cleared.drifting_since is None
    assert cleared.last_seen_right_at == later + timedelta(days=1)
    assert await roster.record_check(kept.key, TODAY, [REMOVED], later) is None  # an older period: too late
    assert await roster.drifting() == []


async def test_two_checks_of_one_period_at_once_record_one(journal: Journal) -> None:
    roster = _roster(journal)
    kept = _membership("ana@fabrikam.example")
    await roster.keep_membership(kept)
    results = await asyncio.gather(*(roster.record_check(kept.key, TODAY, [REMOVED], NOW) for _ in range(5)))
    assert sum(result is not None for result in results) == 1


async def test_an_ended_membership_is_never_checked_and_a_new_onboarding_clears_findings(journal: Journal) -> None:
    roster = _roster(journal)
    kept = _membership("ana@fabrikam.example")
    await roster.keep_membership(kept)
    await roster.record_check(kept.key, TODAY, [REMOVED], NOW)
    await roster.end_membership(kept.key, NOW)
    assert await roster.record_check(kept.key, TOMORROW, [REMOVED], NOW) is None
    assert await roster.drifting() == []
    await roster.keep_membership(kept)  # onboarded again: active, nothing open
    again = await roster.membership(kept.key)
    assert again == kept


async def test_sweeps_and_counts(journal: Journal) -> None:
    roster = _roster(journal)
    assert await roster.latest_sweep() is None
    empty = await roster.counts(None)
    assert (empty.sweep, empty.active, empty.checked, empty.drifting, empty.repaired) == (None, 0, 0, 0, 0)
    people = [_membership(f"p{n}@fabrikam.example") for n in range(4)]
    for membership in people:
        await roster.keep_membership(membership)
    await roster.keep_sweep(Sweep(period=TODAY, started_at=NOW))
    await roster.keep_sweep(Sweep(period=TOMORROW, started_at=NOW + timedelta(days=1), pages=1))
    await roster.record_check(people[0].key, TOMORROW, [REMOVED], NOW)
    await roster.record_check(people[1].key, TOMORROW, [REPAIRED], NOW)
    await roster.record_check(people[2].key, TODAY, [], NOW)
    await roster.end_membership(people[3].key, NOW)
    latest = await roster.latest_sweep()
    assert latest is not None and latest.period == TOMORROW and latest.pages == 1
    counts = await roster.counts(TOMORROW)
    assert counts.sweep == latest
    assert (counts.active, counts.checked, counts.drifting, counts.repaired) == (3, 2, 1, 1)
    assert await roster.sweep(TODAY) == Sweep(period=TODAY, started_at=NOW)
