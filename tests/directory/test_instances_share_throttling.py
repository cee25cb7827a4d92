"""Many instances, one tenant: a 429 to one instance holds every instance's calls to that face, through
the journal's store they all read; Exchange's concurrency answer holds nobody. Real clients over HTTP
against the tenant sandbox; each "instance" has its own clients and its own journal connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.directory.errors import ThrottledError
from shared.directory.exchange import ExchangeOnlineClient
from shared.directory.graph import MsGraphDirectory
from shared.directory.throttle import ThrottleGate
from shared.journal import SqliteJournal
from standins.local_app import app_credential, grant_local_app
from standins.tenant_sandbox import TenantSandbox

PARTNERS = "7c1d2e3f-0001-4b5c-8d9e-0f1a2b3c4d01"


@dataclass
class Instance:
    graph: MsGraphDirectory
    exchange: ExchangeOnlineClient
    journal: SqliteJournal  # the store every instance's gates share


@pytest.fixture
async def instances(tenant_sandbox: TenantSandbox, tmp_path: Path) -> AsyncIterator[Callable[[int], Instance]]:
    """Instances of the app on one journal file, each with clients of its own (no in-process retry, so
    that every 429 is seen), reading the shared holds before every call."""
    grant_local_app(tenant_sandbox)
    async with AsyncExitStack() as cleanup:

        def start(retries: int = 0) -> Instance:
            journal = SqliteJournal(tmp_path / "journal.db")
            cleanup.push_async_callback(journal.close)
            credential = app_credential(tenant_sandbox)
            graph_gate = ThrottleGate("graph", shared=journal, refresh_seconds=0)
            exchange_gate = ThrottleGate("exchange", shared=journal, refresh_seconds=0)
            graph = MsGraphDirectory(
                credential, base_url=tenant_sandbox.graph_base_url, max_in_process_retries=retries, gate=graph_gate
            )
            exchange = ExchangeOnlineClient(
                credential,
                tenant_id=tenant_sandbox.tenant_id,
                base_url=tenant_sandbox.exchange_base_url,
                max_in_process_retries=retries,
                gate=exchange_gate,
            )
            cleanup.push_async_callback(graph.close)
            cleanup.push_async_callback(exchange.close)
            return Instance(graph, exchange, journal)

        yield start


def throttled(sandbox: TenantSandbox) -> list[str]:
    return [e.face for e in sandbox.request_log if e.status == 429]


async def test_a_429_to_one_instance_holds_the_others_on_that_face(
    tenant_sandbox: TenantSandbox, instances: Callable[[int], Instance]
) -> None:
    first, second = instances(0), instances(0)
    # One call a second per face and app, none saved up: the first call of each face takes the token.
    tenant_sandbox.set_knobs(throttle={"graph": {"requests_per_second": 1, "burst": 1}})
    tenant_sandbox.request_log.clear()
    assert await first.graph.get_group(PARTNERS)
    with pytest.raises(ThrottledError):
        await second.graph.get_group(PARTNERS)  # told to wait: the hold is written for every instance
    assert await first.graph.get_group(PARTNERS)  # waits the hold out instead of collecting a 429 of its own
    assert throttled(tenant_sandbox) == ["graph"]


async def test_exchanges_spent_budget_holds_every_instance_before_any_429(
    tenant_sandbox: TenantSandbox, instances: Callable[[int], Instance]
) -> None:
    """Rate-Limit-Remaining: 0 to one instance holds the others until Rate-Limit-Reset, so the next
    instance's call waits for the budget instead of spending a 429 to learn it."""
    first, second = instances(0), instances(0)
    tenant_sandbox.set_knobs(throttle={"exchange": {"requests_per_second": 1, "burst": 1}})
    tenant_sandbox.request_log.clear()
    await first.exchange.get_accepted_domains()  # takes the only token: the answer says none is left
    await second.exchange.get_accepted_domains()
    assert [e.status for e in tenant_sandbox.request_log] == [200, 200]


async def test_a_budget_down_to_the_requests_on_their_way_holds_every_instance(
    tenant_sandbox: TenantSandbox, instances: Callable[[int], Instance]
) -> None:
    """Rate-Limit-Remaining counts the requests that reached Exchange; as many as a tenant has in flight
    (9) may be on their way from the instances, each to meet a spent budget with a 429. An answer that
    leaves no more than those holds every instance until Rate-Limit-Reset; one that leaves more does not."""
    first, second = instances(0), instances(0)
    # A budget of 100 that refills too slowly to count during the test (one request in 100 s).
    tenant_sandbox.set_knobs(throttle={"exchange": {"requests_per_second": 0.01, "burst": 100}})
    for _ in range(90):
        await first.exchange.get_accepted_domains()
    assert await second.journal.read_holds() == {}  # 10 left: more than can be on their way
    await first.exchange.get_accepted_domains()
    assert "exchange" in await second.journal.read_holds()  # 9 left: theirs


async def test_a_small_budget_is_used_to_its_end(
    tenant_sandbox: TenantSandbox, instances: Callable[[int], Instance]
) -> None:
    """The requests on their way are at most a tenth of the budget: a budget of 5 holds nobody until it is spent."""
    one = instances(0)
    tenant_sandbox.set_knobs(throttle={"exchange": {"requests_per_second": 0.01, "burst": 5}})
    for _ in range(4):
        await one.exchange.get_accepted_domains()
    assert await one.journal.read_holds() == {}
    await one.exchange.get_accepted_domains()
    assert "exchange" in await one.journal.read_holds()


async def test_the_concurrency_answer_holds_no_instance_and_the_call_tries_again(
    tenant_sandbox: TenantSandbox, instances: Callable[[int], Instance]
) -> None:
    """Too many requests in flight is not a rate: the refused call waits a moment and tries again,
    while the gate stays open for every other call (holding it would leave the tenant idle)."""
    one = instances(1)
    tenant_sandbox.set_knobs(latency_ms=300, exchange_concurrency={"requests": 1})
    tenant_sandbox.request_log.clear()
    first = asyncio.create_task(one.exchange.get_accepted_domains())
    await asyncio.sleep(0.1)  # the second arrives while the first is in flight
    assert await one.exchange.get_accepted_domains() == await first
    assert sorted(e.status for e in tenant_sandbox.request_log) == [200, 200, 429]
    assert await one.journal.read_holds() == {}  # nobody was told to wait


async def test_an_instance_keeps_its_share_of_the_tenants_requests_in_flight(tenant_sandbox: TenantSandbox) -> None:
    """ONBOARDING_EXCHANGE_CONCURRENT_REQUESTS: an instance sized to the tenant's limit queues its own
    calls instead of collecting the concurrency answer."""
    grant_local_app(tenant_sandbox)
    tenant_sandbox.set_knobs(latency_ms=200, exchange_concurrency={"requests": 2})
    exchange = ExchangeOnlineClient(
        app_credential(tenant_sandbox),
        tenant_id=tenant_sandbox.tenant_id,
        base_url=tenant_sandbox.exchange_base_url,
        max_concurrent_requests=2,
    )
    tenant_sandbox.request_log.clear()
    try:
        await asyncio.gather(*(exchange.get_accepted_domains() for _ in range(6)))
    finally:
        await exchange.close()
    assert [e.status for e in tenant_sandbox.request_log] == [200] * 6
