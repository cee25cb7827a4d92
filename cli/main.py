"""`onboard`: run the demo, the stand-ins or the local host; submit a request; print the contract."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import logging.handlers
import os
import shlex
import signal
import socket
import sqlite3
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from azure.core.exceptions import AzureError
from azure.servicebus.exceptions import ServiceBusError  # an AzureError: caught first
from pydantic import ValidationError
from pydantic_settings import BaseSettings
from rich.console import Console

from cli.grant import grant
from cli.settings import ENV_FILE, SETTINGS_HELP, SettingsProblem, load_settings, read_env_file, write_env_file
from shared.contracts import OnboardingRequest, OutcomeStatus, StageName, contract_schemas
from shared.logs import install_safe_log_records
from shared.queues import DUPLICATE_WINDOW
from shared.settings import ServiceBusSettings, Settings

if TYPE_CHECKING:
    from azure.servicebus.aio import ServiceBusClient
    from rich.console import RenderableType

    from cli.dlq import Selection
    from shared.journal import Journal

DEFAULT_STATE_DIR = Path(".onboard")  # `onboard sandbox` keeps its SQLite files here
DUPLICATE_WINDOW_MINUTES = DUPLICATE_WINDOW // timedelta(minutes=1)
DUPLICATE_WINDOW_TEXT = f"{DUPLICATE_WINDOW_MINUTES}-minute"
# Records that report normal events as trouble: a client closing its AMQP connection (proton
# logs it at ERROR), and azure-functions' notice that a queue-only app has no HTTP auth level.
NORMAL_EVENTS = (
    "Couldn't send: ConnectionResetError",
    "Couldn't send: BrokenPipeError",
    "Auth level is not applied to non http function app",
)

# On a terminal the date and the logger's name are noise; the request id is what a person follows.
CONSOLE_FORMATTER = logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(message)s", datefmt="%H:%M:%S")

# rich_markup_mode=None: typer's rich help shows every flag as `<bool>`; click's plain help does not.
app = typer.Typer(
    help=f"Onboard external people into Microsoft 365 groups. {SETTINGS_HELP}",
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = Console()
errors = Console(stderr=True)
app.command()(grant)
T = TypeVar("T")
SettingsT = TypeVar("SettingsT", bound=BaseSettings)


@app.callback()
def _read_settings_file() -> None:
    # Before any command parses its options, so options with an environment variable see .env too.
    read_env_file()


class _DropNormalEvents(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(event in message for event in NORMAL_EVENTS)


def _configure_logging(verbose: bool, handler: logging.Handler | None = None) -> None:
    install_safe_log_records()
    handler = handler or logging.StreamHandler(sys.stderr)
    handler.setFormatter(CONSOLE_FORMATTER)
    handler.addFilter(_DropNormalEvents())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)
    # The AMQP and HTTP stacks are chatty at INFO: keep them to warnings unless asked.
    for noisy in ("azure", "uamqp", "httpx", "uvicorn", "proton"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The SDK warns of each closed connection; the local host says once that Service Bus went away
    # and once that it is back, and the commands report an unreachable namespace themselves.
    logging.getLogger("azure.servicebus._pyamqp").setLevel(logging.ERROR)


def _fail(message: str, code: int = 1) -> typer.Exit:
    """One line on stderr, for trouble a person can fix; the caller raises the returned Exit."""
    errors.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _settings(model: type[SettingsT], command: str, *first: type[BaseSettings]) -> SettingsT:
    try:
        return load_settings(model, *first)
    except SettingsProblem as problem:
        raise _fail(f"onboard {command}: {problem}", 2) from None


def _until_interrupted() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _talk_to_servicebus(settings: ServiceBusSettings, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; an unreachable or refusing namespace is one line, not the SDK's traceback."""
    from cli.upstream import namespace_of
    from shared.outbox import entity_not_found

    try:
        return asyncio.run(work)
    except ServiceBusError as error:
        if entity_not_found(error):
            raise _fail(
                f"A queue named here does not exist in {namespace_of(settings)} (Service Bus answered 404): "
                "check --reply-to and ONBOARDING_OUTCOME_QUEUE."
            ) from None
        raise _fail(
            f"Could not reach Service Bus at {namespace_of(settings)} ({type(error).__name__}). "
            "Is `onboard sandbox` running, and does ServiceBusConnection name it?"
        ) from None
    except AzureError as error:  # signing in for ServiceBusConnection__fullyQualifiedNamespace
        raise _fail(
            f"Could not sign in to Service Bus at {namespace_of(settings)} ({type(error).__name__}). "
            "Run `az login` with an account that has a Service Bus data role on the namespace."
        ) from None
    except KeyboardInterrupt:
        raise _fail("Interrupted.", 130) from None


VerboseOption = Annotated[bool, typer.Option("--verbose/--quiet", "-v/-q", help="Show the pipeline's log at INFO.")]


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all outcomes.")] = 90.0,
    verbose: Annotated[
        bool, typer.Option("--verbose/--quiet", "-v/-q", help="Show the pipeline's log (else only if a sample fails).")
    ] = False,
) -> None:
    """Start the stand-ins and the local host, onboard one sample per group kind, print the outcomes.

    Needs no settings: everything runs on free local ports and is stopped at the end.
    """
    from cli.demo import run_demo

    # Quiet: the log is kept, and shown only when a sample misses its outcome (the expected
    # GroupNotFound is logged as a dead-letter, which is no news in a demo).
    stream = logging.StreamHandler(sys.stderr)
    kept = None if verbose else logging.handlers.MemoryHandler(100_000, logging.CRITICAL + 1, stream)
    _configure_logging(verbose, kept or stream)
    try:
        succeeded = asyncio.run(run_demo(console, within_seconds=timeout))
    except KeyboardInterrupt:
        raise _fail("Interrupted; everything started was stopped.", 130) from None
    if kept is not None:
        if not succeeded:
            stream.setFormatter(CONSOLE_FORMATTER)
            kept.flush()
        kept.buffer.clear()
    raise typer.Exit(0 if succeeded else 1)


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


@app.command()
def sandbox(
    servicebus_port: Annotated[int, typer.Option(help="AMQP port of the Service Bus emulator.")] = 5672,
    tenant_port: Annotated[int, typer.Option(help="HTTP port of the tenant sandbox.")] = 8765,
    state_dir: Annotated[
        Path,
        typer.Option(help="Where the emulator's messages and the tenant's objects are kept across restarts (SQLite)."),
    ] = DEFAULT_STATE_DIR,
    seed: Annotated[Path | None, typer.Option(help="Tenant seed JSON for a new tenant (default: the demo).")] = None,
    knobs: Annotated[Path | None, typer.Option(help="Sandbox knobs JSON: latency, throttling, faults.")] = None,
    write_env: Annotated[
        bool, typer.Option("--write-env", help="Also write the settings into ./.env (other lines are kept).")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Run the Service Bus emulator and the tenant sandbox in the foreground; print the settings a client needs.

    Needs no settings. The printed lines are quoted for .env and for a shell.
    """
    from shared.journal import SqliteJournal
    from standins.stack import local_stack
    from standins.tenant_sandbox import Knobs, TenantSeed
    from tools.demo import WELCOME_SETTINGS

    _configure_logging(verbose)
    try:
        tenant_seed = TenantSeed.load(seed) if seed else None
    except ValueError as error:  # pydantic's ValidationError included: one readable message
        raise typer.BadParameter(str(error), param_hint="--seed") from None
    try:
        sandbox_knobs = Knobs.load(knobs) if knobs else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--knobs") from None
    for port, option, what in (
        (servicebus_port, "--servicebus-port", "Service Bus emulator"),
        (tenant_port, "--tenant-port", "tenant sandbox"),
    ):
        if _port_in_use(port):
            raise _fail(
                f"Port {port} (for the {what}) is already in use, perhaps by another `onboard sandbox`: "
                f"stop that, or pass {option}."
            )
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
            await _until_interrupted().wait()

    asyncio.run(serve())


@app.command()
def host(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose/--quiet", "-v/-q", help="Log each transition at INFO (--quiet: warnings and errors only)."
        ),
    ] = True,
) -> None:
    """Run function_app.py's triggers against the configured namespace and tenant (emulator or Azure).

    Needs every app setting (README, Settings): ServiceBusConnection, ONBOARDING_TENANT_ID,
    ONBOARDING_TENANT_DOMAIN and what the directory credential needs. If Service Bus goes away, the
    host says so once and reconnects with backoff.
    """
    from cli.upstream import namespace_of
    from shared.bootstrap import close_services
    from standins.local_host import LocalHost, load_function_app
    from standins.stack import supply_sandbox_credential

    _configure_logging(verbose)
    settings = _settings(Settings, "host", ServiceBusSettings)
    supply_sandbox_credential(os.environ)

    async def serve() -> None:
        local_host = LocalHost(load_function_app())
        count = len(local_host.triggers)
        console.print(f"Local host runs {count} functions on {namespace_of(settings)}. Ctrl-C stops.", markup=False)
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
    first_name: Annotated[str | None, typer.Option(help="Given name of the contact or guest.")] = None,
    last_name: Annotated[str | None, typer.Option(help="Surname of the contact or guest.")] = None,
    request_id: Annotated[
        str | None,
        typer.Option(
            help="Idempotency key and MessageId; defaults to a new id. Service Bus drops a resend of the same "
            "id within 10 minutes (duplicate detection)."
        ),
    ] = None,
    no_external_senders: Annotated[
        bool, typer.Option("--no-external-senders", help="The person need not be able to mail the group.")
    ] = False,
    reply_to: Annotated[
        str | None, typer.Option(help="Queue for the outcome event (default: ONBOARDING_OUTCOME_QUEUE).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the outcome event and print it (it stays on its queue).")
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds --wait waits for the outcome.")] = 120.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="The pipeline checks and plans, and changes nothing (status Planned).")
    ] = False,
) -> None:
    """Validate one request and put it on queue create-contact.

    Needs ServiceBusConnection (or ServiceBusConnection__fullyQualifiedNamespace, signed in with az login).
    Exit code with --wait: 0 succeeded, 3 failed or no outcome in time.
    """
    from cli.outcomes import render_outcome
    from cli.upstream import is_queued, mark_outcomes, servicebus_client, wait_for_outcome
    from cli.upstream import submit as submit_requests

    settings = _settings(ServiceBusSettings, "submit")
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
                "dry_run": dry_run,
            }
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise _fail(f"Invalid request: {problems}", 2) from None
    handled_at = _first_handled(request_id) if request_id is not None else None
    outcome_queue = reply_to or settings.outcome_queue

    async def send() -> int:
        async with servicebus_client(settings) as client:
            # Service Bus accepts a resend of a MessageId it saw within the window and drops it silently.
            waiting = request_id is not None and await is_queued(client, StageName.CREATE_CONTACT, request_id)
            # Before sending: what is on the outcome queue already is an earlier run's (none for a new id).
            mark = await mark_outcomes(client, outcome_queue, [request_id] if request_id else []) if wait else None
            (sent_id,) = await submit_requests(client, [request], reply_to=reply_to)
            duplicate = _duplicate_because(waiting, handled_at)
            if duplicate:
                errors.print(
                    f"Sent request {sent_id}, but Service Bus drops it as a duplicate: {duplicate}, within "
                    f"create-contact's {DUPLICATE_WINDOW_TEXT} duplicate-detection window. "
                    "Use a new --request-id to onboard again.",
                    markup=False,
                )
            else:
                console.print(f"Submitted request {sent_id} to queue {StageName.CREATE_CONTACT}.", markup=False)
            if mark is None:  # not --wait
                console.print(f"Follow it with `onboard status {sent_id}` or `--wait`.", markup=False)
                return 0
            console.print(f"Waiting up to {timeout:.0f} s for its outcome on queue {outcome_queue}...", markup=False)
            followed = await wait_for_outcome(client, outcome_queue, sent_id, mark=mark, within_seconds=timeout)
        if (earlier := followed.duplicates.get(sent_id)) is not None:
            errors.print(f"No new run: the earlier run of {sent_id} ended like this.", markup=False)
            console.print(render_outcome(earlier))
            return 3
        outcome = followed.outcomes.get(sent_id)
        if outcome is None:
            errors.print(
                f"No outcome for {sent_id} within {timeout:.0f} s. Is `onboard host` running? "
                f"`onboard status {sent_id}` shows where it stands.",
                markup=False,
            )
            return 3
        console.print(render_outcome(outcome))
        return 3 if outcome.status is OutcomeStatus.FAILED else 0

    raise typer.Exit(_talk_to_servicebus(settings, send()))


def _duplicate_because(waiting: bool, handled_at: datetime | None) -> str | None:
    if waiting:
        return "the same id is still waiting on the queue"
    if handled_at is not None and datetime.now(UTC) - handled_at < DUPLICATE_WINDOW:
        return f"the same id was handled at {handled_at:%H:%M:%S}Z"
    return None


def _first_handled(request_id: str) -> datetime | None:
    """When the journal (ONBOARDING_JOURNAL) first saw this request, if it can tell."""
    from shared.journal import JournalSettingError, open_journal, sqlite_file

    setting = os.environ.get("ONBOARDING_JOURNAL")
    try:
        local_file = sqlite_file(setting) if setting else None
        journal = open_journal(setting) if setting and (local_file is None or local_file.exists()) else None
        if journal is None:
            return None

        async def first_seen() -> datetime | None:
            try:
                history = await journal.history(request_id)
            finally:
                await journal.close()
            return history[0].at if history else None

        return asyncio.run(first_seen())
    except (JournalSettingError, AzureError, sqlite3.DatabaseError):
        return None  # the duplicate warning is a courtesy; the send decides


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
    limit: Annotated[
        int,
        typer.Option(
            min=1, max=1000, help="Requests listed in the summary, newest first (the counts cover all of --since)."
        ),
    ] = 50,
    since: Annotated[
        str,
        typer.Option(
            help="Count every request whose latest transition is within this long ago: 30m, 2h, 1d (90s).",
            show_default=True,
        ),
    ] = "24h",
    watch: Annotated[
        bool, typer.Option("--watch", help="Requests per stage and state, refreshed in place until Ctrl-C.")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between --watch refreshes.")] = 2.0,
) -> None:
    """Print one request's transitions (stage, decision, attempt, cause), or where the requests stand.

    Needs ONBOARDING_JOURNAL (or --journal). The summary counts every request by state whose latest
    transition is within --since, however many, and lists the latest --limit of them. For a request
    with no history yet, it also looks on queue create-contact when ServiceBusConnection is set, to
    tell "queued, not yet handled" from "unknown". --watch shows the same counts per stage (with queue
    depths when ServiceBusConnection is set, peeked up to 2000 per queue) and the latest failures,
    refreshed every --interval seconds; when not on a terminal it prints one snapshot. Exit code 1:
    REQUEST_ID is unknown (no history, not on the queue).
    """
    from cli.dlq import parse_age
    from cli.status import status_report
    from shared.journal import JournalSettingError, open_journal, sqlite_file

    if watch and request_id is not None:
        raise _fail("--watch shows the whole pipeline: leave out REQUEST_ID.", 2)
    try:
        window = parse_age(since)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--since") from None
    if window <= timedelta(0):
        raise typer.BadParameter("the window must be longer than 0s", param_hint="--since")
    try:
        local_file = sqlite_file(journal)
        if local_file is not None and not local_file.exists():
            raise _fail(
                f"No journal at {local_file}. Run `onboard sandbox` (it keeps one in {DEFAULT_STATE_DIR}/) "
                "or set ONBOARDING_JOURNAL to the journal the app writes.",
                2,
            )
        # Table Storage by URL signs in as the operator (DefaultAzureCredential: az login), who needs
        # "Storage Table Data Reader" on the table.
        opened = open_journal(journal)
        if opened is None:
            raise _fail("No journal named: set ONBOARDING_JOURNAL or --journal.", 2)
        if watch:
            raise typer.Exit(_watch(opened, interval, window))
        report = asyncio.run(status_report(opened, request_id, limit=limit, since=window))
    except JournalSettingError as error:
        raise _fail(str(error), 2) from None
    except (AzureError, sqlite3.DatabaseError) as error:
        # Unreachable storage, a missing role, a file that is not a journal: one line, no traceback.
        raise _fail(
            f"Could not read the journal: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        ) from None
    console.print(report)
    if request_id is not None and report.unknown:
        where, known = _where_unhandled(request_id)
        console.print(where, markup=False)
        if not known:
            raise typer.Exit(1)  # as for a search that finds nothing: scripts can tell


# Peeked per queue and refresh (20 round trips of 100 at most): more is shown as "≥2000". Exact counts
# would need the management client's runtime properties, hence Manage rights (cli.status.QueueDepth).
WATCH_QUEUE_CAP = 2000


def _watch(journal: Journal, interval: float, window: timedelta) -> int:
    from rich.live import Live

    from cli.status import QueueDepth, render_board
    from cli.upstream import peek_count, servicebus_client

    try:
        bus: ServiceBusSettings | None = load_settings(ServiceBusSettings)
    except SettingsProblem:
        bus = None  # the journal alone still shows where requests stand

    async def depths(client: ServiceBusClient) -> dict[StageName, QueueDepth]:
        counts = await asyncio.gather(
            *(
                peek_count(client, s.value, cap=WATCH_QUEUE_CAP, dead_letters=d)
                for s in StageName
                for d in (False, True)
            )
        )
        return {s: QueueDepth(counts[2 * i], counts[2 * i + 1], WATCH_QUEUE_CAP) for i, s in enumerate(StageName)}

    async def run() -> int:
        stop = _until_interrupted()
        async with contextlib.AsyncExitStack() as resources:
            resources.push_async_callback(journal.close)
            client = await resources.enter_async_context(servicebus_client(bus)) if bus is not None else None

            async def frame() -> RenderableType:
                now = datetime.now(UTC)
                tally = await journal.tally(now - window)
                return render_board(tally, await depths(client) if client else None, now, window)

            if not console.is_terminal:
                console.print(await frame())
                return 0
            with Live(await frame(), console=console, auto_refresh=False) as live:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), interval)
                    if not stop.is_set():
                        live.update(await frame(), refresh=True)
        return 0

    return _talk_to_servicebus(bus, run()) if bus is not None else asyncio.run(run())


def _where_unhandled(request_id: str) -> tuple[str, bool]:
    """What to say of a request with no history, and whether it is known at all (waiting on the queue)."""
    from cli.upstream import is_queued, servicebus_client

    try:
        settings = load_settings(ServiceBusSettings)
    except SettingsProblem:
        return (
            "Unknown id, or not yet handled (set ServiceBusConnection to look for it on queue create-contact).",
            False,
        )

    async def look() -> bool:
        async with servicebus_client(settings) as client:
            return await is_queued(client, StageName.CREATE_CONTACT, request_id)

    if _talk_to_servicebus(settings, look()):
        return f"Queued on {StageName.CREATE_CONTACT}, not yet handled: is `onboard host` running?", True
    return f"Unknown id: no history, and not waiting on queue {StageName.CREATE_CONTACT}.", False


@app.command()
def asyncapi(
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """Print the upstream contract as an AsyncAPI 3.0 document (contracts/asyncapi.json). Needs no settings."""
    from cli.asyncapi import asyncapi_text

    text = asyncapi_text()
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """Print the JSON Schema of contract v1 (request, stage message, outcome event). Needs no settings."""
    text = json.dumps(contract_schemas(), indent=2, sort_keys=True) + "\n"
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


dlq_app = typer.Typer(
    help="See, replay and purge what the stage queues dead-lettered. Needs ServiceBusConnection.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(dlq_app, name="dlq")
QueueOption = Annotated[
    list[StageName] | None,
    typer.Option("--queue", "-q", help="A stage queue (repeatable); default: all three."),
]
ReasonOption = Annotated[str | None, typer.Option(help="Only dead letters with this reason, e.g. PolicyDenied.")]
OlderThanOption = Annotated[str | None, typer.Option(help="Only dead letters older than this: 90s, 30m, 2h, 7d.")]
AllOption = Annotated[bool, typer.Option("--all", help="Every dead letter of the queues.")]


@dlq_app.command("list")
def dlq_list(queue: QueueOption = None) -> None:
    """List dead letters: queue, sequence number, request, reason, attempts, age, description."""
    from cli.dlq import list_dead_letters, render_list
    from cli.upstream import servicebus_client

    settings = _settings(ServiceBusSettings, "dlq list")

    async def look() -> None:
        async with servicebus_client(settings) as client:
            views = await list_dead_letters(client, queue or list(StageName))
        console.print(render_list(views, datetime.now(UTC)))

    _talk_to_servicebus(settings, look())


@dlq_app.command("show")
def dlq_show(
    sequence_number: Annotated[int, typer.Argument(min=0, help="The dead letter's sequence number (dlq list).")],
    queue: Annotated[StageName, typer.Option("--queue", "-q", help="Its stage queue.")],
) -> None:
    """Everything about one dead letter: reason, properties, the body (addresses masked)."""
    from cli.dlq import peek_one, render_one
    from cli.upstream import servicebus_client

    settings = _settings(ServiceBusSettings, "dlq show")

    async def look() -> int:
        async with servicebus_client(settings) as client:
            message = await peek_one(client, queue, sequence_number)
        if message is None:
            errors.print(f"No dead letter {sequence_number} on {queue}.", markup=False)
            return 1
        console.print(render_one(queue, message, datetime.now(UTC)))
        return 0

    raise typer.Exit(_talk_to_servicebus(settings, look()))


def _selection(sequence_numbers: list[int] | None, reason: str | None, older_than: str | None, everything: bool) -> Any:
    from cli.dlq import Selection, parse_age

    try:
        age = parse_age(older_than) if older_than else None
    except ValueError as error:
        raise _fail(str(error), 2) from None
    selection = Selection(frozenset(sequence_numbers or ()), reason, age, everything)
    if selection.is_empty():
        raise _fail("Say which dead letters: sequence numbers, --reason, --older-than or --all.", 2)
    return selection


def _select_and_act(
    command: str,
    queues: list[StageName],
    selection: Selection,
    act: str,
    confirm: bool,
) -> None:
    """The one flow of replay and purge: select from what is there, confirm if asked, act per queue."""
    from cli.dlq import confirm_question, list_dead_letters, purge, render_done, render_list, replay
    from cli.upstream import servicebus_client

    settings = _settings(ServiceBusSettings, command)

    async def work() -> int:
        async with servicebus_client(settings) as client:
            now = datetime.now(UTC)
            chosen = [v for v in await list_dead_letters(client, queues) if selection.matches(v, now)]
            if not chosen:
                errors.print("No dead letter matches; nothing done. `onboard dlq list` shows what is there.")
                return 1
            if confirm:
                console.print(render_list(chosen, now))
                if not typer.confirm(confirm_question(act, len(chosen))):
                    errors.print("Nothing done.")
                    return 1
            done = []
            for queue in queues:
                mine = [v for v in chosen if v.queue is queue]
                if mine:
                    done += await (replay(client, queue, mine, now) if act == "replay" else purge(client, queue, mine))
        console.print(render_done(done))
        return 0 if all(item.ok for item in done) else 1

    raise typer.Exit(_talk_to_servicebus(settings, work()))


@dlq_app.command("replay")
def dlq_replay(
    sequence_numbers: Annotated[list[int] | None, typer.Argument(help="Sequence numbers (dlq list).")] = None,
    queue: QueueOption = None,
    reason: ReasonOption = None,
    older_than: OlderThanOption = None,
    everything: AllOption = False,
) -> None:
    """After fixing the cause: send dead letters again as a new run of their requests.

    The request id and what earlier stages gathered stay; the attempt budget starts again; the run
    gets its own MessageIds and outcome. A contact or membership made before is found, never made twice.
    Exit code 1 when any selected dead letter was not replayed.
    """
    selection = _selection(sequence_numbers, reason, older_than, everything)
    _select_and_act("dlq replay", queue or list(StageName), selection, "replay", confirm=False)


@dlq_app.command("purge")
def dlq_purge(
    sequence_numbers: Annotated[list[int] | None, typer.Argument(help="Sequence numbers (dlq list).")] = None,
    queue: QueueOption = None,
    reason: ReasonOption = None,
    older_than: OlderThanOption = None,
    everything: AllOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove dead letters for good, after showing them and asking (unless --yes)."""
    selection = _selection(sequence_numbers, reason, older_than, everything)
    _select_and_act("dlq purge", queue or list(StageName), selection, "purge", confirm=not yes)


@app.command()
def bulk(
    csv_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The CSV (docs/bulk-template.csv).")],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Send the valid rows even when some are not.")
    ] = False,
    reply_to: Annotated[
        str | None, typer.Option(help="Queue for the outcome events (default: ONBOARDING_OUTCOME_QUEUE).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write line,request_id for every row sent to this CSV.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the requests to their outcomes.")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds --wait waits for all outcomes.")] = 600.0,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="The pipeline checks and plans each row and changes nothing (status Planned)."),
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Only check the file and report; send nothing, need no settings.")
    ] = False,
) -> None:
    """Check every row of a CSV, report every problem with its line, then send the requests.

    Columns: external_email, display_name, group, source_system; optional first_name, last_name,
    request_id, allow_external_senders. Nothing is sent while any row is bad, unless --skip-invalid.
    Each row's request id is stable, so sending the file again within 10 minutes adds nothing.
    Exit codes: 0 sent or, with --check, every row valid (with --wait: all succeeded), 2 bad rows or
    file, 3 with --wait: a request failed or had no outcome in time.
    """
    from rich.progress import Progress

    from cli.bulk import BulkFileError, check_file, send_rows, write_request_ids
    from cli.upstream import mark_outcomes, servicebus_client, wait_for_outcomes

    try:
        checked = check_file(csv_file, dry_run=dry_run)
    except BulkFileError as error:
        raise _fail(f"{csv_file.name}: {error}", 2) from None
    for problem in checked.problems:
        errors.print(f"line {problem.line}: {problem.field}: {problem.reason}", markup=False, soft_wrap=True)
    total = len(checked.rows) + checked.bad_rows
    if check:
        if not total:
            raise _fail("No rows below the header; nothing to check.", 2)
        if checked.problems:
            raise _fail(f"{checked.bad_rows} bad row(s) of {total}; nothing sent (--check).", 2)
        console.print(f"{total} row(s) valid; nothing sent (--check).", markup=False)
        raise typer.Exit(0)
    if checked.problems and not skip_invalid:
        raise _fail(f"{checked.bad_rows} bad row(s); nothing sent. Fix them, or send the rest with --skip-invalid.", 2)
    if not checked.rows:
        raise _fail("No valid rows; nothing sent.", 2)
    settings = _settings(ServiceBusSettings, "bulk")  # only now: checking a file needs no Service Bus
    outcome_queue = reply_to or settings.outcome_queue

    async def send() -> int:
        rows = checked.rows
        async with servicebus_client(settings) as client:
            mark = await mark_outcomes(client, outcome_queue, [r.request_id for r in rows]) if wait else None
            with Progress(console=console, disable=not console.is_terminal, transient=True) as progress:
                task = progress.add_task("Sending", total=len(rows))
                await send_rows(client, rows, reply_to=reply_to, sent=lambda n: progress.advance(task, n))
            skipped = f", skipped {checked.bad_rows} bad row(s)" if checked.problems else ""
            console.print(f"Sent {len(rows)} request(s) to {StageName.CREATE_CONTACT}{skipped}.", markup=False)
            console.print(
                "Service Bus silently drops a message whose request id it saw in the last "
                f"{DUPLICATE_WINDOW_MINUTES} minutes, so a re-run inside that window onboards "
                "nothing new.",
                markup=False,
                soft_wrap=True,
            )
            if output is not None:
                write_request_ids(output, rows)
                console.print(f"Request ids written to {output}.", markup=False)
            elif len(rows) <= 20:
                console.print("\n".join(r.request_id for r in rows), markup=False)
            if mark is None:  # not --wait
                return 0
            with Progress(console=console, disable=not console.is_terminal, transient=True) as progress:
                task = progress.add_task("Outcomes", total=len(rows))
                followed = await wait_for_outcomes(
                    client,
                    outcome_queue,
                    [r.request_id for r in rows],
                    mark=mark,
                    within_seconds=timeout,
                    on_outcome=lambda _: progress.advance(task),
                )
        outcomes, duplicates = followed.outcomes, followed.duplicates
        by_status: dict[str, int] = {}
        for event in outcomes.values():
            by_status[event.status] = by_status.get(event.status, 0) + 1
        missing = len(rows) - len(outcomes) - len(duplicates)
        summary = ", ".join(f"{status} {count}" for status, count in sorted(by_status.items()))
        console.print(
            f"Outcomes: {summary or 'none'}" + (f", no outcome yet {missing}" if missing else ""), markup=False
        )
        if duplicates:
            console.print(
                f"Not run again: {len(duplicates)} request(s) ran within the {DUPLICATE_WINDOW_TEXT} duplicate-detection "
                "window before this send, so Service Bus dropped them; their earlier outcomes stand "
                "(`onboard status ID`).",
                markup=False,
            )
        for row in rows:
            outcome = outcomes.get(row.request_id)
            if outcome is not None and outcome.status is OutcomeStatus.FAILED:
                console.print(f"  line {row.line}: {row.request_id}: {outcome.reason}", markup=False)
            elif outcome is not None and outcome.status is OutcomeStatus.PLANNED:
                console.print(f"  line {row.line}: {'; '.join(outcome.changes) or 'nothing to do'}", markup=False)
        return 3 if missing or any(o.status is OutcomeStatus.FAILED for o in outcomes.values()) else 0

    raise typer.Exit(_talk_to_servicebus(settings, send()))
