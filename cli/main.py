"""`onboard`: run the demo, the stand-ins or the local host; submit a request; print the contract."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Annotated

import typer
from azure.core.exceptions import AzureError
from azure.servicebus.aio import ServiceBusClient
from pydantic import ValidationError
from rich.console import Console

from cli.grant import grant
from shared.contracts import OnboardingRequest, contract_schemas
from shared.logs import LOG_FORMAT, install_safe_log_records
from shared.settings import SERVICEBUS_CONNECTION, Settings

DEFAULT_STATE_DIR = Path(".onboard")  # `onboard sandbox` keeps its SQLite files here

app = typer.Typer(help="Onboard external people into Microsoft 365 groups.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)
app.command()(grant)


def _configure_logging(verbose: bool) -> None:
    install_safe_log_records()
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    # The AMQP and HTTP stacks are chatty at INFO: keep them to warnings unless asked.
    for noisy in ("azure", "uamqp", "httpx", "uvicorn", "proton"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _until_interrupted() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all outcomes.")] = 90.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the pipeline's log.")] = False,
) -> None:
    """Start the stand-ins and the local host, onboard one sample per group kind, print the outcomes."""
    from cli.demo import run_demo

    _configure_logging(verbose)
    try:
        succeeded = asyncio.run(run_demo(console, within_seconds=timeout))
    except KeyboardInterrupt:
        errors.print("Interrupted; everything started was stopped.")
        raise typer.Exit(130) from None
    raise typer.Exit(0 if succeeded else 1)


@app.command()
def sandbox(
    servicebus_port: Annotated[int, typer.Option(help="AMQP port of the Service Bus emulator.")] = 5672,
    tenant_port: Annotated[int, typer.Option(help="HTTP port of the tenant sandbox.")] = 8765,
    state_dir: Annotated[
        Path,
        typer.Option(help="Where the emulator's messages and the tenant's objects are kept across restarts (SQLite)."),
    ] = DEFAULT_STATE_DIR,
    seed: Annotated[Path | None, typer.Option(help="Tenant seed JSON for a new tenant (default: the demo)")] = None,
    knobs: Annotated[Path | None, typer.Option(help="Sandbox knobs JSON: latency, throttling, faults")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the Service Bus emulator and the tenant sandbox in the foreground; print the settings a client needs."""
    from standins.stack import WELCOME_SETTINGS, local_stack
    from standins.tenant_sandbox import Knobs, TenantSeed

    _configure_logging(verbose)
    try:
        tenant_seed = TenantSeed.load(seed) if seed else None
    except ValueError as error:  # pydantic's ValidationError included: one readable message
        raise typer.BadParameter(str(error), param_hint="--seed") from None
    try:
        sandbox_knobs = Knobs.load(knobs) if knobs else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--knobs") from None
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
            settings=WELCOME_SETTINGS,
        ) as stack:
            console.print("# Stand-ins are running. Settings for `onboard host` / `onboard submit` (e.g. in .env):")
            for name, value in stack.environment.items():
                console.print(f"{name}={value}", highlight=False, soft_wrap=True)
            console.print(
                f"# Sandbox knobs and request log: {stack.sandbox.base_url}/_sandbox/knobs, /faults, /requests"
            )
            console.print("# Ctrl-C stops both.")
            await _until_interrupted().wait()

    asyncio.run(serve())


@app.command()
def host(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = True) -> None:
    """Run function_app.py's triggers against the configured namespace and tenant (emulator or Azure)."""
    from shared.bootstrap import close_services
    from standins.local_host import LocalHost, load_function_app
    from standins.stack import supply_sandbox_credential

    _configure_logging(verbose)
    _load_settings()
    supply_sandbox_credential(os.environ)

    async def serve() -> None:
        local_host = LocalHost(load_function_app())
        try:
            await local_host.run(_until_interrupted())
        finally:
            await close_services()

    asyncio.run(serve())


@app.command()
def submit(
    email: Annotated[str, typer.Option(help="The external person's email address.")],
    display_name: Annotated[str, typer.Option(help="Name shown in the address book.")],
    group: Annotated[str, typer.Option(help="Target group: SMTP address or object id.")],
    source_system: Annotated[str, typer.Option(help="Who is asking (must be listed in the policy).")],
    first_name: Annotated[str | None, typer.Option()] = None,
    last_name: Annotated[str | None, typer.Option()] = None,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key; defaults to a new id.")] = None,
    no_external_senders: Annotated[
        bool, typer.Option("--no-external-senders", help="The person need not be able to mail the group.")
    ] = False,
    reply_to: Annotated[str | None, typer.Option(help="Queue for the outcome event.")] = None,
) -> None:
    """Validate one request and put it on queue create-contact."""
    from cli.upstream import submit as submit_requests

    settings = _load_settings()
    target = {"smtp_address": group} if "@" in group else {"object_id": group}
    try:
        request = OnboardingRequest.model_validate(
            {
                "external_email": email,
                "display_name": display_name,
                "first_name": first_name,
                "last_name": last_name,
                "group": target,
                "source_system": source_system,
                "request_id": request_id,
                "allow_external_senders": not no_external_senders,
            }
        )
    except ValidationError as error:
        errors.print(f"[red]Invalid request:[/] {error}")
        raise typer.Exit(2) from None
    if settings.servicebus_connection_string is None:
        errors.print(f"[red]{SERVICEBUS_CONNECTION} (a connection string) is needed to submit.[/]")
        raise typer.Exit(2)

    async def send() -> list[str]:
        assert settings.servicebus_connection_string is not None
        async with ServiceBusClient.from_connection_string(
            settings.servicebus_connection_string.get_secret_value()
        ) as client:
            return await submit_requests(client, [request], reply_to=reply_to)

    (sent_id,) = asyncio.run(send())
    console.print(f"Submitted request {sent_id}.")


@app.command()
def status(
    request_id: Annotated[
        str | None, typer.Argument(help="One request's history; omit for a summary by state.")
    ] = None,
    journal: Annotated[
        str,
        typer.Option(
            envvar="ONBOARDING_JOURNAL",
            show_envvar=True,
            show_default=True,
            help="The journal setting the app uses (sqlite:<path>, https://<account>.table.core.windows.net/<table>, "
            "tables:TableName=<table>;<connection string>).",
        ),
    ] = f"sqlite:{DEFAULT_STATE_DIR / 'journal.db'}",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Requests in the summary, newest first.")] = 50,
) -> None:
    """Print one request's transitions (stage, decision, attempt, cause), or where the latest requests stand."""
    from cli.status import status_report
    from shared.journal import JournalSettingError, open_journal, sqlite_file

    try:
        local_file = sqlite_file(journal)
        if local_file is not None and not local_file.exists():
            errors.print(
                f"[red]No journal at {local_file}.[/] Run `onboard sandbox` (it keeps one in {DEFAULT_STATE_DIR}/) "
                "or set ONBOARDING_JOURNAL to the journal the app writes."
            )
            raise typer.Exit(2)
        # Table Storage by URL signs in as the operator (DefaultAzureCredential: az login), who needs
        # "Storage Table Data Reader" on the table.
        opened = open_journal(journal)
        if opened is None:
            errors.print("[red]No journal named:[/] set ONBOARDING_JOURNAL or --journal.")
            raise typer.Exit(2)
        report = asyncio.run(status_report(opened, request_id, limit=limit))
    except JournalSettingError as error:
        errors.print(f"[red]{error}[/]")
        raise typer.Exit(2) from None
    except (AzureError, sqlite3.DatabaseError) as error:
        # Unreachable storage, a missing role, a file that is not a journal: one line, no traceback.
        errors.print(
            f"[red]Could not read the journal:[/] {type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        )
        raise typer.Exit(1) from None
    console.print(report)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """Print the JSON Schema of contract v1 (request, stage message, outcome event)."""
    text = json.dumps(contract_schemas(), indent=2, sort_keys=True) + "\n"
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


def _load_settings() -> Settings:
    try:
        return Settings()  # fields come from the environment / .env
    except ValidationError as error:
        errors.print(f"[red]Settings are incomplete or invalid[/] (see README, Settings):\n{error}")
        raise typer.Exit(2) from None
