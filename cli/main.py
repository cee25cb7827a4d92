"""`onboard`: the command line's options and help, wired to the modules that own each command's flow.

Each command's module is imported only when that command runs, so `onboard --help` stays quick.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli.command_rights import rights_epilog
from cli.grant_plan import PUBLIC_GRAPH
from cli.plumbing import DEFAULT_STATE_DIR, errors, quiet_libraries, write_or_print
from cli.settings import SETTINGS_HELP, read_env_file
from shared.contracts import StageName

PACKAGE = "m365-external-onboarding"
# `onboard --help` lists the commands in the order a newcomer meets them: try it, run it by hand,
# look after it, deploy it, then the reference documents.
NEWCOMER_ORDER = (
    "demo", "sandbox", "host", "submit", "status", "bulk", "update", "offboard", "leases", "drift", "dlq", "grant", "doctor",
    "schema", "asyncapi",
)  # fmt: skip


class _InNewcomerOrder(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:  # Any: typer's own click Context is not public
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: NEWCOMER_ORDER.index(name) if name in NEWCOMER_ORDER else len(names))


# rich_markup_mode=None: typer's rich help shows every flag as `<bool>`; click's plain help does not.
app = typer.Typer(
    cls=_InNewcomerOrder,
    help=f"Onboard external people into Microsoft 365 groups. {SETTINGS_HELP}",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _print_version(asked: bool) -> None:
    if asked:
        try:
            version = metadata.version(PACKAGE)
        except metadata.PackageNotFoundError:
            version = "unknown (not installed: pip install -e .)"
        typer.echo(f"onboard {version}")
        raise typer.Exit


@app.callback()
def _read_settings_file(
    context: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    # Before any command parses its options, so options with an environment variable see .env too.
    warnings = read_env_file()
    if context.invoked_subcommand != "host":  # the app says so itself when it starts (shared/startup.py)
        for warning in warnings:
            errors.print(warning, markup=False, highlight=False, soft_wrap=True)
    # None of the SDKs' own records (with their tracebacks) before a command's one-line message.
    quiet_libraries()


VerboseOption = Annotated[bool, typer.Option("--verbose/--quiet", "-v/-q", help="Show the pipeline's log at INFO.")]
# Where `status`, `leases` and `drift` read what the app wrote: its journal, with the lease book and the
# drift watch's roster beside it.
JournalOption = Annotated[
    str,
    typer.Option(
        envvar="ONBOARDING_JOURNAL",
        show_envvar=True,
        show_default=True,
        help="The journal setting the app uses (sqlite:<path>, https://<account>.table.core.windows.net/<table>, "
        "tables:TableName=<table>;<connection string>); leases and the drift watch's roster are kept beside it.",
    ),
]
DEFAULT_JOURNAL = f"sqlite:{DEFAULT_STATE_DIR / 'journal.db'}"


@app.command(epilog=rights_epilog("grant"))
def grant(
    identity: Annotated[
        str,
        typer.Option(
            help="The app's managed identity: its object (principal) id or client id "
            "(azd env get-value ONBOARDING_IDENTITY_PRINCIPAL_ID)."
        ),
    ],
    group_kinds: Annotated[
        str,
        typer.Option(
            help="Group kinds the policy targets, comma-separated: distribution, mail-enabled-security, m365."
        ),
    ],
    welcome_sender: Annotated[
        str | None,
        typer.Option(envvar="ONBOARDING_WELCOME_SENDER", help="The welcome mailbox, if the welcome message is on."),
    ] = None,
    tenant_wide_mail_send: Annotated[
        bool,
        typer.Option(help="Grant Graph Mail.Send for every mailbox instead of printing the scoped Exchange steps."),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Grant without asking.")] = False,
    wait_for_identity: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for a new identity to replicate.")
    ] = 300.0,
    graph_url: Annotated[str, typer.Option(envvar="ONBOARDING_GRAPH_BASE_URL")] = PUBLIC_GRAPH,
    # For the tests and a try-out against the tenant sandbox (`onboard sandbox`): its own tokens.
    sandbox_tenant_id: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Give the app's managed identity the Graph and Exchange rights the features in use need."""
    credential = None
    if sandbox_tenant_id is not None:
        from cli.sandbox import sandbox_credential

        credential = sandbox_credential(sandbox_tenant_id, graph_url)
    from cli.grant import grant_rights

    raise typer.Exit(
        grant_rights(
            identity,
            group_kinds,
            welcome_sender=welcome_sender,
            tenant_wide_mail_send=tenant_wide_mail_send,
            yes=yes,
            wait_for_identity=wait_for_identity,
            graph_url=graph_url,
            credential=credential,
        )
    )


@app.command(epilog=rights_epilog("doctor"))
def doctor(
    identity: Annotated[
        str | None,
        typer.Option(
            help="The app's managed identity whose rights to read: object (principal) id or client id "
            "(azd env get-value ONBOARDING_IDENTITY_PRINCIPAL_ID); default ONBOARDING_MANAGED_IDENTITY_CLIENT_ID."
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Ask the deployed app to check itself on its doctor queue; print its report.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds --wait waits for the app's report.")] = 180.0,
    reply_to: Annotated[
        str | None, typer.Option(help="Queue for the app's report (default: ONBOARDING_OUTCOME_QUEUE).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document instead of lines, for automation.")
    ] = False,
) -> None:
    """Check a deployment, changing nothing: one line per check (ok, wrong with its fix, warning, skipped).

    Reads with your own sign-in the policy file and its groups, the rights granted to the app's identity and
    the queues' properties; with --wait the app checks what only its own identity can (its tokens, each
    Exchange cmdlet family, Graph's filters) and answers on the outcome queue. Needs the app's settings
    (ONBOARDING_TENANT_ID, ServiceBusConnection or ServiceBusConnection__fullyQualifiedNamespace,
    ONBOARDING_POLICY_FILE, ONBOARDING_WELCOME_SENDER if used). Against `onboard sandbox` both halves run
    here. Exit code: 0 everything holds, 1 something is wrong, 3 nothing wrong but something unchecked.
    """
    credentials = None
    if os.environ.get("ONBOARDING_DIRECTORY_CREDENTIAL") == "sandbox":  # the local stand-ins' tenant
        from cli.sandbox import sandbox_doctor_credentials

        credentials = sandbox_doctor_credentials(os.environ)
    from cli.doctor import doctor_command

    raise typer.Exit(
        doctor_command(
            identity, wait=wait, timeout=timeout, reply_to=reply_to, as_json=as_json, credentials=credentials
        )
    )


@app.command(epilog=rights_epilog("leases"))
def leases(
    within: Annotated[
        str, typer.Option(help="List the leases that end within this long: 12h, 7d, 90d.", show_default=True)
    ] = "7d",
    journal: JournalOption = DEFAULT_JOURNAL,
) -> None:
    """List the memberships that end within --within, soonest first (docs/leases.md).

    Each lease: when it ends, the person (masked, as in the logs), the group, the source and the request
    that set the end, and when its notice is published. A lease past its end is flagged OVERDUE: its
    wake-up has not acted yet (the app is down, or the wake-up is in the leases queue's dead letters).
    To renew a lease, send an onboarding for the same person and group with a later expires_at.
    """
    from cli.leases import leases_command

    raise typer.Exit(leases_command(journal, within))


@app.command(epilog=rights_epilog("drift"))
def drift(
    journal: JournalOption = DEFAULT_JOURNAL,
) -> None:
    """List the open drift findings, the longest drifting first (docs/drift.md).

    Each finding: the person (masked, as in the logs), the group, what changed since the onboarding
    verified the membership, since when, when it was last seen right, and the fix. A finding the watch
    repaired itself is not open. Exit code 1 when any finding is open, 0 when none.
    """
    from cli.drift import drift_command

    raise typer.Exit(drift_command(journal))


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
    from cli.demo import demo_command

    raise typer.Exit(demo_command(timeout=timeout, verbose=verbose))


@app.command()
def sandbox(
    servicebus_port: Annotated[int, typer.Option(help="AMQP port of the Service Bus emulator.")] = 5672,
    servicebus_management_port: Annotated[
        int, typer.Option(help="HTTP port of the emulator's management endpoint (onboard doctor reads queues there).")
    ] = 5300,
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
    from cli.sandbox import serve_sandbox

    serve_sandbox(
        servicebus_port=servicebus_port,
        servicebus_management_port=servicebus_management_port,
        tenant_port=tenant_port,
        state_dir=state_dir,
        seed=seed,
        knobs=knobs,
        write_env=write_env,
        verbose=verbose,
    )


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

    Needs every app setting (docs/settings.md): ServiceBusConnection, ONBOARDING_TENANT_ID and what
    the directory credential needs; it stops before taking any message when one is wrong or the
    policy file does not load. If Service Bus goes away, it says so once and reconnects with backoff,
    handling messages again at most 30 s after Service Bus is back.
    """
    from cli.host import serve_host

    serve_host(verbose=verbose)


# The options every request-sending command takes, said once.
RequestIdOption = Annotated[
    str | None,
    typer.Option(
        help="Idempotency key and MessageId; defaults to a new id. Service Bus drops a resend of the same "
        "id within 10 minutes (duplicate detection)."
    ),
]
ReplyToOption = Annotated[
    str | None, typer.Option(help="Queue for the outcome event (default: ONBOARDING_OUTCOME_QUEUE).")
]
WaitOption = Annotated[
    bool, typer.Option("--wait", help="Wait for the outcome event and print it (it stays on its queue).")
]
TimeoutOption = Annotated[float, typer.Option(min=1, help="Seconds --wait waits for the outcome.")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="The pipeline checks and plans, and changes nothing (status Planned).")
]
SourceSystemOption = Annotated[str, typer.Option(help="Who is asking (must be listed in the policy).")]


@app.command(epilog=rights_epilog("submit"))
def submit(
    email: Annotated[str, typer.Option(help="The external person's email address.")],
    display_name: Annotated[str, typer.Option(help="Name shown in the address book.")],
    group: Annotated[str, typer.Option(help="Target group: SMTP address or object id.")],
    source_system: SourceSystemOption,
    first_name: Annotated[str | None, typer.Option(help="Given name of the contact or guest.")] = None,
    last_name: Annotated[str | None, typer.Option(help="Surname of the contact or guest.")] = None,
    request_id: RequestIdOption = None,
    no_external_senders: Annotated[
        bool, typer.Option("--no-external-senders", help="The person need not be able to mail the group.")
    ] = False,
    reply_to: ReplyToOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 120.0,
    dry_run: DryRunOption = False,
) -> None:
    """Validate one request and put it on queue create-contact.

    Needs ServiceBusConnection (or ServiceBusConnection__fullyQualifiedNamespace, signed in with az login).
    Exit code with --wait: 0 when it succeeded, 3 when it failed or had no outcome in time; resent
    within 10 minutes, it counts with the outcome of its earlier run.
    """
    from cli.submit import submit_one

    fields: dict[str, object] = {
        "external_email": email,
        "display_name": display_name,
        "first_name": first_name,
        "last_name": last_name,
        "source_system": source_system,
        "allow_external_senders": not no_external_senders,
        "dry_run": dry_run,
    }
    raise typer.Exit(
        submit_one("submit", fields, group=group, request_id=request_id, reply_to=reply_to, wait=wait, timeout=timeout)
    )


# The options `offboard` and `update` share with `submit`, as typer reads them.
@app.command(epilog=rights_epilog("offboard"))
def offboard(
    email: Annotated[str, typer.Option(help="The external person's email address.")],
    group: Annotated[str, typer.Option(help="The group to remove them from: SMTP address or object id.")],
    source_system: SourceSystemOption,
    request_id: RequestIdOption = None,
    reply_to: ReplyToOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 120.0,
    dry_run: DryRunOption = False,
) -> None:
    """Remove a person from a group: put an offboard request on queue create-contact.

    The mail contact goes too when this app created it and it is in no other group; a contact that was
    there before the app, and a guest account, are kept. Someone who is not a member: succeeds, saying so.
    Exit code with --wait: 0 succeeded, 3 failed or no outcome in time.
    """
    from cli.submit import submit_one

    fields: dict[str, object] = {
        "action": "offboard",
        "external_email": email,
        "source_system": source_system,
        "dry_run": dry_run,
    }
    raise typer.Exit(
        submit_one(
            "offboard", fields, group=group, request_id=request_id, reply_to=reply_to, wait=wait, timeout=timeout
        )
    )


@app.command(epilog=rights_epilog("update"))
def update(
    email: Annotated[str, typer.Option(help="The external person's email address (it cannot change).")],
    display_name: Annotated[str, typer.Option(help="The new name shown in the address book.")],
    group: Annotated[str, typer.Option(help="A group of the person's that the source may manage.")],
    source_system: SourceSystemOption,
    first_name: Annotated[str | None, typer.Option(help="The new given name.")] = None,
    last_name: Annotated[str | None, typer.Option(help="The new surname.")] = None,
    request_id: RequestIdOption = None,
    reply_to: ReplyToOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 120.0,
    dry_run: DryRunOption = False,
) -> None:
    """Rename a person's mail contact: put an update request on queue create-contact.

    Only a contact this app created is changed. A new address is an offboard of the old one and an
    onboard of the new one. Exit code with --wait: 0 succeeded, 3 failed or no outcome in time.
    """
    from cli.submit import submit_one

    fields: dict[str, object] = {
        "action": "update",
        "external_email": email,
        "display_name": display_name,
        "first_name": first_name,
        "last_name": last_name,
        "source_system": source_system,
        "dry_run": dry_run,
    }
    raise typer.Exit(
        submit_one("update", fields, group=group, request_id=request_id, reply_to=reply_to, wait=wait, timeout=timeout)
    )


@app.command(epilog=rights_epilog("status"))
def status(
    request_id: Annotated[
        str | None, typer.Argument(help="One request's history; omit for a summary by state.")
    ] = None,
    journal: JournalOption = DEFAULT_JOURNAL,
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
        bool,
        typer.Option(
            "--watch", help="Requests per stage and state, and the last drift sweep, refreshed in place until Ctrl-C."
        ),
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
    from cli.status import status_command

    raise typer.Exit(status_command(request_id, journal, limit=limit, since=since, watch=watch, interval=interval))


@app.command()
def asyncapi(
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """Print the upstream contract as an AsyncAPI 3.0 document (contracts/asyncapi.json). Needs no settings."""
    from cli.asyncapi import asyncapi_text

    write_or_print(output, asyncapi_text())


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """Print the JSON Schema of contract v1 (request, stage message, outcome event). Needs no settings."""
    from cli.schema import schema_text

    write_or_print(output, schema_text())


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


@dlq_app.command("list", epilog=rights_epilog("dlq list"))
def dlq_list(queue: QueueOption = None) -> None:
    """List dead letters: queue, sequence number, request, reason, attempts, age, description. Without
    --queue, also how many the app's other queues (drift, leases, doctor) dead-lettered, and what they mean."""
    from cli.dlq import list_command

    raise typer.Exit(list_command(queue or list(StageName), other_queues=not queue))


@dlq_app.command("show", epilog=rights_epilog("dlq show"))
def dlq_show(
    sequence_number: Annotated[int, typer.Argument(min=0, help="The dead letter's sequence number (dlq list).")],
    queue: Annotated[StageName, typer.Option("--queue", "-q", help="Its stage queue.")],
) -> None:
    """Everything about one dead letter: reason, properties, the body (addresses masked)."""
    from cli.dlq import show_command

    raise typer.Exit(show_command(queue, sequence_number))


@dlq_app.command("replay", epilog=rights_epilog("dlq replay"))
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
    from cli.dlq import act_command, selection_of

    selection = selection_of(sequence_numbers or (), reason, older_than, everything)
    raise typer.Exit(act_command("replay", queue or list(StageName), selection, confirm=False))


@dlq_app.command("purge", epilog=rights_epilog("dlq purge"))
def dlq_purge(
    sequence_numbers: Annotated[list[int] | None, typer.Argument(help="Sequence numbers (dlq list).")] = None,
    queue: QueueOption = None,
    reason: ReasonOption = None,
    older_than: OlderThanOption = None,
    everything: AllOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove dead letters for good, after showing them and asking (unless --yes)."""
    from cli.dlq import act_command, selection_of

    selection = selection_of(sequence_numbers or (), reason, older_than, everything)
    raise typer.Exit(act_command("purge", queue or list(StageName), selection, confirm=not yes))


@app.command(epilog=rights_epilog("bulk"))
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
    Exit codes: 0 sent or, with --check, every row valid, 2 bad rows or file; with --wait 0 when every
    request succeeded and 3 when any failed or had no outcome in time, a row resent within 10 minutes
    counting with the outcome of its earlier run.
    """
    from cli.bulk import send_file

    raise typer.Exit(
        send_file(
            csv_file,
            check=check,
            skip_invalid=skip_invalid,
            dry_run=dry_run,
            reply_to=reply_to,
            output=output,
            wait=wait,
            timeout=timeout,
        )
    )
