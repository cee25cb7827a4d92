"""`onboard sandbox`: the Service Bus emulator and the tenant sandbox in the foreground, with the
settings a client needs to reach them; and the sandbox's credential, for pointing `onboard grant` at
the sandbox. A local tool: the one place besides `host` and `demo` where the CLI uses the stand-ins."""

from __future__ import annotations

import asyncio
import errno
import shlex
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import typer

from cli.plumbing import configure_logging, console, fail, until_interrupted
from cli.settings import ENV_FILE, write_env_file

if TYPE_CHECKING:
    from collections.abc import Mapping

    from azure.core.credentials_async import AsyncTokenCredential

    from cli.doctor import Credentials


def serve_sandbox(
    *,
    servicebus_port: int,
    servicebus_management_port: int,
    tenant_port: int,
    state_dir: Path,
    seed: Path | None,
    knobs: Path | None,
    write_env: bool,
    verbose: bool,
) -> None:
    """Run both stand-ins until Ctrl-C; a bad seed or knobs file, or a port in use, stops before starting."""
    from shared.journal import SqliteJournal
    from standins.stack import local_stack
    from standins.tenant_sandbox import Knobs, TenantSeed
    from tools.demo import WELCOME_SETTINGS

    configure_logging(verbose)
    try:
        tenant_seed = TenantSeed.load(seed) if seed else None
    except ValueError as error:  # pydantic's ValidationError included: one readable message
        raise typer.BadParameter(str(error), param_hint="--seed") from None
    try:
        sandbox_knobs = Knobs.load(knobs) if knobs else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--knobs") from None
    busy = [
        (port, option, what)
        for port, option, what in (
            (servicebus_port, "--servicebus-port", "Service Bus emulator"),
            (servicebus_management_port, "--servicebus-management-port", "Service Bus emulator's management endpoint"),
            (tenant_port, "--tenant-port", "tenant sandbox"),
        )
        if _port_in_use(port)
    ]
    if busy:  # all of them at once: one try finds every port to change
        raise fail(_ports_in_use(busy))
    state_dir.mkdir(parents=True, exist_ok=True)

    async def serve() -> None:
        with local_stack(
            seed=tenant_seed,
            sandbox_knobs=sandbox_knobs,
            servicebus_port=servicebus_port,
            servicebus_database=state_dir / "servicebus.db",
            sandbox_port=tenant_port,
            sandbox_database=state_dir / "tenant.db",
            journal_database=state_dir / "journal.db",
            servicebus_management_port=servicebus_management_port,
            # A person watching `onboard host` sees the app's start-up self-check (tests turn it off).
            settings={**WELCOME_SETTINGS, "ONBOARDING_SELF_CHECK_AT_START": "true"},
        ) as stack:
            # Created now, empty: `onboard status` then tells "nothing handled yet" from a wrong path.
            await SqliteJournal(stack.journal_database).close()
            if write_env:
                write_env_file(stack.environment)
                console.print(f"# Stand-ins are running. Their settings are in {ENV_FILE.resolve()}:")
            else:
                console.print("# Stand-ins are running. Settings for `onboard host` / `onboard submit`")
                console.print("# (put them in .env, or run with --write-env to have them written):")
            for name, value in stack.environment.items():
                console.print(f"{name}={shlex.quote(value)}", highlight=False, soft_wrap=True, markup=False)
            console.print(
                f"# Sandbox knobs and request log: {stack.sandbox.base_url}/_sandbox/knobs, /faults, /requests",
                markup=False,
            )
            console.print("# Ctrl-C stops both.")
            await until_interrupted().wait()

    asyncio.run(serve())


def sandbox_credential(tenant_id: str, graph_url: str) -> AsyncTokenCredential:
    """Tokens only the tenant sandbox accepts; refused for Microsoft's own Graph."""
    from cli.grant_plan import PUBLIC_GRAPH
    from standins.tenant_sandbox.credential import SandboxCredential

    if urlparse(graph_url).hostname == urlparse(PUBLIC_GRAPH).hostname:
        raise typer.BadParameter(
            "the sandbox credential is for the local tenant sandbox only", param_hint="--graph-url"
        )
    # The sandbox's administrator, as an operator's az login is the tenant's: its base URL is Graph's less /v1.0.
    return SandboxCredential.administrator(tenant_id, authority=graph_url.rstrip("/").removesuffix("/v1.0"))


def _ports_in_use(busy: list[tuple[int, str, str]]) -> str:
    if len(busy) == 1:
        ((port, option, what),) = busy
        return (
            f"Port {port} (for the {what}) is already in use, perhaps by another `onboard sandbox`: "
            f"stop that, or pass {option}."
        )
    ports = ", ".join(f"{port} (for the {what}; {option})" for port, option, what in busy)
    return (
        f"Ports {ports} are already in use, perhaps by another `onboard sandbox`: stop that, or pass other "
        "ports with those options."
    )


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the stand-ins bind
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def sandbox_doctor_credentials(environment: Mapping[str, str]) -> Credentials:
    """`onboard doctor` against the stand-ins: the sandbox's administrator for the administrator's half, and
    the local app's identity for the app's half (the sandbox lends it; a managed identity would not)."""
    from cli.doctor import Credentials
    from standins.stack import sandbox_app_credential
    from standins.tenant_sandbox.credential import SandboxCredential

    tenant_id, authority = (
        environment.get("ONBOARDING_TENANT_ID", ""),
        environment.get("ONBOARDING_EXCHANGE_BASE_URL", ""),
    )
    return Credentials(
        operator=lambda: SandboxCredential.administrator(tenant_id, authority=authority),
        app=lambda: sandbox_app_credential(environment),
    )
