"""The journal under test, on SQLite and on Azurite's Table Storage (one table per test)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.journal import Journal, open_journal
from tests.fixtures.azurite import Azurite

_tables = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("table-storage", marks=pytest.mark.stack)])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    if request.param == "sqlite":
        opened = open_journal(f"sqlite://{tmp_path}/journal.db")
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        # One table per test: the emulator lives for the whole session.
        opened = open_journal(f"tables:TableName=journal{next(_tables)};{azurite.connection_string}")
    assert opened is not None
    yield opened
    await opened.close()
