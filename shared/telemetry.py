"""Export the app's logs to Azure Monitor (Application Insights) through OpenTelemetry, when configured.

Off unless APPLICATIONINSIGHTS_CONNECTION_STRING is set. What is exported is chosen for safety:
- logs of the app's own loggers ("onboarding.*") only, after logs.py's record factory has masked
  addresses; each carries request_id and correlation_id as custom dimensions;
- no traces: msgraph-sdk's HTTP layer (kiota) and the httpx instrumentation put the full request
  URL on their spans, and Graph URLs hold the person's address in `$filter`;
- no metrics: the distro's HTTP metrics say nothing an operator of this app needs.
With APPLICATIONINSIGHTS_AUTHENTICATION_STRING (`Authorization=AAD`, optionally `;ClientId=<id>`
of a user-assigned identity), the exporter signs in with the managed identity instead of relying on
the connection string's instrumentation key alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from azure.core.credentials import TokenCredential

from shared.logs import install_safe_log_records

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
AUTHENTICATION_STRING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
# The Functions worker's switch to configure Azure Monitor itself: every logger and every span.
WORKER_TELEMETRY = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
APP_LOGGER = "onboarding"  # every module logs under onboarding.<part>
# Every instrumentation the distro (1.8) would switch on; a test keeps this list complete.
INSTRUMENTED_LIBRARIES = (
    "azure_sdk", "django", "fastapi", "flask", "httpx", "httpx2", "psycopg2", "requests", "urllib", "urllib3"
)  # fmt: skip

logger = logging.getLogger("onboarding.telemetry")

_configured = False


class TelemetrySettingError(ValueError):
    """A telemetry setting is malformed; the message never repeats the connection string."""


def configure_telemetry(environ: Mapping[str, str] = os.environ) -> bool:
    """Configure the export once per process; True when telemetry is exported."""
    global _configured
    connection_string = environ.get(CONNECTION_STRING, "").strip()
    if not connection_string:
        return False
    if _configured:
        return True
    if environ.get(WORKER_TELEMETRY, "").strip().lower() == "true":
        logger.warning(
            "%s=true: the Functions worker exports all logs and traces itself, including URLs that hold "
            "addresses; remove that setting to let the app export only its masked logs",
            WORKER_TELEMETRY,
        )
        return False
    if "InstrumentationKey=" not in connection_string:
        raise TelemetrySettingError(
            f"{CONNECTION_STRING} is not an Application Insights connection string "
            "(it needs InstrumentationKey=…;IngestionEndpoint=…)"
        )
    credential = ingestion_credential(environ.get(AUTHENTICATION_STRING, ""))
    # Imported here: without a connection string the app never loads OpenTelemetry.
    from azure.monitor.opentelemetry import configure_azure_monitor

    install_safe_log_records()  # before the first record reaches the exporter
    configure_azure_monitor(
        connection_string=connection_string,
        credential=credential,
        logger_name=APP_LOGGER,
        disable_tracing=True,
        disable_azure_core_tracing=True,
        disable_metrics=True,
        enable_performance_counters=False,
        enable_live_metrics=False,
        # Instrumentations record HTTP calls (URLs, durations) even without tracing: none of them.
        instrumentation_options={library: {"enabled": False} for library in INSTRUMENTED_LIBRARIES},
    )
    _configured = True
    return True


def ingestion_credential(authentication_string: str) -> TokenCredential | None:
    """Functions' own format: `Authorization=AAD` (system-assigned) or `Authorization=AAD;ClientId=<id>`."""
    if not authentication_string.strip():
        return None
    pairs: dict[str, str] = {}
    for part in authentication_string.split(";"):
        if not part.strip():
            continue
        name, equals, value = part.partition("=")
        if not equals or not value.strip():
            raise TelemetrySettingError(f"{AUTHENTICATION_STRING}: {part.strip()!r} is not Name=Value")
        pairs[name.strip().lower()] = value.strip()
    if pairs.get("authorization", "").upper() != "AAD" or set(pairs) - {"authorization", "clientid"}:
        raise TelemetrySettingError(
            f"{AUTHENTICATION_STRING} must be Authorization=AAD, optionally followed by ;ClientId=<client id>"
        )
    from azure.identity import ManagedIdentityCredential

    client_id = pairs.get("clientid")
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
