"""python -m standins.tenant_sandbox [--port 8765] [--seed FILE] [--knobs FILE] [--database FILE]: serve in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from standins.tenant_sandbox.knobs import Knobs
from standins.tenant_sandbox.model import TenantSeed
from standins.tenant_sandbox.server import TenantSandbox

app = typer.Typer(add_completion=False, help="Run the tenant sandbox (Graph and Exchange) until Ctrl+C.")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8765,
    seed: Annotated[Path | None, typer.Option(dir_okay=False, help="Tenant seed JSON (default: the demo)")] = None,
    knobs: Annotated[Path | None, typer.Option(dir_okay=False, help="Knobs JSON: latency, throttling, faults")] = None,
    database: Annotated[
        Path | None, typer.Option(dir_okay=False, help="SQLite file that keeps the tenant (default: memory)")
    ] = None,
) -> None:
    try:
        tenant_seed = TenantSeed.load(seed) if seed else TenantSeed.demo()
    except ValueError as error:  # pydantic's ValidationError included
        raise typer.BadParameter(str(error), param_hint="--seed") from None
    try:
        sandbox_knobs = Knobs.load(knobs) if knobs else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--knobs") from None
    try:
        sandbox = TenantSandbox(tenant_seed, host=host, port=port, knobs=sandbox_knobs, database=database)
    except ValueError as error:  # e.g. a database that holds another tenant
        raise typer.BadParameter(str(error), param_hint="--database") from None
    # The settings a client of this sandbox needs, ready to paste into .env.
    print(f"ONBOARDING_TENANT_ID={sandbox.tenant_id}")
    print(f"ONBOARDING_GRAPH_BASE_URL={sandbox.graph_base_url}")
    print(f"ONBOARDING_EXCHANGE_BASE_URL={sandbox.exchange_base_url}")
    print("ONBOARDING_DIRECTORY_CREDENTIAL=sandbox")
    print("ONBOARDING_ALLOW_SANDBOX_CREDENTIAL=true", flush=True)  # the app refuses the sandbox credential without it
    sandbox.serve_forever()


if __name__ == "__main__":
    app()
