"""Status journal: every transition of every request, in SQLite locally or Azure Table Storage."""

from shared.journal.factory import JournalSettingError, open_journal, sqlite_file
from shared.journal.model import RequestState, Transition, TransitionKind
from shared.journal.ports import Journal
from shared.journal.sqlite import SqliteJournal
from shared.journal.table_storage import TableStorageJournal

__all__ = [
    "Journal",
    "JournalSettingError",
    "RequestState",
    "SqliteJournal",
    "TableStorageJournal",
    "Transition",
    "TransitionKind",
    "open_journal",
    "sqlite_file",
]
