"""A durable MessageLog in SQLite: each change is committed before the broker acknowledges it."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from standins.servicebus_emulator.store import StoredMessage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    sequence_number INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    encoded BLOB NOT NULL,
    message_id TEXT,
    enqueued_at TEXT NOT NULL,
    visible_at TEXT NOT NULL,
    delivery_count INTEGER NOT NULL,
    deferred INTEGER NOT NULL,
    dead_letter_reason TEXT,
    dead_letter_description TEXT,
    expires_at TEXT
);
-- The highest sequence number ever stored, kept by a trigger in the same statement (no extra write):
-- completed messages leave `messages`, and their numbers must not be handed out again after a restart.
CREATE TABLE IF NOT EXISTS last_sequence (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS keep_last_sequence AFTER INSERT ON messages BEGIN
    INSERT INTO last_sequence VALUES (1, NEW.sequence_number)
    ON CONFLICT (id) DO UPDATE SET value = MAX(value, excluded.value);
END;
CREATE TABLE IF NOT EXISTS seen_message_ids (
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (queue, message_id)
);
"""


class SqliteMessageLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: every statement is durable on return. Only the broker thread writes.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        if "expires_at" not in columns:  # a database written before messages expired: they never do
            self._db.execute("ALTER TABLE messages ADD COLUMN expires_at TEXT")

    def saved(self, queue: str, message: StoredMessage) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO messages (sequence_number, queue, encoded, message_id, enqueued_at, visible_at,"
            " delivery_count, deferred, dead_letter_reason, dead_letter_description, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.sequence_number,
                queue,
                message.encoded,
                message.message_id,
                message.enqueued_at.isoformat(),
                message.visible_at.isoformat(),
                message.delivery_count,
                int(message.deferred),
                message.dead_letter_reason,
                message.dead_letter_description,
                message.expires_at.isoformat() if message.expires_at else None,
            ),
        )

    def removed(self, sequence_number: int) -> None:
        self._db.execute("DELETE FROM messages WHERE sequence_number = ?", (sequence_number,))

    def seen(self, queue: str, message_id: str, at: datetime) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO seen_message_ids VALUES (?, ?, ?)", (queue, message_id, at.isoformat())
        )

    def load(self) -> tuple[list[tuple[str, StoredMessage]], list[tuple[str, str, datetime]], int]:
        """What `QueueStore.restore` takes: the messages, the duplicate-detection history, the last sequence number."""
        messages = [
            (
                row[1],
                StoredMessage(
                    sequence_number=row[0],
                    encoded=bytes(row[2]),
                    message_id=row[3],
                    enqueued_at=datetime.fromisoformat(row[4]),
                    visible_at=datetime.fromisoformat(row[5]),
                    delivery_count=row[6],
                    deferred=bool(row[7]),
                    dead_letter_reason=row[8],
                    dead_letter_description=row[9],
                    expires_at=datetime.fromisoformat(row[10]) if row[10] else None,
                ),
            )
            for row in self._db.execute(
                "SELECT sequence_number, queue, encoded, message_id, enqueued_at, visible_at, delivery_count,"
                " deferred, dead_letter_reason, dead_letter_description, expires_at"
                " FROM messages ORDER BY sequence_number"
            )
        ]
        seen = [
            (queue, message_id, datetime.fromisoformat(at))
            for queue, message_id, at in self._db.execute("SELECT queue, message_id, seen_at FROM seen_message_ids")
        ]
        last = self._db.execute("SELECT value FROM last_sequence WHERE id = 1").fetchone()
        return messages, seen, last[0] if last else 0

    def close(self) -> None:
        self._db.close()
