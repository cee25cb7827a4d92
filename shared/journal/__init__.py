"""Status journal: every transition of every request, in SQLite locally or Azure Table Storage.

The Table Storage adapter lives in shared.journal.table_storage and is imported only where used.
"""

from shared.journal.factory import open_journal
from shared.journal.model import RequestState, Transition, TransitionKind
from shared.journal.ports import Journal
from shared.journal.setting import JournalSettingError, parse_journal_setting, sqlite_file
from shared.journal.sqlite import SqliteJournal

__all__ = [
    "Journal",
    "JournalSettingError",
    "RequestState",
    "SqliteJournal",
    "Transition",
    "TransitionKind",
    "open_journal",
    "parse_journal_setting",
    "sqlite_file",
]
