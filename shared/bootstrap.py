"""Wires settings to clients once per process; every invocation reuses them.

Created lazily on the first invocation, inside the event loop that runs the functions, because
the async SDK clients bind to that loop. Adapters can be handed in (cosmicpython's bootstrap):
tests pass them to `build_services`, and a host that runs the app off Azure (the local host)
registers them once with `configure_services`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from pydantic import SecretStr

from shared.contracts import StageName
from shared.dead_letters import DeadLetterReporter, DeadLetterSweep
from shared.directory.cache import TRACE_SHARE_SECONDS, CachingExchangeDirectory, CachingGraphDirectory
from shared.directory.credentials import build_credential
from shared.directory.exchange import TRACE_MAX_ROWS, ExchangeOnlineClient
from shared.directory.ports import ExchangeDirectory, GraphDirectory
from shared.directory.throttle import SharedHolds, ThrottleGate
from shared.drift.checks import group_checker
from shared.drift.model import GroupChecker, Roster
from shared.drift.roster import RosterKeeper
from shared.drift.sweep import DriftSweeper
from shared.drift.watch import DriftWatch
from shared.journal import Journal, open_journal
from shared.journal.ports import LeaseBook
from shared.lease_watch import LeaseWatch
from shared.leases import LeaseKeeper
from shared.logs import install_safe_log_records
from shared.outbox import Outbox, QueueSenders
from shared.policy import OnboardingPolicy
from shared.retry import RetryPolicy
from shared.runner import StageRunner
from shared.selfcheck import SelfCheckResponder, SelfCheckTools, log_report, run_self_check
from shared.settings import CredentialKind, ServiceBusSettings, Settings
from shared.stages import Stage, StageDependencies, WelcomeMail
from shared.stages.dependencies import utc_now

logger = logging.getLogger("onboarding.bootstrap")


@dataclass(frozen=True)
class Services:
    settings: Settings
    stage_dependencies: StageDependencies
    outbox: Outbox
    journal: Journal | None
    closers: tuple[Callable[[], Awaitable[Any]], ...] = field(default=(), repr=False)
    credential: AsyncTokenCredential | None = field(default=None, repr=False)  # the app's identity (self-check)
    drift_checker: GroupChecker | None = field(default=None, repr=False)  # None only where built by hand

    async def close(self) -> None:
        """Close everything build_services opened (not what was handed in), the credential last."""
        for close in self.closers:
            await close()


def build_services(
    settings: Settings,
    *,
    credential: AsyncTokenCredential | None = None,
    graph: GraphDirectory | None = None,
    exchange: ExchangeDirectory | None = None,
    outbox: Outbox | None = None,
    journal: Journal | None = None,
    policy: OnboardingPolicy | None = None,
    drift_checker: GroupChecker | None = None,
) -> Services:
    """Every adapter from the settings, except those given; `close` closes only what was built here.

    The directory adapters built here remember group lookups and accepted domains for
    ONBOARDING_DIRECTORY_CACHE_SECONDS (shared/directory/cache.py); adapters handed in are used as they are."""
    closers: list[Callable[[], Awaitable[Any]]] = []
    ttl = settings.directory_cache_seconds  # 0: nothing kept (Graph: no cache wrapper at all)
    if credential is None:
        credential = app_credential(settings.directory_credential, settings.managed_identity_client_id)
        closers.append(credential.close)
    if journal is None:
        journal = open_journal(settings.journal.get_secret_value() if settings.journal else None, credential)
        if journal is not None:
            closers.insert(0, journal.close)
    # Every instance's throttle gates read and write the same holds: the tenant's limits are per app.
    holds = journal if isinstance(journal, SharedHolds) else None
    if graph is None:
        from shared.directory.graph import MsGraphDirectory  # msgraph-sdk is the heaviest import: only when used

        built_graph = MsGraphDirectory(
            credential, base_url=str(settings.graph_base_url).rstrip("/"), gate=ThrottleGate("graph", shared=holds)
        )
        closers.insert(0, built_graph.close)
        graph = CachingGraphDirectory(built_graph, ttl) if ttl else built_graph
    if exchange is None:
        built_exchange = ExchangeOnlineClient(
            credential,
            tenant_id=settings.tenant_id,
            base_url=str(settings.exchange_base_url).rstrip("/"),
            gate=ThrottleGate("exchange", shared=holds),
            max_concurrent_requests=settings.exchange_concurrent_requests,
        )
        closers.insert(0, built_exchange.close)
        # Always wrapped: message trace is shared between checks whatever the TTL (the tenant's quota).
        exchange = CachingExchangeDirectory(
            built_exchange,
            ttl,
            max_trace_rows=TRACE_MAX_ROWS,
            # Fresher than half a check interval, so a check never reads an answer from before its last one.
            trace_share_seconds=min(TRACE_SHARE_SECONDS, settings.welcome_check_interval_seconds / 2),
        )
    if outbox is None:
        built_outbox = QueueSenders.connect(settings, credential)
        closers.insert(0, built_outbox.close)
        outbox = built_outbox
    policy = policy or _policy(settings)
    book = journal if isinstance(journal, LeaseBook) else None
    if book is None and policy.uses_leases():
        raise ValueError(
            "the policy gives groups a default_lease, but leases are kept in the journal and ONBOARDING_JOURNAL "
            "names none: set it, or remove default_lease (docs/leases.md)"
        )
    leases = (
        LeaseKeeper(book, outbox, timedelta(seconds=settings.lease_notice_seconds), utc_now)
        if book is not None
        else None
    )
    dependencies = StageDependencies(
        graph=graph,
        exchange=exchange,
        policy=policy,
        retry=RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            base_delay=timedelta(seconds=settings.retry_base_delay_seconds),
            max_delay=timedelta(seconds=settings.retry_max_delay_seconds),
            max_age=settings.retry_max_age,
            max_throttles=settings.retry_max_throttles,
        ),
        guest_redirect_url=str(settings.guest_redirect_url),
        welcome=_welcome(settings),
        leases=leases,
        roster=RosterKeeper(journal, utc_now) if isinstance(journal, Roster) else None,
    )
    checker = drift_checker or group_checker(dependencies)  # tests may pass their own
    return Services(settings, dependencies, outbox, journal, tuple(closers), credential, checker)


def app_credential(kind: CredentialKind, client_id: str | None) -> AsyncTokenCredential:
    """The app's one credential, for Service Bus, the directory and the journal alike."""
    if kind == "sandbox":
        raise RuntimeError(
            "ONBOARDING_DIRECTORY_CREDENTIAL=sandbox: the sandbox credential is supplied by the local host "
            "(standins); it cannot be built from settings"
        )
    return build_credential(kind, client_id=client_id)


def _policy(settings: Settings) -> OnboardingPolicy:
    return OnboardingPolicy.load(settings.policy_file) if settings.policy_file else OnboardingPolicy()


def _welcome(settings: Settings) -> WelcomeMail | None:
    if not settings.welcome_sender:
        return None
    return WelcomeMail(
        sender=str(settings.welcome_sender),
        subject=settings.welcome_subject,
        check_interval=timedelta(seconds=settings.welcome_check_interval_seconds),
        deadline=timedelta(minutes=settings.welcome_deadline_minutes),
    )


_services: Services | None = None
_overrides: dict[str, Any] = {}
_lock = asyncio.Lock()


def configure_services(**overrides: Any) -> None:
    """For a host that runs the app off Azure: adapters the process's services are built with
    (keywords of build_services). Takes effect at the next build; close_services clears them."""
    _overrides.clear()
    _overrides.update(overrides)


async def get_services() -> Services:
    global _services, _start_up_check
    async with _lock:
        if _services is None:
            install_safe_log_records()
            _services = build_services(Settings(), **_overrides)  # fields come from the environment
            if _services.settings.self_check_at_start:
                _start_up_check = asyncio.get_running_loop().create_task(_check_at_start(_services))
        return _services


_start_up_check: asyncio.Task[None] | None = None


async def _check_at_start(services: Services) -> None:
    """The self-check once per process, into the log: a wrong right shows before the first request needs it."""
    try:
        async with self_check_tools(services.settings, services.credential) as tools:
            log_report(await run_self_check(None, tools))
    except Exception:
        logger.exception("the start-up self-check could not run")


@asynccontextmanager
async def self_check_tools(
    settings: Settings, credential: AsyncTokenCredential | None, clock: Callable[[], datetime] = utc_now
) -> AsyncIterator[SelfCheckTools]:
    """Directory clients of the app's own identity, without the app's caches, for one self-check."""
    from shared.directory.graph import MsGraphDirectory  # msgraph-sdk is the heaviest import: only when used

    if credential is None:
        raise RuntimeError("the self-check needs the app's credential; these services were given adapters only")
    graph = MsGraphDirectory(credential, base_url=str(settings.graph_base_url).rstrip("/"))
    exchange = ExchangeOnlineClient(
        credential, tenant_id=settings.tenant_id, base_url=str(settings.exchange_base_url).rstrip("/")
    )
    try:
        yield SelfCheckTools(
            credential=credential,
            graph=graph,
            exchange=exchange,
            first_page_of_groups=graph.first_page_of_groups,
            policy_file=settings.policy_file,
            welcome_sender=str(settings.welcome_sender) if settings.welcome_sender else None,
            clock=clock,
        )
    finally:
        await graph.close()
        await exchange.close()


async def self_check_responder() -> SelfCheckResponder:
    """The doctor queue's responder. When the app's services cannot be built, it still answers, with Service
    Bus alone, saying why the app cannot start (the same fallback as the dead-letter functions)."""
    try:
        services = await get_services()
    except Exception as error:
        outbox, outcome_queue, _ = await _reporting_services()
        why = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        return SelfCheckResponder(None, outbox, outcome_queue, utc_now, cannot_start=why)
    return SelfCheckResponder(
        lambda: self_check_tools(services.settings, services.credential, services.stage_dependencies.clock),
        services.outbox,
        services.settings.outcome_queue,
        services.stage_dependencies.clock,
    )


async def close_services() -> None:
    """For hosts that end (the local host, tests); Azure simply recycles the process."""
    global _services, _reporting, _start_up_check, _sweep
    _sweep = None
    if _start_up_check is not None:
        _start_up_check.cancel()
        await asyncio.gather(_start_up_check, return_exceptions=True)
        _start_up_check = None
    async with _lock:
        if _services is not None:
            await _services.close()
            _services = None
        if _reporting is not None:
            close_reporting = _reporting[3]
            _reporting = None
            await close_reporting()
        _overrides.clear()


async def dead_letter_sweep(queues: Mapping[str, StageName]) -> DeadLetterSweep:
    """The process's sweep of `queues`' dead-letter sub-queues (one, so it remembers what it handled).

    It needs Service Bus and nothing else. When the app's services cannot be built (a broken policy
    file, a missing setting), every stage fails on every delivery and Service Bus dead-letters each
    message: the sweep is then the only thing left that can publish an outcome, so it falls back to
    the Service Bus settings alone.
    """
    global _sweep
    if _sweep is not None and _sweep.queues == queues:
        return _sweep
    try:
        services = await get_services()
        outbox, outcome_queue, journal = services.outbox, services.settings.outcome_queue, services.journal
        clock = services.stage_dependencies.clock
    except Exception:
        logger.exception("the app cannot start; the dead-letter sweep publishes outcomes with Service Bus alone")
        outbox, outcome_queue, journal = await _reporting_services()
        clock = utc_now
    if not isinstance(outbox, QueueSenders):
        raise RuntimeError("the dead-letter sweep peeks Service Bus: it needs the app's own QueueSenders outbox")

    def reporter(stage: StageName) -> DeadLetterReporter:
        return DeadLetterReporter(stage, outbox, outcome_queue, clock, journal)

    _sweep = DeadLetterSweep(outbox, queues, reporter)
    return _sweep


class ReportingSettings(ServiceBusSettings):
    """What the dead-letter sweep reads when the app's other settings are broken."""

    directory_credential: str = "managed-identity"  # read leniently: it may be the broken setting
    managed_identity_client_id: str | None = None
    journal: SecretStr | None = None


_reporting: tuple[QueueSenders, str, Journal | None, Callable[[], Awaitable[Any]]] | None = None
_sweep: DeadLetterSweep | None = None


async def _reporting_services() -> tuple[QueueSenders, str, Journal | None]:
    global _reporting
    async with _lock:
        if _reporting is None:
            settings = ReportingSettings()  # a broken Service Bus setting stops the triggers too: let it raise
            given = _overrides.get("credential")  # the local host hands in the sandbox's
            kind: CredentialKind = "default" if settings.directory_credential == "default" else "managed-identity"
            credential = given or app_credential(kind, settings.managed_identity_client_id)
            outbox = QueueSenders.connect(settings, credential)
            try:
                journal = open_journal(settings.journal.get_secret_value() if settings.journal else None, credential)
            except Exception as error:  # a record, never a reason to stay silent
                logger.warning("no journal for the dead-letter sweep: %s", type(error).__name__)
                journal = None

            async def close() -> None:
                await outbox.close()
                if journal is not None:
                    await journal.close()
                if given is None:
                    await credential.close()

            _reporting = (outbox, settings.outcome_queue, journal, close)
        return _reporting[0], _reporting[1], _reporting[2]


async def lease_watch() -> LeaseWatch:
    """The `leases` queue's handler: it needs the lease book, so the app's services must start."""
    services = await get_services()
    book = services.journal
    if not isinstance(book, LeaseBook):
        raise RuntimeError("a lease wake-up came, but ONBOARDING_JOURNAL names no journal to keep leases in")
    deps = services.stage_dependencies
    return LeaseWatch(book, services.outbox, deps.policy, services.settings.outcome_queue, deps.clock)


async def catch_up_leases() -> int:
    """The timer sweep's second half: leases whose end's wake-up never acted (LeaseWatch.catch_up). Nothing
    without a journal to keep leases in, or when the app cannot start (the dead-letter sweep said why)."""
    try:
        services = await get_services()
    except Exception:
        return 0
    if not isinstance(services.journal, LeaseBook):
        return 0
    return await (await lease_watch()).catch_up()


def _drift_sweeper(services: Services, roster: Roster) -> DriftSweeper:
    settings = services.settings
    return DriftSweeper(
        roster,
        services.outbox,
        settings.drift_period,
        settings.drift_page_size,
        settings.drift_per_minute,
        services.stage_dependencies.clock,
    )


async def drift_sweeper() -> DriftSweeper | None:
    """The drift timer's sweeper; None (and a line in the log) when there is nothing to sweep with."""
    services = await get_services()
    if not isinstance(services.journal, Roster):
        logger.info("no drift sweep: ONBOARDING_JOURNAL names no journal, where the roster is kept")
        return None
    return _drift_sweeper(services, services.journal)


async def drift_watch() -> DriftWatch:
    """The `drift` queue's handler: it needs the roster and the checks, so the app's services must start."""
    services = await get_services()
    roster, checker = services.journal, services.drift_checker
    if not isinstance(roster, Roster) or checker is None:
        raise RuntimeError("drift work came, but ONBOARDING_JOURNAL names no journal, where the roster is kept")
    deps = services.stage_dependencies
    sweeper = _drift_sweeper(services, roster)
    return DriftWatch(roster, sweeper, checker, services.outbox, services.settings.outcome_queue, deps.clock)


async def stage_runner(stage: Stage[Any], *, queue: str = "") -> StageRunner:
    """`queue`: a source's own intake queue the stage reads from, when not its own."""
    services = await get_services()
    settings = services.settings
    return StageRunner(
        stage,
        services.stage_dependencies,
        services.outbox,
        settings.outcome_queue,
        settings.servicebus_max_delivery_count,
        services.journal,
        queue,
    )
