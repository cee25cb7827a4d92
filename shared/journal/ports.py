"""The journal as the app and the CLI see it; adapters: sqlite.py (local), table_storage.py (Azure)."""

from __future__ import annotations

from typing import Protocol

from shared.journal.model import RequestState, Transition


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

    async def close(self) -> None: ...
