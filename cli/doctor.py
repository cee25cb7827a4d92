"""`onboard doctor`: a read-only check of a deployment, one line per check, in two halves.

The administrator's half runs here with the operator's own sign-in: the policy file and every group it
names (Graph), the rights granted to the app's identity against what `onboard grant` would give for the
policy's group kinds and the welcome setting (Graph; Exchange-side roles cannot be read there), and every
queue's properties (Service Bus's management API, which needs Manage). The app's half needs the app's
own identity, which a managed identity never lends to another machine: `--wait` asks the deployed app
on its `doctor` queue (shared/selfcheck.py) and prints the report it publishes. Against the local
stand-ins (`onboard sandbox`), whose app identity is the sandbox's, the app's half runs here instead.

Exit code: 0 when every check holds (warnings allowed), 1 when one is wrong, 3 when none is wrong but
some could not be checked (skipped, or no report in time).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from azure.core.exceptions import AzureError
from azure.servicebus import ServiceBusMessage
from pydantic import SecretStr, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.plumbing import Interrupted, run_until_ctrl_c, settings_for
from shared.contracts import GroupKind
from shared.queues import SELF_CHECK_QUEUE, intake_queues
from shared.selfcheck import (
    Check,
    SelfCheckReport,
    SelfCheckRequest,
    Status,
    check_policy,
    report_message_id,
    run_self_check,
)
from shared.settings import ServiceBusSettings, Settings

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.servicebus.aio import ServiceBusClient

    from cli.grant_graph import Review
    from cli.grant_plan import GrantPlan
    from shared.directory.graph import MsGraphDirectory

EXIT_WRONG, EXIT_INCOMPLETE = 1, 3
STYLES = {Status.OK: "green", Status.WRONG: "red", Status.WARNING: "yellow", Status.SKIPPED: "cyan"}
READER_HINT = "sign in (az login) as a Global Reader, or as Directory Readers plus Application Read"
POLL_SECONDS = 1.0


class DoctorSettings(Settings):
    """The app's settings, as the deployment's .env or the azd environment holds them, and where to read
    the queues' properties when that is not the namespace itself (the local emulator's management port)."""

    servicebus_management_connection: SecretStr | None = None


@dataclass(frozen=True)
class Credentials:
    """Who signs in: the operator (the administrator's half), and the app itself where it can lend its identity
    (the local stand-ins only). None: the operator's az login, and the app answers on its queue."""

    operator: Callable[[], AsyncTokenCredential]
    app: Callable[[], AsyncTokenCredential] | None = None


def exit_code(checks: list[Check]) -> int:
    statuses = {check.status for check in checks}
    if Status.WRONG in statuses:
        return EXIT_WRONG
    return EXIT_INCOMPLETE if Status.SKIPPED in statuses else 0


def doctor_command(
    identity: str | None,
    *,
    wait: bool,
    timeout: float,
    reply_to: str | None,
    as_json: bool,
    credentials: Credentials | None = None,
) -> int:
    settings = settings_for("doctor", DoctorSettings, ServiceBusSettings)
    console = Console()
    try:
        checks = run_until_ctrl_c(
            diagnose(settings, identity or settings.managed_identity_client_id, wait, timeout, reply_to, credentials)
        )
    except (Interrupted, KeyboardInterrupt):
        Console(stderr=True).print("Interrupted.")
        return 130
    code = exit_code(checks)
    if as_json:
        summary = {status.value: sum(c.status is status for c in checks) for status in Status}
        document = {"checks": [c.model_dump(mode="json") for c in checks], "summary": summary, "exit_code": code}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")  # plain: no wrapping, no colours
    else:
        from cli.upstream import namespace_of

        who = identity or settings.managed_identity_client_id or "not given"
        console.print(
            f"onboard doctor: tenant {settings.tenant_id}, Service Bus {namespace_of(settings)}, identity {who}\n",
            markup=False,
            highlight=False,
        )
        console.print(render(checks, code))
    return code


async def diagnose(
    settings: DoctorSettings,
    identity: str | None,
    wait: bool,
    wait_seconds: float,
    reply_to: str | None,
    credentials: Credentials | None,
) -> list[Check]:
    """Every check of both halves, in the order printed: what the app says first, then what an administrator sees."""
    from azure.identity.aio import DefaultAzureCredential

    from shared.directory.graph import MsGraphDirectory  # msgraph-sdk only when diagnosing

    operator = credentials.operator() if credentials else DefaultAzureCredential()
    graph = MsGraphDirectory(operator, base_url=str(settings.graph_base_url).rstrip("/"), max_in_process_retries=3)
    try:
        app_half = await _app_half(settings, wait, wait_seconds, reply_to, credentials)
        policy = await check_policy(settings.policy_file, graph)
        rights = await _rights(settings, identity, policy.group_kinds, graph, app_half_ran=bool(app_half))
        queues = await _queues(settings)
    finally:
        await graph.close()
        await operator.close()
    # The app reads the policy deployed with it, with its own identity: its lines say it, once.
    policy_lines = [] if any(check.area == "policy" for check in app_half) else policy.checks
    return [*app_half, *policy_lines, *rights, *queues, *([] if app_half else [_no_app()])]


def _no_app() -> Check:
    return Check(
        area="app",
        name="the app's own checks",
        status=Status.SKIPPED,
        detail="its tokens, rights as Exchange sees them, cmdlet reads and Graph's filters need the app's "
        "identity, which only the deployed app holds",
        fix="run `onboard doctor --wait`: the app checks itself and answers on the outcome queue",
    )


async def _app_half(
    settings: DoctorSettings, wait: bool, wait_seconds: float, reply_to: str | None, credentials: Credentials | None
) -> list[Check]:
    if wait:
        return await _ask_the_app(settings, wait_seconds, reply_to)
    if credentials is not None and credentials.app is not None:
        from shared.bootstrap import self_check_tools

        credential = credentials.app()
        try:
            async with self_check_tools(settings, credential) as tools:
                report = await run_self_check(SelfCheckRequest(request_id=f"doctor-{uuid.uuid4().hex}"), tools)
        finally:
            await credential.close()
        return list(report.checks)
    return []


async def _ask_the_app(settings: DoctorSettings, wait_seconds: float, reply_to: str | None) -> list[Check]:
    """A SelfCheckRequest on the doctor queue; the report, peeked from where the app publishes it."""
    from azure.servicebus.exceptions import ServiceBusError

    from cli.upstream import namespace_of, servicebus_client
    from shared.outbox import entity_not_found

    request = SelfCheckRequest(request_id=f"doctor-{uuid.uuid4().hex}")
    queue = reply_to or settings.outcome_queue
    try:
        async with servicebus_client(settings) as client:
            start = await _end_of(client, queue)
            async with client.get_queue_sender(SELF_CHECK_QUEUE) as sender:
                await sender.send_messages(
                    ServiceBusMessage(
                        request.model_dump_json().encode(),
                        message_id=request.request_id,
                        content_type="application/json",
                        reply_to=reply_to,
                        time_to_live=timedelta(seconds=wait_seconds),  # not run later, when no one waits
                    )
                )
            report = await _report(client, queue, request.request_id, start, wait_seconds)
    except (ServiceBusError, AzureError) as error:
        missing = isinstance(error, ServiceBusError) and entity_not_found(error)
        return [
            Check(
                area="app",
                name="the app's own checks",
                status=Status.WRONG if missing else Status.SKIPPED,
                detail=f"could not ask the app through {namespace_of(settings)}: {type(error).__name__}"
                + (f" (queue {SELF_CHECK_QUEUE} or {queue} does not exist)" if missing else ""),
                fix="provision the doctor queue (azd provision)"
                if missing
                else "sign in with Azure Service Bus Data Sender on the doctor queue and Data Receiver on "
                f"{queue} (az login)",
            )
        ]
    if report is None:
        return [
            Check(
                area="app",
                name="the app's own checks",
                status=Status.WRONG,
                detail=f"no report on {queue} within {wait_seconds:.0f} s",
                fix="is the app running and indexed (docs/deploy.md, step 4)? An app that refuses to start says "
                "why in its log, in a line with `the app cannot start`. A first message after an idle period can "
                "wait about 2 minutes for an instance: try a longer --timeout",
            )
        ]
    return list(report.checks)


def _held(name: str, held: bool, state: str, need: str, fix: str) -> Check:
    """One right of the plan: held, or not, with why it is needed and the grant that gives it."""
    if held:
        return Check(area="rights", name=name, status=Status.OK, detail=state)
    return Check(area="rights", name=name, status=Status.WRONG, detail=f"not {state}; {need}", fix=fix)


async def _end_of(client: ServiceBusClient, queue: str) -> int:
    """The sequence number after the queue's last message: a report published later has a higher one."""
    from shared.outbox import peeked

    next_sequence = 0
    async with client.get_queue_receiver(queue) as receiver:
        async for message in peeked(receiver):
            next_sequence = (message.sequence_number or 0) + 1
    return next_sequence


async def _report(
    client: ServiceBusClient, queue: str, request_id: str, start: int, wait_seconds: float
) -> SelfCheckReport | None:
    """The app's report, peeked (it stays on the queue for whatever else reads it), or None in time."""
    from shared.outbox import peeked

    wanted = report_message_id(request_id)
    deadline = asyncio.get_running_loop().time() + wait_seconds
    async with client.get_queue_receiver(queue) as receiver:
        while True:
            async for message in peeked(receiver, start):
                start = (message.sequence_number or 0) + 1
                if message.message_id == wanted:
                    try:
                        return SelfCheckReport.model_validate_json(b"".join(message.body))
                    except ValidationError:
                        return None
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(POLL_SECONDS)


async def _rights(
    settings: DoctorSettings,
    identity: str | None,
    group_kinds: frozenset[GroupKind],
    graph: MsGraphDirectory,
    *,
    app_half_ran: bool,
) -> list[Check]:
    """The app roles and the directory role the identity holds, read from the directory, against the plan."""
    from cli.grant_graph import Directory, review
    from cli.grant_plan import KIND_IN_USE, GrantError, plan_for

    if identity is None:
        return [
            Check(
                area="rights",
                name="the app's identity",
                status=Status.SKIPPED,
                detail="no identity to read",
                fix="pass --identity (azd env get-value ONBOARDING_IDENTITY_PRINCIPAL_ID)",
            )
        ]
    in_use = frozenset(kind for kind, group_kind in KIND_IN_USE.items() if group_kind in group_kinds)
    welcome = str(settings.welcome_sender) if settings.welcome_sender else None
    plan = plan_for(in_use, welcome)
    try:
        seen = await review(plan, Directory(graph.sdk, wait_for_identity=0), identity)
    except GrantError as error:
        refused = " 403 " in f" {error} "
        return [
            Check(
                area="rights",
                name="the app's identity",
                status=Status.SKIPPED if refused else Status.WRONG,
                detail=f"its rights could not be read: {error}",
                fix=READER_HINT if refused else "check --identity names the app's managed identity",
            )
        ]
    return _rights_lines(plan, seen, app_half_ran=app_half_ran)


def _rights_lines(plan: GrantPlan, seen: Review, *, app_half_ran: bool) -> list[Check]:
    from cli.grant_plan import GroupKindInUse

    kinds = ",".join(kind.value for kind in GroupKindInUse if kind in plan.group_kinds) or "distribution"
    fix = f"onboard grant --identity {seen.identity.object_id} --group-kinds {kinds}"
    if plan.welcome_sender:
        fix += f" --welcome-sender {plan.welcome_sender}"
    checks = [
        _held(f"{grant.resource}: {grant.value}", seen.has_app_role(grant), "granted", f"needed to {grant.why}", fix)
        for grant in plan.app_roles
    ]
    checks += [
        _held(f"Entra role: {role.name}", seen.has_role(role), "assigned", f"needed for {role.why}", fix)
        for role in plan.directory_roles
    ]
    planned = {(seen.resources[g.resource_app_id].object_id, seen.role_id(g)) for g in plan.app_roles}
    names = {
        (resource.object_id, role_id): f"{resource.display_name}: {value}"
        for resource in seen.resources.values()
        for value, role_id in resource.app_roles.items()
    }
    for extra in sorted(seen.held_app_roles - planned):
        checks.append(
            Check(
                area="rights",
                name=names.get(extra, f"app role {extra[1]} of resource {extra[0]}"),
                status=Status.WARNING,
                detail="granted, but more than the features in use need (docs/permissions.md, the app's rights)",
                fix="remove the app role assignment if no feature in use needs it",
            )
        )
    checks += [
        Check(area="rights", name=f"note: {warning}", status=Status.WARNING, detail="as `onboard grant` found it")
        for warning in seen.warnings
    ]
    if plan.exchange_side and not app_half_ran:
        roles = ", ".join(assignment.role for assignment in plan.exchange_side)
        checks.append(
            Check(
                area="rights",
                name="Exchange-side roles",
                status=Status.SKIPPED,
                detail=f"{roles}: kept in Exchange Online, which Graph cannot read",
                fix="`onboard doctor --wait`: the app tries the cmdlets that need them",
            )
        )
    return checks


async def _queues(settings: DoctorSettings) -> list[Check]:
    from cli.doctor_queues import MANAGE_NEEDED, check_queues, expected_queues, management_client

    connection = settings.servicebus_management_connection or settings.servicebus_connection_string
    if connection is not None and settings.servicebus_management_connection is None and _emulator(connection):
        return [
            Check(
                area="queues",
                name="queues",
                status=Status.SKIPPED,
                detail="the emulator answers management on a port of its own",
                fix="set ONBOARDING_SERVICEBUS_MANAGEMENT_CONNECTION (`onboard sandbox --write-env` writes it)",
            )
        ]
    expectations = expected_queues(settings.outcome_queue, settings.servicebus_max_delivery_count, intake_queues())
    try:
        async with management_client(connection, settings.servicebus_namespace) as client:
            return await check_queues(client, expectations)
    except AzureError as error:  # no sign-in, or the namespace unreachable
        return [
            Check(
                area="queues",
                name="queues",
                status=Status.SKIPPED,
                detail=f"not read: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}",
                fix=MANAGE_NEEDED,
            )
        ]


def _emulator(connection: SecretStr) -> bool:
    return "usedevelopmentemulator=true" in connection.get_secret_value().replace(" ", "").lower()


def render(checks: list[Check], code: int) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, style="dim")
    table.add_column()
    for check in checks:
        line = Text(f"{check.name}: ", style="bold").append(check.detail, style="")
        if check.fix and check.status is not Status.OK:
            line.append(f"\nFix: {check.fix}", style="italic")
        table.add_row(Text(check.status.value, style=STYLES[check.status]), check.area, line)
    counts = ", ".join(f"{sum(c.status is s for c in checks)} {s.value}" for s in Status)
    verdict = {
        0: "everything the product needs holds",
        EXIT_WRONG: "something the product needs does not hold",
        EXIT_INCOMPLETE: "nothing wrong found, but not everything could be checked",
    }[code]
    table.add_row("", "", Text(f"\n{counts}: {verdict}.", style="bold"))
    return table
