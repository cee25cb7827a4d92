"""One setting value chooses the journal; see `parse_journal_setting` for the accepted forms.

The Table Storage adapter (azure-data-tables) is imported only when the setting names it, so a
function app that journals to SQLite, or not at all, never loads it.
"""

from __future__ import annotations

from azure.core.credentials_async import AsyncTokenCredential

from shared.journal.ports import Journal
from shared.journal.setting import (
    ConnectionStringTarget,
    EndpointTarget,
    JournalSettingError,
    SqliteTarget,
    parse_journal_setting,
)
from shared.journal.sqlite import SqliteJournal


def open_journal(setting: str | None, credential: AsyncTokenCredential | None = None) -> Journal | None:
    """Open the journal a setting value names (forms: `parse_journal_setting`); None means no journal.

    Table Storage by URL uses the credential given, or else a DefaultAzureCredential owned (and
    closed) by the journal; a writer needs "Storage Table Data Contributor", a reader "Storage Table
    Data Reader". Only a write creates a missing table; reading one finds nothing.
    """
    match parse_journal_setting(setting):
        case None:
            return None
        case SqliteTarget(path):
            return SqliteJournal(path)
        case EndpointTarget(endpoint, table):
            from azure.identity.aio import DefaultAzureCredential

            from shared.journal.table_storage import TableStorageJournal

            if credential is not None:
                return TableStorageJournal.from_endpoint(endpoint, table, credential)
            return TableStorageJournal.from_endpoint(endpoint, table, DefaultAzureCredential(), owns_credential=True)
        case ConnectionStringTarget(table, connection_string):
            from shared.journal.table_storage import TableStorageJournal

            try:
                return TableStorageJournal.from_connection_string(connection_string, table)
            except ValueError:
                # The SDK's message may quote the connection string; ours does not.
                raise JournalSettingError(
                    "journal setting tables: the connection string is not usable (it needs AccountName and "
                    "AccountKey, and TableEndpoint for Azurite)"
                ) from None
