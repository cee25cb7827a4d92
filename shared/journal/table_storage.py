"""The journal in Azure Table Storage (Azurite locally and in the tests).

One entity per transition: PartitionKey = request id, RowKey = `Transition.key` (sortable time,
stage, attempt, kind). A request's history is then a single-partition query, already in RowKey
order, and re-recording a transition upserts the same entity.

In Azure the app's managed identity needs "Storage Table Data Contributor" on the account (or on
the table); connection strings with an account key are for Azurite.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared.journal.model import RequestState, Transition, check_limit

# Table Storage refuses these in PartitionKey and RowKey: "Characters disallowed in key fields",
# https://learn.microsoft.com/rest/api/storageservices/understanding-the-table-service-data-model
_DISALLOWED_IN_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
# An escaped key starts with a space: a valid request id never holds whitespace, so the two kinds
# of key can never meet, and "a%2Fb" (a valid id) stays apart from the escaped "a/b".
_ESCAPED = " "

_PROPERTIES = ["PartitionKey", "RowKey", "Stage", "Decision", "Attempt", "Cause", "OutcomeStatus", "At"]


class TableStorageJournal:
    def __init__(self, client: TableClient, *, owned_credential: AsyncTokenCredential | None = None) -> None:
        self._client = client
        self._owned_credential = owned_credential  # closed with the journal when we created it
        self._table_ready = False
        self._table_lock = asyncio.Lock()

    @classmethod
    def from_connection_string(cls, connection_string: str, table_name: str) -> TableStorageJournal:
        return cls(TableClient.from_connection_string(connection_string, table_name))

    @classmethod
    def from_endpoint(
        cls, endpoint: str, table_name: str, credential: AsyncTokenCredential, *, owns_credential: bool = False
    ) -> TableStorageJournal:
        """`endpoint` is the account's table endpoint, e.g. https://<account>.table.core.windows.net."""
        client = TableClient(endpoint, table_name, credential=credential)
        return cls(client, owned_credential=credential if owns_credential else None)

    @property
    def table_name(self) -> str:
        return self._client.table_name

    @property
    def endpoint(self) -> str:
        return self._client.url

    async def record(self, transition: Transition) -> None:
        await self._ensure_table()
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
        await self._client.upsert_entity(entity, mode=UpdateMode.REPLACE)

    async def history(self, request_id: str) -> list[Transition]:
        await self._ensure_table()
        entities = self._client.query_entities(
            "PartitionKey eq @request_id", parameters={"request_id": partition_key(request_id)}, select=_PROPERTIES
        )
        rows = [entity async for entity in entities]
        rows.sort(key=lambda entity: str(entity["RowKey"]))  # the service returns RowKey order; do not rely on it
        return [_transition(entity) for entity in rows]

    async def summary(self, limit: int = 50) -> list[RequestState]:
        # A full table scan: fine for the volumes of a pilot, O(all transitions) per call. When it is
        # not, keep one "latest" entity per request (a separate table, upserted with an ETag
        # condition alongside each record) and read that instead.
        check_limit(limit)
        await self._ensure_table()
        latest: dict[str, dict[str, Any]] = {}
        counts: dict[str, int] = {}
        async for entity in self._client.list_entities(select=_PROPERTIES):
            request_id = str(entity["PartitionKey"])
            counts[request_id] = counts.get(request_id, 0) + 1
            if request_id not in latest or str(entity["RowKey"]) > str(latest[request_id]["RowKey"]):
                latest[request_id] = dict(entity)
        newest_first = sorted(latest.values(), key=lambda entity: (str(entity["RowKey"]), str(entity["PartitionKey"])))
        newest_first.reverse()
        return [
            RequestState.of(_transition(entity), attempts=counts[str(entity["PartitionKey"])])
            for entity in newest_first[:limit]
        ]

    async def close(self) -> None:
        await self._client.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()

    async def _ensure_table(self) -> None:
        if self._table_ready:
            return
        async with self._table_lock:
            if not self._table_ready:
                with contextlib.suppress(ResourceExistsError):  # the usual case after the first start
                    await self._client.create_table()
                self._table_ready = True


def _transition(entity: dict[str, Any] | Any) -> Transition:
    return Transition(
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
