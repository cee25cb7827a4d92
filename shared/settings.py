"""Every setting the app reads, in one place: the process environment (Functions app settings).

Only the environment, as in Azure: the `onboard` command line reads `./.env` into the environment
first (cli/settings.py), so a local `.env` never changes what tests or the deployed app see.

Names and meanings are listed in docs/settings.md. A missing or malformed setting
fails at start-up with pydantic's message naming it, never halfway through a request.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, EmailStr, Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.journal.setting import parse_journal_setting
from shared.queues import (
    DEFAULT_DRIFT_SCHEDULE,
    DRIFT_SCHEDULE_SETTING,
    INTAKE_QUEUES_SETTING,
    drift_schedule,
    intake_queues,
)
from shared.queues import SERVICEBUS_CONNECTION as SERVICEBUS_CONNECTION

CredentialKind = Literal["managed-identity", "default", "sandbox"]


class ServiceBusSettings(BaseSettings):
    """What a client of the queues needs (`onboard submit`): the namespace, and where outcomes go."""

    # hide_input_in_errors: a refused value may be a connection string with a key.
    model_config = SettingsConfigDict(
        env_prefix="ONBOARDING_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    servicebus_connection_string: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices(SERVICEBUS_CONNECTION)
    )
    servicebus_namespace: str | None = Field(
        default=None, validation_alias=AliasChoices(f"{SERVICEBUS_CONNECTION}__fullyQualifiedNamespace")
    )
    outcome_queue: str = Field(default="onboarding-outcomes", pattern=r"^[A-Za-z0-9._/-]{1,260}$")

    @model_validator(mode="after")
    def _one_servicebus_route(self) -> Self:
        if (self.servicebus_connection_string is None) == (self.servicebus_namespace is None):
            raise ValueError(
                f"set exactly one of {SERVICEBUS_CONNECTION} (connection string) or "
                f"{SERVICEBUS_CONNECTION}__fullyQualifiedNamespace (managed identity)"
            )
        return self


class Settings(ServiceBusSettings):
    """Everything the function app reads."""

    tenant_id: str = Field(pattern=r"^[0-9a-fA-F-]{36}$")
    intake_queues: str = Field(
        default="",
        description="Comma-separated intake queues of their own for sources (docs/security.md): read when the "
        "host indexes the app (shared/queues.py, intake_queues), which gives each a create-contact trigger.",
    )

    @field_validator("intake_queues")
    @classmethod
    def _intake_queue_names(cls, value: str) -> str:
        intake_queues({INTAKE_QUEUES_SETTING: value})  # the names the triggers are made from, checked alike
        return value

    tenant_domain: str | None = Field(
        default=None,
        min_length=3,
        description="Not read any more: Exchange calls are anchored on the tenant id. Accepted so existing "
        "deployments' settings stay valid.",
    )
    graph_base_url: HttpUrl = HttpUrl("https://graph.microsoft.com/v1.0")
    exchange_base_url: HttpUrl = HttpUrl("https://outlook.office365.com")
    directory_credential: CredentialKind = "managed-identity"
    allow_sandbox_credential: bool = Field(
        default=False, description="Local flag: only the local stand-ins may use directory_credential=sandbox."
    )
    managed_identity_client_id: str | None = None
    guest_redirect_url: HttpUrl = HttpUrl("https://myapplications.microsoft.com")
    servicebus_max_delivery_count: int = Field(
        default=10, ge=1, le=2000, description="The queues' MaxDeliveryCount: the last delivery reports a crash."
    )
    policy_file: Path | None = None
    retry_max_attempts: int = Field(default=8, ge=1, le=100)
    retry_base_delay_seconds: float = Field(default=5.0, gt=0)
    retry_max_delay_seconds: float = Field(default=900.0, gt=0)
    retry_max_age_hours: float = Field(default=24.0, gt=0)
    retry_max_throttles: int = Field(default=100, ge=1, le=999)
    exchange_concurrent_requests: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Exchange requests one instance keeps in flight at most; unset = as many as its invocations "
        "make. Exchange limits the tenant's requests in flight, every instance's together: size this so that "
        "instances x this stays within that limit (docs/capacity.md).",
    )
    directory_cache_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="How long a process remembers a resolved group and the accepted domains; 0 = not at all.",
    )
    welcome_sender: EmailStr | None = Field(
        default=None, description="Mailbox that sends the welcome message; unset = no welcome message."
    )
    welcome_subject: str = Field(default="Welcome to {group}", min_length=1, max_length=255)
    welcome_check_interval_seconds: float = Field(default=300.0, gt=0, le=3600)
    welcome_deadline_minutes: float = Field(default=60.0, gt=0, le=7 * 24 * 60)
    lease_notice_seconds: float = Field(
        default=7 * 24 * 3600,
        gt=0,
        le=366 * 24 * 3600,
        description="How long before a lease ends its notice event is published, so an owner can renew it.",
    )
    drift_schedule: str = Field(
        default=DEFAULT_DRIFT_SCHEDULE,
        description="NCRONTAB schedule (UTC) of the drift watch's timer, which starts the period's sweep "
        "(docs/drift.md); read when the host indexes the app.",
    )
    drift_period: timedelta = Field(
        default=timedelta(days=1),
        ge=timedelta(minutes=1),
        le=timedelta(days=31),
        description="How often everyone the app onboarded is re-checked: one check per person and group per "
        "period (ISO 8601, e.g. P1D, or seconds). Periods start at multiples of it since 1970-01-01 UTC.",
    )
    drift_page_size: int = Field(
        default=500, ge=1, le=1000, description="Roster entries one page message of the sweep fans out."
    )
    drift_per_minute: int = Field(
        default=60,
        ge=1,
        le=100_000,
        description="People the sweep sends to be checked per minute: 60 re-checks 50,000 in 14 hours "
        "(docs/drift.md, the arithmetic).",
    )

    @field_validator("drift_schedule")
    @classmethod
    def _drift_schedule_form(cls, value: str) -> str:
        return drift_schedule({DRIFT_SCHEDULE_SETTING: value})  # as the trigger is made from it

    self_check_at_start: bool = Field(
        default=True,
        description="Run the self-check (shared/selfcheck.py) once when a process starts, into the log.",
    )
    journal: SecretStr | None = Field(
        default=None,
        description="Status journal: sqlite:<path>, https://<account>.table.core.windows.net/<table>, "
        "or tables:TableName=<table>;<connection string>. Secret: the last form holds a key.",
    )

    @field_validator("journal")
    @classmethod
    def _journal_form(cls, journal: SecretStr | None) -> SecretStr | None:
        parse_journal_setting(journal.get_secret_value() if journal else None)  # fail at start-up, not per message
        return journal

    @model_validator(mode="after")
    def _sandbox_only_locally(self) -> Settings:
        if self.directory_credential == "sandbox" and not self.allow_sandbox_credential:
            raise ValueError(
                "ONBOARDING_DIRECTORY_CREDENTIAL=sandbox is for the local stand-ins only "
                "(they also set ONBOARDING_ALLOW_SANDBOX_CREDENTIAL=true); in Azure use managed-identity"
            )
        return self

    @model_validator(mode="after")
    def _directory_over_https(self) -> Settings:
        # The bearer token goes to both base URLs. msgraph-sdk (kiota) refuses http itself except for
        # localhost; the Exchange client would send it in clear text. Only the local sandbox speaks http.
        if self.directory_credential == "sandbox":
            return self
        for name in ("graph_base_url", "exchange_base_url"):
            if getattr(self, name).scheme != "https":
                raise ValueError(
                    f"ONBOARDING_{name.upper()} must be an https:// URL: the app's bearer token is sent there "
                    "(http is only for the local sandbox, ONBOARDING_DIRECTORY_CREDENTIAL=sandbox)"
                )
        return self

    @property
    def retry_max_age(self) -> timedelta:
        return timedelta(hours=self.retry_max_age_hours)
