"""Where the directory keeps its objects: SQLite, one JSON document per object.

":memory:" gives each test a fresh tenant; a file lets `onboard sandbox` keep its state across
restarts. Every write is its own committed transaction, made before the HTTP answer is sent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class DocumentStore:
    def __init__(self, path: Path | str = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def put(self, kind: str, object_id: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO objects (kind, id, body) VALUES (?, ?, ?) ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
                (kind, object_id, json.dumps(body)),
            )

    def delete(self, kind: str, object_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM objects WHERE kind = ? AND id = ?", (kind, object_id))

    def all(self, kind: str) -> Iterator[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM objects WHERE kind = ? ORDER BY rowid", (kind,)).fetchall()
        for (body,) in rows:
            yield json.loads(body)

    def close(self) -> None:
        with self._lock:
            self._db.close()
