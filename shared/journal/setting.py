"""What the journal setting names, parsed without opening anything or loading a storage SDK.

Settings validation uses this at start-up, so importing it must stay cheap: no azure-data-tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

MEMORY = ":memory:"

# Azure's rule for table names (3 to 63 letters or digits, starting with a letter; Azurite applies it
# too), less the six letters the lease table beside the journal's adds ("<table>leases").
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,56}$")
_TABLE_NAME_RULE = "3 to 57 letters or digits, starting with a letter (the lease table beside it adds 'leases')"

FORMS = (
    "sqlite:///absolute/path.db, sqlite:relative/path.db, sqlite::memory:, "
    "https://<account>.table.core.windows.net/<table> (token credential), "
    "or tables:TableName=<table>;<storage connection string>"
)


class JournalSettingError(ValueError):
    """The journal setting is malformed. The message never repeats a connection string."""


@dataclass(frozen=True)
class SqliteTarget:
    path: str  # a file path or ":memory:"


@dataclass(frozen=True)
class EndpointTarget:
    endpoint: str
    table: str


@dataclass(frozen=True)
class ConnectionStringTarget:
    table: str
    connection_string: str = field(repr=False)  # holds a key


JournalTarget = SqliteTarget | EndpointTarget | ConnectionStringTarget


def parse_journal_setting(setting: str | None) -> JournalTarget | None:
    """What a setting value names, without opening anything (settings validation uses this too).

    - ``sqlite:///var/lib/onboard/journal.db``: an absolute path (three slashes, as in file URLs);
      ``sqlite:journal.db``: a path relative to the working directory; ``sqlite::memory:``.
    - ``https://<account>.table.core.windows.net/<table>``: Azure Table Storage with a token credential.
    - ``tables:TableName=<table>;<connection string>``: Table Storage (or Azurite) with a
      connection string; TableName is ours and is removed before the SDK sees the rest.

    None (or blank) means no journal. Raises JournalSettingError naming what is wrong.
    """
    if setting is None or not setting.strip():
        return None
    value = setting.strip()
    scheme, _, rest = value.partition(":")
    match scheme.lower():
        case "sqlite":
            return SqliteTarget(_sqlite_path(rest))
        case "https":
            return EndpointTarget(*_endpoint_and_table(value))
        case "tables":
            return _table_and_connection_string(rest)
        case "http":
            raise JournalSettingError(
                "journal setting: use https:// for a Table Storage endpoint (tokens are only sent over TLS); "
                "for Azurite, use tables:TableName=<table>;<its connection string>"
            )
        case _:
            hint = (
                " (a connection string needs the prefix tables:TableName=<table>;)"
                if "AccountKey=" in value or "TableEndpoint=" in value
                else ""
            )
            # Never echo the value: it may be a connection string with a key.
            raise JournalSettingError(f"journal setting has an unknown form{hint}; expected {FORMS}")


def sqlite_file(setting: str) -> Path | None:
    """The file a sqlite: setting names (None for other forms and :memory:), for readers that must
    not create an empty journal where they expected one."""
    target = parse_journal_setting(setting)
    return Path(target.path) if isinstance(target, SqliteTarget) and target.path != MEMORY else None


def _sqlite_path(rest: str) -> str:
    if rest == MEMORY:
        return MEMORY
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host or not slash:
            raise JournalSettingError(
                "journal setting sqlite://… takes no host: write sqlite:///absolute/path.db or sqlite:relative/path.db"
            )
        rest = "/" + path
    if rest.strip("/") == "":
        raise JournalSettingError("journal setting sqlite: needs a file path or :memory:; expected " + FORMS)
    return rest


def _endpoint_and_table(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise JournalSettingError(
            "journal setting https://… needs a host: https://<account>.table.core.windows.net/<table>"
        )
    if parts.query or parts.fragment or parts.username:
        raise JournalSettingError(
            "journal setting https://… takes no query, fragment or user (a SAS token belongs in neither); "
            "use https://<account>.table.core.windows.net/<table>"
        )
    prefix, _, table = parts.path.rstrip("/").rpartition("/")
    if not table:
        raise JournalSettingError(
            "journal setting https://… names no table: https://<account>.table.core.windows.net/<table>"
        )
    if not _TABLE_NAME.match(table):
        raise JournalSettingError(f"journal setting names table {table!r}: a table name is {_TABLE_NAME_RULE}")
    return f"https://{parts.netloc}{prefix}", table


def _table_and_connection_string(rest: str) -> ConnectionStringTarget:
    pairs = [pair for pair in rest.split(";") if pair.strip()]
    tables = [pair for pair in pairs if pair.strip().lower().startswith("tablename=")]
    if len(tables) != 1:
        raise JournalSettingError(
            "journal setting tables: needs exactly one TableName=<table>; before the connection string"
        )
    table = tables[0].split("=", 1)[1].strip()
    if not _TABLE_NAME.match(table):
        raise JournalSettingError(f"journal setting names table {table!r}: a table name is {_TABLE_NAME_RULE}")
    return ConnectionStringTarget(table, ";".join(pair for pair in pairs if pair not in tables))
