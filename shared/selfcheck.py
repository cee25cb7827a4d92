"""The app's self-check: what only the app can check, with its own identity, in the tenant it serves.

A managed identity cannot be used from an administrator's machine, so `onboard doctor` checks what
the administrator's own sign-in can read (cli/doctor.py) and asks the deployed app for the rest: a
`SelfCheckRequest` on the `doctor` queue. The app answers like a stage answers a request (typed
input -> one report), publishing the `SelfCheckReport` like an outcome, to the request's ReplyTo,
else the outcome queue (subject `onboarding.selfcheck`), and it runs the same check once when a
process starts, into its log.

What it checks: its tokens for Graph and Exchange; that their `roles` (and `wids`) hold every right
the features in use need (shared/directory/rights.py, Features) and nothing more; one harmless read
per Exchange cmdlet family the product calls, each aimed at an object that cannot exist; Graph's
combined address filter and its `$top` paging; the policy file and every group it names. Reads only:
nothing in the tenant changes (Get-MessageTraceV2 spends one of the tenant's 100 queries per 5 minutes,
so the start-up run leaves it out).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError
from azure.servicebus import ServiceBusMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.contracts import GroupKind, GroupRef, RequestId
from shared.directory.errors import (
    DirectoryError,
    NotFoundError,
    PermissionDeniedError,
    RejectedRequestError,
    ThrottledError,
    TransientDirectoryError,
)
from shared.directory.ports import ExchangeDirectory, GraphDirectory
from shared.directory.rights import (
    APPLICATION_MAIL_SEND,
    MAIL_SEND,
    MANAGE_AS_APP,
    MESSAGE_TRACKING,
    RECIPIENT_ADMINISTRATOR,
    ROLE_TEMPLATE_IDS,
    SECURITY_GROUP_MEMBERSHIP,
    SUPPORTED_KINDS,
    Features,
)
from shared.envelope import JSON, EnvelopeError, ReceivedMessage, check_reply_to, read_body
from shared.logs import request_context
from shared.outbox import Outbox, UnknownQueueError
from shared.policy import ANY_GROUP, OnboardingPolicy, PolicyFileError
from shared.powershell import quoted
from shared.runner import settle_off_loop
from shared.stages.admission import find_group, unsupported_kind

logger = logging.getLogger("onboarding.selfcheck")

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
EXCHANGE_SCOPE = "https://outlook.office365.com/.default"
SUBJECT = "onboarding.selfcheck"
# The doctor queue is outside input: anyone with send rights can fill it. A process queries message
# trace for the self-check at most once in this spacing, so a flood of doctor messages cannot spend
# the tenant's quota (100 queries per 5 minutes) that verify-delivery needs.
MESSAGE_TRACE_SPACING = timedelta(minutes=5)
_PROCESS_LAST_TRACE: list[datetime] = []  # the process's, as a responder is built per message
AT_START = "left out at start: each query spends the tenant's quota of 100 per 5 minutes"
GRANT_HINT = "run `onboard grant` for the group kinds in use (docs/deploy.md, step 5)"
# The fallback docs/stand-in-differences.md names should Graph refuse `or` next to a lambda.
OR_FILTER_FALLBACK = (
    "the client would send `mail eq '…'` and `proxyAddresses/any(p:p eq 'smtp:…')` as two requests "
    "(docs/stand-in-differences.md); until it does, name groups by object id in requests"
)


class Status(StrEnum):
    OK = "ok"
    WRONG = "wrong"  # the product needs it and it does not hold
    WARNING = "warning"  # it holds, but with more than the product needs, or it cannot be verified without a change
    SKIPPED = "skipped"  # not checked: `fix` says what the check needs


class Check(BaseModel):
    """One line of a doctor's report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    area: str  # policy, rights, queues, token, exchange, graph, app
    name: str
    status: Status
    detail: str
    fix: str | None = None


class SelfCheckRequest(BaseModel):
    """What `onboard doctor --wait` puts on the `doctor` queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contract_version: Literal["1"] = "1"
    request_id: RequestId
    message_trace: bool = Field(default=True, description="Try Get-MessageTraceV2 (one query of the tenant's quota).")


class SelfCheckReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    contract_version: Literal["1"] = "1"
    request_id: str | None  # None: the start-up run
    checked_at: datetime
    checks: tuple[Check, ...]


def report_message_id(request_id: str) -> str:
    """One report per doctor request: a second one (a redelivery) is dropped by duplicate detection."""
    return f"{request_id}/selfcheck"


def group_ref(name: str) -> GroupRef:
    """A group as the policy names it: an SMTP address or an object id."""
    return GroupRef.model_validate({"smtp_address": name} if "@" in name else {"object_id": name})


def named_groups(policy: OnboardingPolicy) -> list[str]:
    """Every group the policy names, once, in the order written ("*" is not a group)."""
    names = [group for source in policy.sources.values() for group in sorted(source.allowed_groups)]
    names += sorted(policy.sender_authentication_fix_allowed)
    return [name for name in dict.fromkeys(names) if name != ANY_GROUP]


@dataclass(frozen=True)
class PolicyFindings:
    checks: list[Check]
    group_kinds: frozenset[GroupKind]  # the kinds the policy lets requests target (every kind for "*" or no answer)


async def check_policy(policy_file: Path | None, graph: GraphDirectory) -> PolicyFindings:
    """The policy file parses, and every group it names exists and is of a supported kind."""
    if policy_file is None:
        return PolicyFindings(
            [
                Check(
                    area="policy",
                    name="policy file",
                    status=Status.WRONG,
                    detail="ONBOARDING_POLICY_FILE is not set: the app denies every request",
                    fix="write policy.json next to host.json and set ONBOARDING_POLICY_FILE (docs/settings.md, Policy)",
                )
            ],
            SUPPORTED_KINDS,
        )
    try:
        policy = OnboardingPolicy.load(policy_file)
    except PolicyFileError as error:  # one line, naming fields, not values
        return PolicyFindings(
            [
                Check(
                    area="policy",
                    name="policy file",
                    status=Status.WRONG,
                    detail=f"{policy_file}: {error}",
                    fix="fix the file",
                )
            ],
            SUPPORTED_KINDS,
        )
    checks = [
        Check(
            area="policy",
            name="policy file",
            status=Status.OK,
            detail=f"{policy_file} parses: {len(policy.sources)} source system(s)",
        )
    ]
    kinds: set[GroupKind] = set()
    any_group = any(ANY_GROUP in source.allowed_groups for source in policy.sources.values())
    for name in named_groups(policy):
        check, kind = await _check_group(name, graph)
        checks.append(check)
        if kind is not None:
            kinds.add(kind)
        if check.fix == GRANT_HINT:
            break  # the identity may not read groups: every other group would say the same
    return PolicyFindings(checks, SUPPORTED_KINDS if any_group else frozenset(kinds))


async def _check_group(name: str, graph: GraphDirectory) -> tuple[Check, GroupKind | None]:
    def line(status: Status, detail: str, fix: str | None = None) -> Check:
        return Check(area="policy", name=f"group {name}", status=status, detail=detail, fix=fix)

    try:
        group = await find_group(group_ref(name), graph)
    except PermissionDeniedError as error:
        return line(Status.WRONG, f"groups cannot be read: {error.message}", GRANT_HINT), None
    except RejectedRequestError as error:
        return line(Status.WRONG, f"Graph refused the lookup ({error.status} {error.code}: {error.message})"), None
    except DirectoryError as error:
        return line(Status.SKIPPED, f"not looked up: {error}", "run the doctor again"), None
    if group is None:
        return line(
            Status.WRONG,
            "no such group in the tenant: requests for it end GroupNotFound",
            "correct the policy file, or create the group",
        ), None
    refused = unsupported_kind(group)
    if refused is not None:
        return line(Status.WRONG, refused, "remove it from the policy file"), None
    return line(Status.OK, f"{group.display_name} ({group.kind})"), group.kind


def token_claims(token: str) -> dict[str, Any]:
    """The payload of the app's own access token, to read which rights Entra put in it (not a validation)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _strings(value: Any) -> frozenset[str]:
    return frozenset(v for v in value if isinstance(v, str)) if isinstance(value, list) else frozenset()


def check_roles(resource: str, held: frozenset[str], needed: Iterable[str], *, welcome: bool) -> list[Check]:
    """A token's application permissions against the features' list: each needed one, and any beyond it."""
    needed = tuple(needed)
    checks = [
        Check(area="token", name=f"{resource} roles: {role}", status=Status.OK, detail="in the token's roles")
        if role in held
        else Check(
            area="token",
            name=f"{resource} roles: {role}",
            status=Status.WRONG,
            detail="not in the token's roles: calls that need it end PermissionDenied",
            fix=GRANT_HINT,
        )
        for role in needed
    ]
    for extra in sorted(held - set(needed)):
        chosen = extra == MAIL_SEND and welcome  # `onboard grant --tenant-wide-mail-send`: allowed, not advised
        checks.append(
            Check(
                area="token",
                name=f"{resource} roles: {extra}",
                status=Status.WARNING,
                detail="tenant-wide Mail.Send: any mailbox, where the docs advise Application Mail.Send on one"
                if chosen
                else "more than the features in use need (docs/permissions.md, the app's rights)",
                fix="remove the app role assignment (Entra admin center: Enterprise applications, the identity, "
                "Permissions)",
            )
        )
    return checks


def _probe_address() -> str:
    # `.invalid` cannot resolve (RFC 2606): no tenant holds an object with this address.
    return f"onboard-doctor-{uuid.uuid4().hex[:12]}@doctor.invalid"


async def _probe(
    area: str, name: str, call: Callable[[], Awaitable[object]], *, passes: str, right: str, quota: bool = False
) -> Check:
    """Run one harmless call; a refusal names the right. Not found is a pass: the call was allowed to look."""

    def line(status: Status, detail: str, fix: str | None = None) -> Check:
        return Check(area=area, name=name, status=status, detail=detail, fix=fix)

    try:
        await call()
    except PermissionDeniedError as error:
        needed = error.needed or right
        return line(Status.WRONG, f"refused ({error.status}): needs {needed}", f"{GRANT_HINT}; it names {needed}")
    except NotFoundError:
        return line(Status.OK, passes)
    except TransientDirectoryError as error:  # throttled, or a passing outage: says nothing about the right
        what = "the tenant's message-trace quota is spent" if quota and isinstance(error, ThrottledError) else error
        return line(Status.SKIPPED, f"not answered now ({what})", "run the doctor again in a few minutes")
    except DirectoryError as error:
        return line(Status.WRONG, f"answered {error}")
    return line(Status.OK, passes)


@dataclass(frozen=True)
class SelfCheckTools:
    """What the self-check calls: the app's credential and directory clients without the app's caches
    (a cached answer would hide a right taken away since), and what the deployment uses."""

    credential: AsyncTokenCredential
    graph: GraphDirectory
    exchange: ExchangeDirectory
    first_page_of_groups: Callable[[int], Awaitable[tuple[int, str | None]]]  # GET /groups?$top=n: rows, nextLink
    policy_file: Path | None
    welcome_sender: str | None
    clock: Callable[[], datetime]


async def run_self_check(
    request: SelfCheckRequest | None, tools: SelfCheckTools, *, trace_left_out: str | None = None
) -> SelfCheckReport:
    """Every check, in order; each failure is a line of the report, never an exception. Message trace is
    tried only for a request that asks for it and when `trace_left_out` gives no reason to leave it out."""
    checks: list[Check] = []
    policy = await check_policy(tools.policy_file, tools.graph)
    features = Features(policy.group_kinds, welcome=tools.welcome_sender is not None)
    checks += await _token_checks(tools, features)
    checks += await _graph_checks(tools)
    if request is None:
        trace_left_out = AT_START
    elif not request.message_trace:
        trace_left_out = "left out: the request asked for no message-trace query"
    checks += await _exchange_checks(tools, features, trace_left_out=trace_left_out)
    checks += policy.checks
    return SelfCheckReport(
        request_id=request.request_id if request else None, checked_at=tools.clock(), checks=tuple(checks)
    )


async def _token_checks(tools: SelfCheckTools, features: Features) -> list[Check]:
    checks: list[Check] = []
    needed = features.app_roles()
    for resource, scope, wanted in (
        ("Graph", GRAPH_SCOPE, [role for role in needed if role != MANAGE_AS_APP]),
        ("Exchange", EXCHANGE_SCOPE, [MANAGE_AS_APP]),
    ):
        try:
            token = await tools.credential.get_token(scope)
        except AzureError as error:
            checks.append(
                Check(
                    area="token",
                    name=f"{resource} token",
                    status=Status.WRONG,
                    detail=f"the app's identity got no token ({type(error).__name__}: {str(error).splitlines()[0]})",
                    fix="check ONBOARDING_MANAGED_IDENTITY_CLIENT_ID names the app's identity (infra/README.md)",
                )
            )
            continue
        claims = token_claims(token.token)
        checks.append(Check(area="token", name=f"{resource} token", status=Status.OK, detail="acquired"))
        checks += check_roles(resource, _strings(claims.get("roles")), wanted, welcome=features.welcome)
        if resource == "Exchange":
            checks.append(_recipient_administrator(_strings(claims.get("wids"))))
    return checks


def _recipient_administrator(wids: frozenset[str]) -> Check:
    name = f"Exchange wids: {RECIPIENT_ADMINISTRATOR}"
    if ROLE_TEMPLATE_IDS[RECIPIENT_ADMINISTRATOR] in wids:
        return Check(area="token", name=name, status=Status.OK, detail="in the token's wids")
    return Check(
        area="token",
        name=name,
        status=Status.WARNING,
        detail="not in the token's wids; the cmdlet reads below show whether Exchange lets the app in",
        fix=GRANT_HINT,
    )


async def _graph_checks(tools: SelfCheckTools) -> list[Check]:
    address = _probe_address()
    checks: list[Check] = []
    for name, lookup in (
        ("combined address filter on /groups", tools.graph.find_group_by_mail),
        ("combined address filter on /users", tools.graph.find_user_by_mail),
    ):
        try:
            await lookup(address)
        except RejectedRequestError as error:
            checks.append(
                Check(
                    area="graph",
                    name=name,
                    status=Status.WRONG,
                    detail=f"Graph refused `mail eq … or proxyAddresses/any(…)` ({error.status} {error.code}: "
                    f"{error.message}), which the client assumes it takes: every request naming a group or "
                    "person by address would end DirectoryRejected",
                    fix=OR_FILTER_FALLBACK,
                )
            )
            continue
        except DirectoryError as error:
            checks.append(Check(area="graph", name=name, status=Status.WRONG, detail=f"answered {error}"))
            continue
        checks.append(
            Check(area="graph", name=name, status=Status.OK, detail="`mail eq … or proxyAddresses/any(…)` is taken")
        )
    checks.append(await _top_shape(tools))
    return checks


async def _top_shape(tools: SelfCheckTools) -> Check:
    name = "$top paging on /groups"
    try:
        rows, next_link = await tools.first_page_of_groups(1)
    except DirectoryError as error:
        return Check(area="graph", name=name, status=Status.WRONG, detail=f"answered {error}")
    if rows > 1:
        return Check(
            area="graph",
            name=name,
            status=Status.WRONG,
            detail=f"$top=1 answered {rows} rows: Graph's page size is not what the client assumes",
        )
    paging = "with @odata.nextLink to the next page" if next_link else "the only page"
    return Check(area="graph", name=name, status=Status.OK, detail=f"$top=1 answered {rows} row(s), {paging}")


async def _exchange_checks(tools: SelfCheckTools, features: Features, *, trace_left_out: str | None) -> list[Check]:
    exchange, probe = tools.exchange, _probe_address()
    checks = [
        await _probe(
            "exchange",
            "Get-AcceptedDomain",
            exchange.get_accepted_domains,
            passes="runs",
            right=RECIPIENT_ADMINISTRATOR,
        ),
        await _probe(
            "exchange",
            "Get-MailContact",
            lambda: exchange.find_mail_contact(probe),
            passes="runs (an address no one holds: none found)",
            right=RECIPIENT_ADMINISTRATOR,
        ),
        await _probe(
            "exchange",
            "Get-DistributionGroup",
            lambda: exchange.get_sender_restrictions(probe, unified=False),
            passes="runs (a group that cannot exist: none found)",
            right=RECIPIENT_ADMINISTRATOR,
        ),
        await _probe(
            "exchange",
            "Get-UnifiedGroup",
            lambda: exchange.get_sender_restrictions(probe, unified=True),
            passes="runs (a group that cannot exist: none found)",
            right=RECIPIENT_ADMINISTRATOR,
        ),
    ]
    sender = tools.welcome_sender
    if sender is not None:
        if trace_left_out is None:
            now = tools.clock()
            checks.append(
                await _probe(
                    "exchange",
                    "Get-MessageTraceV2",
                    lambda: exchange.message_trace(sender, None, now - timedelta(minutes=1), now),
                    passes="runs (the welcome sender's last minute; one query of the tenant's quota)",
                    right=MESSAGE_TRACKING,
                    quota=True,
                )
            )
        else:
            checks.append(
                Check(
                    area="exchange",
                    name="Get-MessageTraceV2",
                    status=Status.SKIPPED,
                    detail=trace_left_out,
                    fix="`onboard doctor --wait` tries it",
                )
            )
    checks += _unverifiable(features, sender)
    return checks


def _unverifiable(features: Features, sender: str | None) -> list[Check]:
    """Exchange-side roles that no read exercises: how an administrator verifies them by hand."""
    by_hand = {
        SECURITY_GROUP_MEMBERSHIP: f"Get-RoleGroupMember -Identity {quoted('Onboarding security group membership')} (Exchange Online "
        "PowerShell) lists the app",
        APPLICATION_MAIL_SEND: f"Test-ServicePrincipalAuthorization -Identity <identity> -Resource {quoted(sender or '')} "
        "answers InScope True",
    }
    return [
        Check(
            area="exchange",
            name=role,
            status=Status.WARNING,
            detail="no read exercises it, and the self-check changes nothing: not verified here; a refusal "
            "ends PermissionDenied naming it",
            fix=by_hand[role],
        )
        for role in features.exchange_side()
        if role in by_hand
    ]


def log_report(report: SelfCheckReport) -> None:
    """The start-up run's lines: WARNING for what is wrong, INFO for the rest (addresses masked by shared/logs)."""
    for check in report.checks:
        log = logger.warning if check.status is Status.WRONG else logger.info
        fix = f" Fix: {check.fix}" if check.fix and check.status is not Status.OK else ""
        log("self-check %s %s: %s: %s.%s", check.status, check.area, check.name, check.detail, fix)
    wrong = sum(check.status is Status.WRONG for check in report.checks)
    (logger.warning if wrong else logger.info)("self-check: %d of %d checks wrong", wrong, len(report.checks))


class SelfCheckActions(Protocol):
    """The settlement half of the Functions host's ServiceBusMessageActions that the responder uses."""

    def complete(self, message: Any) -> None: ...

    def abandon(self, message: Any) -> None: ...


@dataclass(frozen=True)
class SelfCheckResponder:
    """Answers one message of the `doctor` queue: runs the self-check and publishes the report like an
    outcome (ReplyTo, else the outcome queue; a ReplyTo queue that does not exist falls back, saying so)."""

    tools: Callable[[], AbstractAsyncContextManager[SelfCheckTools]] | None  # None: the app cannot start
    outbox: Outbox
    outcome_queue: str
    clock: Callable[[], datetime]
    cannot_start: str | None = None  # why the app's services could not be built
    last_trace: list[datetime] = field(default_factory=lambda: _PROCESS_LAST_TRACE)  # when it last queried

    def _trace_left_out(self, now: datetime) -> str | None:
        """Why this report leaves message trace out, or None after claiming this spacing's one query."""
        if self.last_trace and now - self.last_trace[-1] < MESSAGE_TRACE_SPACING:
            return (
                f"left out: this instance queried it less than {MESSAGE_TRACE_SPACING.seconds // 60} minutes ago "
                "(once per 5 minutes, so doctor messages cannot spend the tenant's quota)"
            )
        self.last_trace[:] = [now]
        return None

    async def run(self, message: ReceivedMessage, actions: SelfCheckActions) -> SelfCheckReport | None:
        try:
            request = SelfCheckRequest.model_validate_json(read_body(message))
        except (EnvelopeError, ValidationError) as error:
            logger.warning("a doctor message that is not a SelfCheckRequest was dropped: %s", type(error).__name__)
            await settle_off_loop(actions.complete, message, who="the self-check")
            return None
        with request_context(request.request_id, message.correlation_id or request.request_id):
            try:
                report = await self._report(request)
                await self._publish(report, message)
            except Exception:
                logger.exception("the self-check could not answer; the message comes back")
                await settle_off_loop(actions.abandon, message, who="the self-check")
                raise
            await settle_off_loop(actions.complete, message, who="the self-check")
            log_report(report)
            return report

    async def _report(self, request: SelfCheckRequest) -> SelfCheckReport:
        if self.tools is None:
            refusal = Check(
                area="app",
                name="start",
                status=Status.WRONG,
                detail=f"the app cannot start: {self.cannot_start}",
                fix="fix the setting or file it names (docs/settings.md), then restart the app",
            )
            return SelfCheckReport(request_id=request.request_id, checked_at=self.clock(), checks=(refusal,))
        async with self.tools() as tools:
            left_out = self._trace_left_out(self.clock()) if request.message_trace else None
            return await run_self_check(request, tools, trace_left_out=left_out)

    async def _publish(self, report: SelfCheckReport, message: ReceivedMessage) -> None:
        reply_to, warning = check_reply_to(message.reply_to)
        extra = [warning] if warning else []
        try:
            await self.outbox.send(reply_to or self.outcome_queue, _report_message(report, extra, message))
        except UnknownQueueError as unknown:
            extra.append(f"ReplyTo queue {unknown.queue!r} does not exist, so the report went to the outcome queue.")
            await self.outbox.send(self.outcome_queue, _report_message(report, extra, message))


def _report_message(report: SelfCheckReport, warnings: list[str], message: ReceivedMessage) -> ServiceBusMessage:
    notes = tuple(Check(area="app", name="ReplyTo", status=Status.WARNING, detail=w) for w in warnings)
    body = report.model_copy(update={"checks": (*report.checks, *notes)}) if notes else report
    assert body.request_id is not None
    return ServiceBusMessage(
        body.model_dump_json().encode(),
        message_id=report_message_id(body.request_id),
        correlation_id=message.correlation_id or body.request_id,
        content_type=JSON,
        subject=SUBJECT,
    )
