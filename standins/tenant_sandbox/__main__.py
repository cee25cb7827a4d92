"""python -m standins.tenant_sandbox --port 8765 [--seed FILE]: serve in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path

from standins.tenant_sandbox.knobs import Knobs
from standins.tenant_sandbox.model import TenantSeed
from standins.tenant_sandbox.server import TenantSandbox


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m standins.tenant_sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=Path, default=None, help="tenant seed JSON (default: the demo tenant)")
    parser.add_argument("--knobs", type=Path, default=None, help="knobs JSON: latency, throttling, faults (README)")
    parser.add_argument(
        "--database", type=Path, default=None, help="SQLite file that keeps the tenant (default: memory)"
    )
    args = parser.parse_args()
    seed = TenantSeed.load(args.seed) if args.seed else TenantSeed.demo()
    knobs = Knobs.load(args.knobs) if args.knobs else None
    sandbox = TenantSandbox(seed, host=args.host, port=args.port, knobs=knobs, database=args.database)
    print(f"ONBOARDING_TENANT_ID={sandbox.tenant_id}")
    print(f"ONBOARDING_TENANT_DOMAIN={sandbox.tenant_domain}")
    print(f"ONBOARDING_GRAPH_BASE_URL={sandbox.graph_base_url}")
    print(f"ONBOARDING_EXCHANGE_BASE_URL={sandbox.exchange_base_url}")
    print("ONBOARDING_CREDENTIAL=sandbox", flush=True)
    sandbox.serve_forever()


if __name__ == "__main__":
    main()
