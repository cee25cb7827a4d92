"""Fixtures shared by the suite: the stand-ins live in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.azurite",
    "tests.fixtures.servicebus",
    "tests.fixtures.tenant",
    "tests.fixtures.pipeline",
]
