"""Wires settings to clients once per process; every invocation reuses them.

Created lazily on the first invocation, inside the event loop that runs the functions, because
the async SDK clients bind to that loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from shared.contracts import StageName
from shared.directory.credentials import build_credential
from shared.directory.exchange import ExchangeOnlineClient
from shared.directory.graph import MsGraphDirectory
from shared.journal import Journal, open_journal
from shared.logs import install_safe_log_records
from shared.outbox import ServiceBusOutbox
from shared.policy import OnboardingPolicy
from shared.retry import RetryPolicy
from shared.runner import Stage, StageRunner
from shared.settings import Settings
from shared.stages import StageDependencies
from shared.stages.common import WelcomeMail


@dataclass(frozen=True)
class Services:
    settings: Settings
    stage_dependencies: StageDependencies
    outbox: ServiceBusOutbox
    graph: MsGraphDirectory
    exchange: ExchangeOnlineClient
    journal: Journal | None

    async def close(self) -> None:
        await self.outbox.close()
        await self.graph.close()
        await self.exchange.close()
        if self.journal is not None:
            await self.journal.close()


_services: Services | None = None
_lock = asyncio.Lock()


def build_services(settings: Settings) -> Services:
    credential = build_credential(
        settings.directory_credential, client_id=settings.managed_identity_client_id, tenant_id=settings.tenant_id
    )
    graph = MsGraphDirectory(credential, base_url=str(settings.graph_base_url).rstrip("/"))
    exchange = ExchangeOnlineClient(
        credential,
        tenant_id=settings.tenant_id,
        base_url=str(settings.exchange_base_url).rstrip("/"),
        anchor_domain=settings.tenant_domain,
    )
    if settings.servicebus_connection_string is not None:
        outbox = ServiceBusOutbox.from_connection_string(settings.servicebus_connection_string.get_secret_value())
    else:
        assert settings.servicebus_namespace is not None  # Settings guarantees one of the two
        outbox = ServiceBusOutbox.from_namespace(settings.servicebus_namespace, credential)
    policy = OnboardingPolicy.load(settings.policy_file) if settings.policy_file else OnboardingPolicy()
    retry = RetryPolicy(
        max_attempts=settings.retry_max_attempts,
        base_delay=timedelta(seconds=settings.retry_base_delay_seconds),
        max_delay=timedelta(seconds=settings.retry_max_delay_seconds),
        max_age=settings.retry_max_age,
    )
    welcome = (
        WelcomeMail(
            sender=str(settings.welcome_sender),
            subject=settings.welcome_subject,
            check_interval=timedelta(seconds=settings.welcome_check_interval_seconds),
            deadline=timedelta(minutes=settings.welcome_deadline_minutes),
        )
        if settings.welcome_sender
        else None
    )
    dependencies = StageDependencies(
        graph=graph,
        exchange=exchange,
        policy=policy,
        retry=retry,
        guest_redirect_url=str(settings.guest_redirect_url),
        welcome=welcome,
    )
    # Table Storage in Azure uses the app's managed identity, like every other client here.
    journal = open_journal(settings.journal.get_secret_value() if settings.journal else None, credential)
    return Services(settings, dependencies, outbox, graph, exchange, journal)


async def get_services() -> Services:
    global _services
    async with _lock:
        if _services is None:
            install_safe_log_records()
            _services = build_services(Settings())  # fields come from the environment
        return _services


async def close_services() -> None:
    """For hosts that end (the local host, tests); Azure simply recycles the process."""
    global _services
    async with _lock:
        if _services is not None:
            await _services.close()
            _services = None


async def stage_runner(stage_name: StageName, stage: Stage) -> StageRunner:
    services = await get_services()
    settings = services.settings
    return StageRunner(
        stage_name,
        stage,
        services.stage_dependencies,
        services.outbox,
        settings.outcome_queue,
        settings.servicebus_max_delivery_count,
        services.journal,
    )
