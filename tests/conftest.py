"""Fixtures shared by the suite: the stand-ins live in tests/fixtures/.

Tests that start a stand-in (the Service Bus emulator, the tenant sandbox, Azurite, the local
host or a child process) carry the `stack` marker, so `pytest -m "not stack"` is a fast loop of
the pure tests; `make test` runs everything.
"""

import pytest

pytest_plugins = [
    "tests.fixtures.azurite",
    "tests.fixtures.servicebus",
    "tests.fixtures.tenant",
    "tests.fixtures.pipeline",
]

# Requesting any of these fixtures starts a stand-in.
STACK_FIXTURES = frozenset(
    {
        "stack",
        "readback",
        "start_emulator",
        "servicebus_emulator",
        "tenant_sandbox",
        "graph_directory",
        "exchange_directory",
        "azurite",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)
