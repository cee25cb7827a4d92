"""Tenant sandbox throughput: a burst of Graph and Exchange requests on loopback, no fault injected.

.venv/bin/python -m benchmarks.tenant_sandbox [--requests 2000] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import httpx

from standins.tenant_sandbox import TenantSandbox, TenantSeed
from standins.tenant_sandbox.credential import FullRightsCredential


async def burst(sandbox: TenantSandbox, requests: int, concurrency: int) -> tuple[Counter[int], float]:
    credential = FullRightsCredential(sandbox.tenant_id)
    graph = {"Authorization": f"Bearer {(await credential.get_token('https://graph.microsoft.com/.default')).token}"}
    exchange = {
        "Authorization": f"Bearer {(await credential.get_token('https://outlook.office365.com/.default')).token}",
        "X-AnchorMailbox": sandbox.authorization("exchange")["X-AnchorMailbox"],
    }
    invoke = f"{sandbox.exchange_base_url}/adminapi/beta/{sandbox.tenant_id}/InvokeCommand"
    body = {"CmdletInput": {"CmdletName": "Get-DistributionGroup", "Parameters": {"Identity": "partners@contoso.com"}}}
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)

    async with httpx.AsyncClient(limits=limits, timeout=30) as http:

        async def one(index: int) -> None:
            async with gate:
                if index % 2:
                    response = await http.post(invoke, json=body, headers=exchange)
                else:
                    url = f"{sandbox.graph_base_url}/groups?$filter=mail eq 'partners@contoso.com'"
                    response = await http.get(url, headers=graph)
                statuses[response.status_code] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        return statuses, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    arguments = parser.parse_args()
    with TenantSandbox(TenantSeed.demo()) as sandbox:
        statuses, seconds = asyncio.run(burst(sandbox, arguments.requests, arguments.concurrency))
    errors = sum(count for status, count in statuses.items() if status >= 400)
    print(
        f"Tenant sandbox, {arguments.requests} requests (half Graph, half Exchange), concurrency {arguments.concurrency}"
    )
    print(
        f"  {arguments.requests / seconds:.0f} requests/s ({seconds:.2f} s); statuses {dict(statuses)}; errors {errors}"
    )


if __name__ == "__main__":
    main()
