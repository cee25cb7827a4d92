"""The journal in Azure Table Storage (Azurite locally and in the tests), and with it the throttle
holds every instance of the app shares (`HOLDS_PARTITION`).

One entity per transition: PartitionKey = request id, RowKey = `Transition.key` (sortable time,
stage, attempt, kind). A request's history is then a single-partition query, already in RowKey
order, and re-recording a transition upserts the same entity.

In Azure the table is created with the infrastructure (infra/main.bicep): the app's managed identity
needs "Storage Table Data Contributor" on the table, and a reader (`onboard status`) only "Storage
Table Data Reader", because reading never creates the table. Only a write to a table that does not
exist yet creates it (locally, on Azurite). Connection strings with an account key are for Azurite.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import re
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared.contracts import DriftFinding, OutcomeStatus, StageName
from shared.drift.model import Membership, MembershipState, Sweep, SweepCounts
from shared.drift.roster import as_checked, as_ended, as_renamed, is_drifting, may_record_check, was_repaired
from shared.journal.model import Lease, LeaseState, RequestState, Transition, TransitionKind, check_limit
from shared.journal.ports import FAILED, LATEST_FAILURES, Tally, Where

# Table Storage refuses these in PartitionKey and RowKey: "Characters disallowed in key fields",
# https://learn.microsoft.com/rest/api/storageservices/understanding-the-table-service-data-model
_DISALLOWED_IN_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
# An escaped key starts with a space: a valid request id never holds whitespace, so the two kinds
# of key can never meet, and "a%2Fb" (a valid id) stays apart from the escaped "a/b".
_ESCAPED = " "

# The throttle holds every instance shares (shared/directory/throttle.py `SharedHolds`) live in the
# journal's table, where the app already has its rights, under a partition no request can have: a
# request id holds no whitespace, and an escaped one holds a percent sign. One entity per face.
HOLDS_PARTITION = " throttle-holds"
# Another instance may write between a read and a conditional write; each lost round means one did, and
# holds only grow, so the later hold wins within as many rounds as instances write at once (three were
# too few for five concurrent writers: the latest hold was dropped). A bound, not a wait: no sleep between.
HOLD_WRITE_TRIES = 16

_PROPERTIES = ["PartitionKey", "RowKey", "Stage", "Decision", "Attempt", "Cause", "OutcomeStatus", "At"]
# What counting needs of each transition: no Cause (up to 2,000 characters), no At (the filter has it).
_WHERE = ["PartitionKey", "RowKey", "Stage", "Decision", "OutcomeStatus"]


class UnsortedResultsError(AzureError):
    """The service returned a query's entities out of PartitionKey order, which Table Storage (and
    Azurite) never do; the counts, which rely on it, would be wrong."""


# Leases live in a table of their own beside the journal's (`<table>leases`, created with it in
# infra/main.bicep), so the journal's scans never meet them: one entity per lease, PartitionKey = its key.
LEASE_TABLE_SUFFIX = "leases"
_LEASE_ROW = "lease"
# The drift watch's roster, likewise in a table of its own (`<table>roster`): one entity per membership,
# PartitionKey = its key, which sorts by group, so a page of the roster is a range of keys. The sweeps live
# in it too, under a partition no membership key can have (a key starts with a letter, digit or dash).
ROSTER_TABLE_SUFFIX = "roster"
_MEMBERSHIP_ROW = "membership"
SWEEPS_PARTITION = " sweeps"
_ROSTER_PAGE_MAX = 1000  # Table Storage returns at most 1,000 entities a page


class TableStorageJournal:
    def __init__(
        self,
        client: TableClient,
        *,
        owned_credential: AsyncTokenCredential | None = None,
        leases: TableClient | None = None,
        roster: TableClient | None = None,
    ) -> None:
        self._client = client
        self._leases = leases
        self._roster = roster
        self._owned_credential = owned_credential  # closed with the journal when we created it

    @classmethod
    def from_connection_string(cls, connection_string: str, table_name: str) -> TableStorageJournal:
        return cls(
            TableClient.from_connection_string(connection_string, table_name),
            leases=TableClient.from_connection_string(connection_string, table_name + LEASE_TABLE_SUFFIX),
            roster=TableClient.from_connection_string(connection_string, table_name + ROSTER_TABLE_SUFFIX),
        )

    @classmethod
    def from_endpoint(
        cls, endpoint: str, table_name: str, credential: AsyncTokenCredential, *, owns_credential: bool = False
    ) -> TableStorageJournal:
        """`endpoint` is the account's table endpoint, e.g. https://<account>.table.core.windows.net."""
        client = TableClient(endpoint, table_name, credential=credential)
        leases = TableClient(endpoint, table_name + LEASE_TABLE_SUFFIX, credential=credential)
        roster = TableClient(endpoint, table_name + ROSTER_TABLE_SUFFIX, credential=credential)
        owned = credential if owns_credential else None
        return cls(client, owned_credential=owned, leases=leases, roster=roster)

    @property
    def _lease_table(self) -> TableClient:
        if self._leases is None:
            raise RuntimeError("this journal was opened without its lease table")
        return self._leases

    async def lease(self, key: str) -> Lease | None:
        with contextlib.suppress(ResourceNotFoundError):  # no such lease, or no table yet
            entity = await self._lease_table.get_entity(key, _LEASE_ROW)
            return Lease.model_validate_json(str(entity["Body"]))
        return None

    async def keep_lease(self, lease: Lease) -> None:
        # Read, then write: the same onboarding is not handled twice at the same moment (one message, one lock).
        if lease.settled_as(await self.lease(lease.key)):
            return
        entity = {
            "PartitionKey": lease.key,
            "RowKey": _LEASE_ROW,
            "State": lease.state.value,
            "EndsAt": lease.ends_at,
            "Body": lease.model_dump_json(),
        }
        await _upsert_creating(self._lease_table, entity)

    async def settle_lease(self, key: str, ends_at: datetime, state: LeaseState) -> bool:
        try:
            entity = await self._lease_table.get_entity(key, _LEASE_ROW)
        except ResourceNotFoundError:
            return False
        lease = Lease.model_validate_json(str(entity["Body"]))
        if lease.state is not LeaseState.ACTIVE or lease.ends_at != ends_at.astimezone(UTC):
            return False
        settled = lease.model_copy(update={"state": state})
        replacement = {**entity, "State": state.value, "Body": settled.model_dump_json()}
        try:  # only if nobody wrote the lease since it was read (a renewal wins)
            await self._lease_table.update_entity(
                replacement,
                mode=UpdateMode.REPLACE,
                etag=entity.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            return False
        return True

    async def leases(self, *, ending_before: datetime | None = None) -> list[Lease]:
        query = "State eq @state" + (" and EndsAt lt @before" if ending_before is not None else "")
        parameters: dict[str, Any] = {"state": LeaseState.ACTIVE.value}
        if ending_before is not None:
            parameters["before"] = ending_before.astimezone(UTC)
        entities = self._lease_table.query_entities(query, parameters=parameters, select=["Body"])
        found = [Lease.model_validate_json(str(entity["Body"])) async for entity in _unless_no_table(entities)]
        return sorted(found, key=lambda lease: (lease.ends_at, lease.key))

    @property
    def _roster_table(self) -> TableClient:
        if self._roster is None:
            raise RuntimeError("this journal was opened without its roster table")
        return self._roster

    async def membership(self, key: str) -> Membership | None:
        entity = await self._roster_entity(key, _MEMBERSHIP_ROW)
        return None if entity is None else Membership.model_validate_json(str(entity["Body"]))

    async def keep_membership(self, membership: Membership) -> None:
        await _upsert_creating(self._roster_table, _membership_entity(membership))

    async def end_membership(self, key: str, at: datetime) -> bool:
        return await self._change_active(key, lambda membership: as_ended(membership, at))

    async def rename_membership(self, key: str, display_name: str, at: datetime) -> bool:
        return await self._change_active(key, lambda membership: as_renamed(membership, display_name, at))

    async def _change_active(self, key: str, change: Callable[[Membership], Membership]) -> bool:
        """Write `change` of the membership if it is active and unchanged since it was read; True when written."""
        entity = await self._roster_entity(key, _MEMBERSHIP_ROW)
        if entity is None:
            return False
        membership = Membership.model_validate_json(str(entity["Body"]))
        if membership.state is not MembershipState.ACTIVE:
            return False
        return await self._replace_if_unchanged(entity, _membership_entity(change(membership)))

    async def memberships(self, *, after: str | None, limit: int) -> list[Membership]:
        query = "State eq @state" + (" and PartitionKey gt @after" if after is not None else "")
        parameters: dict[str, Any] = {"state": MembershipState.ACTIVE.value} | (
            {"after": after} if after is not None else {}
        )
        entities = self._roster_table.query_entities(
            query, parameters=parameters, select=["Body"], results_per_page=min(limit, _ROSTER_PAGE_MAX)
        )
        found: list[Membership] = []
        async for entity in _unless_no_table(entities):  # PartitionKey order: the service returns it so
            found.append(Membership.model_validate_json(str(entity["Body"])))
            if len(found) == limit:
                break
        return found

    async def record_check(
        self, key: str, period: str, findings: Sequence[DriftFinding], at: datetime
    ) -> Membership | None:
        entity = await self._roster_entity(key, _MEMBERSHIP_ROW)
        if entity is None:
            return None
        membership = Membership.model_validate_json(str(entity["Body"]))
        if not may_record_check(membership, period):
            return None
        checked = as_checked(membership, period, findings, at)
        # Only if nobody wrote the membership since it was read: a second check of the same period loses.
        return checked if await self._replace_if_unchanged(entity, _membership_entity(checked)) else None

    async def drifting(self) -> list[Membership]:
        entities = self._roster_table.query_entities(
            "State eq @state and Drifting eq true", parameters={"state": MembershipState.ACTIVE.value}, select=["Body"]
        )
        found = [Membership.model_validate_json(str(entity["Body"])) async for entity in _unless_no_table(entities)]
        return sorted(
            found, key=lambda membership: (membership.drifting_since or membership.updated_at, membership.key)
        )

    async def sweep(self, period: str) -> Sweep | None:
        entity = await self._roster_entity(SWEEPS_PARTITION, period)
        return None if entity is None else Sweep.model_validate_json(str(entity["Body"]))

    async def keep_sweep(self, sweep: Sweep) -> None:
        entity = {"PartitionKey": SWEEPS_PARTITION, "RowKey": sweep.period, "Body": sweep.model_dump_json()}
        await _upsert_creating(self._roster_table, entity)

    async def latest_sweep(self) -> Sweep | None:
        # One sweep a period (a day by default): a few hundred a year, read whole.
        entities = self._roster_table.query_entities(
            "PartitionKey eq @sweeps", parameters={"sweeps": SWEEPS_PARTITION}, select=["RowKey", "Body"]
        )
        latest = max(
            [entity async for entity in _unless_no_table(entities)], key=lambda e: str(e["RowKey"]), default=None
        )
        return None if latest is None else Sweep.model_validate_json(str(latest["Body"]))

    async def counts(self, period: str | None) -> SweepCounts:
        """A scan of the active memberships' three columns: Table Storage counts nothing itself."""
        entities = self._roster_table.query_entities(
            "State eq @state",
            parameters={"state": MembershipState.ACTIVE.value},
            select=["CheckedPeriod", "Drifting", "Repaired"],
        )
        active = checked = drifting = repaired = 0
        async for entity in _unless_no_table(entities):
            active += 1
            checked += period is not None and entity.get("CheckedPeriod") == period
            drifting += bool(entity.get("Drifting"))
            repaired += bool(entity.get("Repaired"))
        sweep = await self.sweep(period) if period else None
        return SweepCounts(sweep=sweep, active=active, checked=checked, drifting=drifting, repaired=repaired)

    async def _roster_entity(self, partition: str, row: str) -> Any | None:
        with contextlib.suppress(ResourceNotFoundError):  # none such, or no table yet
            return await self._roster_table.get_entity(partition, row)
        return None

    async def _replace_if_unchanged(self, read: Any, replacement: dict[str, Any]) -> bool:
        try:
            await self._roster_table.update_entity(
                replacement,
                mode=UpdateMode.REPLACE,
                etag=read.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):  # written, or removed, since it was read
            return False
        return True

    @property
    def table_name(self) -> str:
        return self._client.table_name

    @property
    def endpoint(self) -> str:
        return self._client.url

    async def record(self, transition: Transition) -> None:
        entity: dict[str, Any] = {
            "PartitionKey": partition_key(transition.request_id),
            "RowKey": transition.key,
            "Stage": transition.stage.value,
            "Decision": transition.decision.value,
            "Attempt": transition.attempt,
            "At": transition.at,
        }
        # REPLACE, not MERGE: a re-recorded transition must not keep a stale Cause it no longer has.
        if transition.cause is not None:
            entity["Cause"] = transition.cause
        if transition.outcome_status is not None:
            entity["OutcomeStatus"] = transition.outcome_status.value
        try:
            await self._client.upsert_entity(entity, mode=UpdateMode.REPLACE)
        except ResourceNotFoundError:  # no table yet (in Azure the infrastructure creates it)
            with contextlib.suppress(ResourceExistsError):  # another writer was first
                await self._client.create_table()
            await self._client.upsert_entity(entity, mode=UpdateMode.REPLACE)

    async def history(self, request_id: str) -> list[Transition]:
        entities = self._client.query_entities(
            "PartitionKey eq @request_id", parameters={"request_id": partition_key(request_id)}, select=_PROPERTIES
        )
        rows = [entity async for entity in _unless_no_table(entities)]
        rows.sort(key=lambda entity: str(entity["RowKey"]))  # the service returns RowKey order; do not rely on it
        return [_transition(entity) for entity in rows]

    async def summary(self, limit: int = 50) -> list[RequestState]:
        # A full table scan, O(all transitions) per call, but memory O(limit): the scan arrives one
        # partition (request) after another, and only the `limit` newest requests are kept. When the
        # scan is too slow, keep one "latest" entity per request (a separate table, upserted with an
        # ETag condition alongside each record) and read that instead.
        check_limit(limit)
        newest: list[tuple[str, str, int, dict[str, Any]]] = []  # a heap: the oldest of the kept on top
        entities = _unless_no_table(self._client.list_entities(select=_PROPERTIES))
        async for latest, count in _latest_per_partition(entities):
            kept = (str(latest["RowKey"]), str(latest["PartitionKey"]), count, latest)
            if len(newest) < limit:
                heapq.heappush(newest, kept)
            elif kept[:2] > newest[0][:2]:
                heapq.heapreplace(newest, kept)
        newest.sort(key=lambda kept: kept[:2], reverse=True)
        return [RequestState.of(_transition(entity), attempts=count) for _, _, count, entity in newest]

    async def tally(self, since: datetime, *, failures: int = LATEST_FAILURES) -> Tally:
        """A filtered scan: only transitions at or after `since` come back, and only the columns
        counting needs. Filtering on At (the transition's time) rather than Timestamp (when the entity
        was last written) keeps the window the same as SQLite's; Table Storage indexes neither, so
        the service scans the table either way. The few failures are then read whole, by key."""
        if since.tzinfo is None:
            raise ValueError(f"a journal time must be timezone-aware, not {since!r}")
        counts: Counter[Where] = Counter()
        failed: list[tuple[str, str]] = []  # a heap of (RowKey, PartitionKey): the oldest kept on top
        entities = self._client.query_entities(
            "At ge @since", parameters={"since": since.astimezone(UTC)}, select=_WHERE
        )
        async for latest, _ in _latest_per_partition(_unless_no_table(entities)):
            status = latest.get("OutcomeStatus")
            where = Where(
                StageName(latest["Stage"]),
                TransitionKind(latest["Decision"]),
                OutcomeStatus(status) if status else None,
            )
            counts[where] += 1
            if where.decision in FAILED and failures > 0:
                keys = (str(latest["RowKey"]), str(latest["PartitionKey"]))
                if len(failed) < failures:
                    heapq.heappush(failed, keys)
                elif keys > failed[0]:
                    heapq.heapreplace(failed, keys)
        failed.sort(reverse=True)
        whole = await asyncio.gather(*(self._entity(partition, row) for row, partition in failed))
        return Tally(since, dict(counts), [_transition(entity) for entity in whole if entity is not None])

    async def read_holds(self) -> dict[str, float]:
        entities = self._client.query_entities(
            "PartitionKey eq @holds", parameters={"holds": HOLDS_PARTITION}, select=["RowKey", "Until"]
        )
        return {str(entity["RowKey"]): float(entity["Until"]) async for entity in _unless_no_table(entities)}

    async def extend_hold(self, face: str, until: float) -> None:
        """Keep the later hold: read, then write only if ours is later, on the condition that nobody
        wrote in between (the entity's ETag), else read again."""
        for _ in range(HOLD_WRITE_TRIES):
            try:
                stored = await self._client.get_entity(HOLDS_PARTITION, face, select=["Until"])
            except ResourceNotFoundError:  # no hold for this face yet (or no table yet)
                if await self._create_hold(face, until):
                    return
                continue
            if float(stored["Until"]) >= until:
                return
            entity = {"PartitionKey": HOLDS_PARTITION, "RowKey": face, "Until": until}
            try:
                await self._client.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=stored.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return
            except ResourceModifiedError:  # another instance wrote first: compare with theirs
                continue

    async def _create_hold(self, face: str, until: float) -> bool:
        """False when another instance created it first."""
        entity = {"PartitionKey": HOLDS_PARTITION, "RowKey": face, "Until": until}
        try:
            await self._client.create_entity(entity)
        except ResourceExistsError:
            return False
        except ResourceNotFoundError:  # no table yet (in Azure the infrastructure creates it)
            with contextlib.suppress(ResourceExistsError):
                await self._client.create_table()
            return False
        return True

    async def close(self) -> None:
        await self._client.close()
        if self._leases is not None:
            await self._leases.close()
        if self._roster is not None:
            await self._roster.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()

    async def _entity(self, partition: str, row: str) -> Any | None:
        with contextlib.suppress(ResourceNotFoundError):  # journal rows are never deleted, but be lenient
            return await self._client.get_entity(partition, row, select=_PROPERTIES)
        return None


async def _unless_no_table(entities: AsyncIterable[Any]) -> AsyncIterator[Any]:
    """A query's entities; none while the table does not exist. Reading never creates the table, so
    a reader needs no right to write (Storage Table Data Reader is enough)."""
    try:
        async for entity in entities:
            yield entity
    except ResourceNotFoundError:  # TableNotFound: nothing was ever recorded
        return


async def _latest_per_partition(entities: AsyncIterable[Any]) -> AsyncIterator[tuple[Any, int]]:
    """Each partition's (request's) entity with the greatest RowKey, and how many entities it has.

    Table Storage returns a query's entities sorted by PartitionKey, then RowKey ("Sorting data in
    the Table service", learn.microsoft.com/azure/storage/tables/table-storage-design-for-query), so
    one partition's entities arrive together and only the current one is kept: memory stays flat
    however large the table. Keys are compared as UTF-16 code units, the order Azurite returns (a
    key beyond U+FFFF sorts before U+FFFD); a partition arriving out of order raises
    UnsortedResultsError rather than being counted twice."""
    current: Any | None = None
    count = 0
    async for entity in entities:
        if entity["PartitionKey"] == HOLDS_PARTITION:  # the throttle holds, not a request
            continue
        if current is not None and entity["PartitionKey"] == current["PartitionKey"]:
            count += 1
            if str(entity["RowKey"]) > str(current["RowKey"]):
                current = entity
            continue
        if current is not None:
            if _utf16(str(entity["PartitionKey"])) < _utf16(str(current["PartitionKey"])):
                raise UnsortedResultsError("Table Storage returned the journal's entities out of PartitionKey order")
            yield current, count
        current, count = entity, 1
    if current is not None:
        yield current, count


async def _upsert_creating(table: TableClient, entity: dict[str, Any]) -> None:
    try:
        await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
    except ResourceNotFoundError:  # no table yet (in Azure the infrastructure creates it)
        with contextlib.suppress(ResourceExistsError):
            await table.create_table()
        await table.upsert_entity(entity, mode=UpdateMode.REPLACE)


def _membership_entity(membership: Membership) -> dict[str, Any]:
    """The membership whole as JSON, and the columns the queries filter on."""
    entity: dict[str, Any] = {
        "PartitionKey": membership.key,
        "RowKey": _MEMBERSHIP_ROW,
        "State": membership.state.value,
        "Drifting": is_drifting(membership),
        "Repaired": was_repaired(membership),
        "Body": membership.model_dump_json(),
    }
    if membership.checked_period is not None:
        entity["CheckedPeriod"] = membership.checked_period
    return entity


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", errors="surrogatepass")


def _transition(entity: dict[str, Any] | Any) -> Transition:
    return Transition.as_stored(
        request_id=_request_id(str(entity["PartitionKey"])),
        stage=entity["Stage"],
        decision=entity["Decision"],
        attempt=int(entity["Attempt"]),
        cause=entity.get("Cause"),
        outcome_status=entity.get("OutcomeStatus"),
        at=_plain_utc(entity["At"]),
    )


def _plain_utc(at: datetime) -> datetime:
    """The SDK returns its own datetime subclass; the model keeps plain UTC datetimes."""
    utc = at.astimezone(UTC)
    return datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, tzinfo=UTC)


def partition_key(request_id: str) -> str:
    """The request id itself, unless it holds a character Table Storage refuses in a key (only a
    refused MessageId can): then a space and the id percent-escaped, which the service accepts."""
    if _DISALLOWED_IN_KEY.search(request_id) is None:
        return request_id
    return _ESCAPED + quote(request_id, safe="")


def _request_id(key: str) -> str:
    return unquote(key[len(_ESCAPED) :]) if key.startswith(_ESCAPED) else key
