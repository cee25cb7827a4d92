"""The lease book beside the journal, on SQLite and on Azurite's Table Storage (docs/leases.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.journal import Journal, SqliteJournal
from shared.journal.model import Lease, LeaseState
from shared.journal.ports import LeaseBook
from shared.journal.table_storage import TableStorageJournal

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _lease(key: str, ends_in_days: float, **changes: object) -> Lease:
    ends_at = NOW + timedelta(days=ends_in_days)
    fields: dict[str, object] = {
        "key": key,
        "external_email": "ana.silva@fabrikam.example",
        "display_name": "Ana Silva",
        "group_id": "7c1d2e3f-0003-4b5c-8d9e-0f1a2b3c4d03",
        "group_mail": "project-falcon@contoso.com",
        "group_display_name": "Project Falcon",
        "group_kind": "Microsoft365",
        "source_system": "demo-hr",
        "ends_at": ends_at,
        "notice_at": ends_at - timedelta(days=7),
        "request_id": "hr-1",
        "correlation_id": "hr-1",
        "updated_at": NOW,
    }
    return Lease.model_validate(fields | changes)


def _book(journal: Journal) -> LeaseBook:
    """Both adapters keep leases beside their transitions."""
    assert isinstance(journal, SqliteJournal | TableStorageJournal)
    return journal


async def test_a_lease_is_kept_read_back_and_listed_soonest_first(journal: Journal) -> None:
    book = _book(journal)
    later, sooner = _lease("lease-" + "a" * 32, 90), _lease("lease-" + "b" * 32, 10)
    await book.keep_lease(later)
    await book.keep_lease(sooner)
    assert await book.lease(later.key) == later
    assert await book.lease("lease-" + "c" * 32) is None
    assert [lease.key for lease in await book.leases()] == [sooner.key, later.key]
    assert [lease.key for lease in await book.leases(ending_before=NOW + timedelta(days=30))] == [sooner.key]


async def test_settling_acts_only_on_the_active_lease_with_that_end(journal: Journal) -> None:
    book = _book(journal)
    lease = _lease("lease-" + "d" * 32, 10)
    await book.keep_lease(lease)
    renewed = _lease(lease.key, 40, request_id="hr-2")
    await book.keep_lease(renewed)  # a renewal: the old end's wake-up must not act
    assert not await book.settle_lease(lease.key, lease.ends_at, LeaseState.EXPIRED)
    assert await book.settle_lease(lease.key, renewed.ends_at, LeaseState.EXPIRED)
    assert not await book.settle_lease(lease.key, renewed.ends_at, LeaseState.EXPIRED)  # once only
    kept = await book.lease(lease.key)
    assert kept is not None and kept.state is LeaseState.EXPIRED and kept.request_id == "hr-2"
    assert await book.leases() == []
    assert not await book.settle_lease("lease-" + "e" * 32, NOW, LeaseState.ENDED)


async def test_the_same_onboarding_kept_again_does_not_bring_back_a_lease_that_ended(journal: Journal) -> None:
    """A redelivered onboarding finishing after its lease's end fired must not make it active again:
    that end's wake-up has acted, so nothing would end the membership; a new onboarding does renew it."""
    book = _book(journal)
    lease = _lease("lease-" + "f" * 32, 10)
    await book.keep_lease(lease)
    assert await book.settle_lease(lease.key, lease.ends_at, LeaseState.EXPIRED)
    await book.keep_lease(lease)  # the same request, the same end: a redelivery
    kept = await book.lease(lease.key)
    assert kept is not None and kept.state is LeaseState.EXPIRED
    assert await book.leases() == []
    renewed = _lease(lease.key, 10, request_id="hr-3")  # a new onboarding, even with the same end
    await book.keep_lease(renewed)
    kept = await book.lease(lease.key)
    assert kept is not None and kept.state is LeaseState.ACTIVE and kept.request_id == "hr-3"
