"""The whole local stack: Service Bus emulator, tenant sandbox, and the local Functions host.

Used by `onboard demo`, `onboard sandbox` and the end-to-end tests, so all three run the
same wiring: by default the app runs with the demo's policy (tools/demo/policy.json), which fits
the sandbox's seeded tenant. Everything started here is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func

from cli.grant_plan import GrantPlan
from shared.bootstrap import close_services, configure_services
from shared.settings import SERVICEBUS_CONNECTION
from shared.startup import check_start
from standins.local_app import LOCAL_PLAN, grant_local_app
from standins.local_host import LocalHost, load_function_app
from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator
from standins.tenant_sandbox import Knobs, TenantSandbox, TenantSeed
from standins.tenant_sandbox.credential import SandboxCredential
from tools.demo import DEMO_POLICY


@dataclass(frozen=True)
class LocalStack:
    emulator: ServiceBusEmulator
    sandbox: TenantSandbox
    environment: dict[str, str]  # the app settings a client of this stack needs
    journal_database: Path  # what `onboard status` reads (ONBOARDING_JOURNAL in `environment`)


@contextmanager
def local_stack(
    *,
    seed: TenantSeed | None = None,
    emulator_config: EmulatorConfig | None = None,
    policy_file: Path = DEMO_POLICY,
    servicebus_port: int = 0,
    servicebus_management_port: int = 0,
    servicebus_database: Path | None = None,
    sandbox_port: int = 0,
    sandbox_database: Path | None = None,
    sandbox_knobs: Knobs | None = None,
    journal_database: Path | None = None,
    settings: Mapping[str, str] | None = None,
    grant: GrantPlan = LOCAL_PLAN,
) -> Iterator[LocalStack]:
    """Start the stand-ins; without a database path each keeps its state only while it runs.

    The app's identity holds what `onboard grant` gives for `grant` (standins/local_app.py)."""
    emulator = ServiceBusEmulator(
        emulator_config or EmulatorConfig.default(),
        port=servicebus_port,
        management_port=servicebus_management_port,
        database=servicebus_database,
    )
    sandbox = TenantSandbox(
        seed or TenantSeed.demo(), port=sandbox_port, database=sandbox_database, knobs=sandbox_knobs
    )
    with ExitStack() as cleanup:
        cleanup.callback(emulator.stop)  # run last to first: the sandbox stops before the emulator
        cleanup.callback(sandbox.stop)
        if journal_database is None:
            journal_database = Path(cleanup.enter_context(tempfile.TemporaryDirectory())) / "journal.db"
        emulator.start()
        sandbox.start()
        client_id = grant_local_app(sandbox, grant)
        environment = {
            SERVICEBUS_CONNECTION: emulator.connection_string,
            "ONBOARDING_TENANT_ID": sandbox.tenant_id,
            "ONBOARDING_GRAPH_BASE_URL": sandbox.graph_base_url,
            "ONBOARDING_EXCHANGE_BASE_URL": sandbox.exchange_base_url,
            "ONBOARDING_DIRECTORY_CREDENTIAL": "sandbox",
            "ONBOARDING_ALLOW_SANDBOX_CREDENTIAL": "true",
            "ONBOARDING_MANAGED_IDENTITY_CLIENT_ID": client_id,
            "ONBOARDING_POLICY_FILE": str(policy_file),
            # Replication lag in the sandbox is seconds, not minutes: retry on that scale locally.
            "ONBOARDING_RETRY_BASE_DELAY_SECONDS": "0.5",
            "ONBOARDING_RETRY_MAX_DELAY_SECONDS": "5",
            "ONBOARDING_JOURNAL": f"sqlite:{journal_database.resolve()}",
            # Tests script faults call by call; a start-up self-check would take some (`onboard sandbox` turns it on).
            "ONBOARDING_SELF_CHECK_AT_START": "false",
            # `onboard doctor` reads the queues' properties here (the emulator's management port).
            "ONBOARDING_SERVICEBUS_MANAGEMENT_CONNECTION": emulator.management_connection_string,
            **(settings or {}),
        }
        yield LocalStack(emulator, sandbox, environment, journal_database)


@contextmanager
def app_settings(environment: Mapping[str, str]) -> Iterator[None]:
    """Expose settings the way Azure does, as environment variables; restore the old ones after."""
    previous = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def supply_sandbox_credential(environment: Mapping[str, str], **adapters: Any) -> None:
    """The app cannot build the sandbox's credential from settings (it is no production code): hand it over,
    with any other adapters given (keywords of shared.bootstrap.build_services)."""
    if environment.get("ONBOARDING_DIRECTORY_CREDENTIAL") == "sandbox":
        adapters = {"credential": sandbox_app_credential(environment), **adapters}
    if adapters:
        configure_services(**adapters)


def sandbox_app_credential(environment: Mapping[str, str]) -> SandboxCredential:
    """The app's identity at the sandbox the settings name (its Exchange URL is the sandbox's base URL)."""
    client_id = environment.get("ONBOARDING_MANAGED_IDENTITY_CLIENT_ID")
    if not client_id:
        raise RuntimeError(
            "ONBOARDING_MANAGED_IDENTITY_CLIENT_ID is not set: the app's identity in the tenant sandbox "
            "(onboard sandbox --write-env writes it)"
        )
    return SandboxCredential(
        environment.get("ONBOARDING_TENANT_ID", ""),
        authority=environment.get("ONBOARDING_EXCHANGE_BASE_URL", ""),
        client_id=client_id,
    )


def start_function_app(module_name: str = "function_app") -> func.FunctionApp:
    """function_app.py as the Functions host starts it: imported, which runs its start-up check
    (shared/startup.py); run again here when this process imported it before, as a new worker would."""
    if module_name in sys.modules:
        check_start()
    return load_function_app(module_name)


@asynccontextmanager
async def running_host(
    environment: Mapping[str, str],
    *,
    concurrency: int | None = None,
    app: func.FunctionApp | None = None,
    adapters: Mapping[str, Any] | None = None,
) -> AsyncIterator[LocalHost]:
    """The local Functions host running function_app.py (or `app`) against `environment` until the block ends;
    `adapters`: what the app's services are built with besides (keywords of shared.bootstrap.build_services)."""
    with app_settings(environment):
        started = app or start_function_app()  # before anything is set up: it may refuse to start
        supply_sandbox_credential(environment, **(adapters or {}))
        host = LocalHost(started, environment=environment, concurrency=concurrency)
        stop = asyncio.Event()
        task = asyncio.create_task(host.run(stop))
        try:
            yield host
        finally:
            stop.set()
            await task
            await close_services()
