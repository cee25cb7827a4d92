"""Azure Monitor export through the real azure-monitor-opentelemetry distro, against a loopback ingestion endpoint.

Configuring OpenTelemetry is global to a process, so each export runs in a child process.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shared.telemetry import INSTRUMENTED_LIBRARIES, TelemetrySettingError, configure_telemetry, ingestion_credential
from tools.demo import OFFLINE_APP_SETTINGS

REPOSITORY = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.stack  # the tests run function_app.py in a child process

CHILD = """
import logging, os
import httpx
from opentelemetry import trace
from opentelemetry._logs import get_logger_provider
import function_app  # what Azure imports: it masks records and configures the export
from shared.logs import request_context

logging.getLogger("onboarding").setLevel(logging.INFO)
with request_context("req-42", "corr-7"):
    logging.getLogger("onboarding.runner").info("create-contact done for ana.lind@fabrikam.example")
    # A Graph-like lookup: with tracing on, its span would carry this URL, address included.
    httpx.get(os.environ["PROBE_URL"], params={"$filter": "mail eq 'ana.lind@fabrikam.example'"})
logging.getLogger("azure.servicebus").warning("an SDK line, not exported")
for provider in (get_logger_provider(), trace.get_tracer_provider()):
    if hasattr(provider, "force_flush"):  # only SDK providers have one: with no export there are none
        provider.force_flush()
"""


class Ingestion(ThreadingHTTPServer):
    envelopes: list[dict[str, Any]]
    raw: list[bytes]


class _Track(BaseHTTPRequestHandler):
    server: Ingestion

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:  # http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        if not self.path.startswith("/v2"):  # the probe, not telemetry
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.raw.append(body)
        items = json.loads(body)
        self.server.envelopes.extend(items if isinstance(items, list) else [items])
        answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def ingestion() -> Iterator[Ingestion]:
    server = Ingestion(("127.0.0.1", 0), _Track)
    server.envelopes, server.raw = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_child(port: int, extra_env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "PYTHON_APPLICATION"))},
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",  # no SDK usage pings to Microsoft from a test
        "TMPDIR": str(tmp_path),  # the exporter's offline retry store
        "PROBE_URL": f"http://127.0.0.1:{port}/v1.0/users",
        **OFFLINE_APP_SETTINGS,  # importing function_app checks the app's settings
        **extra_env,
    }
    return subprocess.run(  # noqa: S603  # our own interpreter and a constant script
        [sys.executable, "-c", CHILD], cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_apps_logs_are_exported_masked_with_their_request_ids(ingestion: Ingestion, tmp_path: Path) -> None:
    port = ingestion.server_address[1]
    connection = f"InstrumentationKey=00000000-0000-0000-0000-00000000aaaa;IngestionEndpoint=http://127.0.0.1:{port}/"
    child = run_child(port, {"APPLICATIONINSIGHTS_CONNECTION_STRING": connection}, tmp_path)
    assert child.returncode == 0, child.stderr

    messages = [e for e in ingestion.envelopes if e["data"]["baseType"] == "MessageData"]
    assert [m["data"]["baseData"]["message"] for m in messages] == ["create-contact done for a***@fabrikam.example"]
    (message,) = messages
    assert message["iKey"] == "00000000-0000-0000-0000-00000000aaaa"
    dimensions = message["data"]["baseData"]["properties"]
    assert (dimensions["request_id"], dimensions["correlation_id"]) == ("req-42", "corr-7")
    assert not [e for e in ingestion.envelopes if e["data"]["baseType"] in ("RemoteDependencyData", "RequestData")]
    assert all(b"ana.lind" not in body for body in ingestion.raw), "the full address never leaves the process"


def test_without_a_connection_string_nothing_is_configured(ingestion: Ingestion, tmp_path: Path) -> None:
    child = run_child(ingestion.server_address[1], {}, tmp_path)
    assert child.returncode == 0, child.stderr
    assert configure_telemetry({}) is False
    assert ingestion.envelopes == []


def test_the_workers_own_export_is_refused_with_a_reason(ingestion: Ingestion, tmp_path: Path) -> None:
    port = ingestion.server_address[1]
    connection = f"InstrumentationKey=00000000-0000-0000-0000-00000000aaaa;IngestionEndpoint=http://127.0.0.1:{port}/"
    child = run_child(
        port,
        {"APPLICATIONINSIGHTS_CONNECTION_STRING": connection, "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"},
        tmp_path,
    )
    assert child.returncode == 0, child.stderr
    assert ingestion.envelopes == []
    assert "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true" in child.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("Authorization=Key", "must be Authorization=AAD"),
        ("Authorization=AAD;Secret=x", "must be Authorization=AAD"),
        ("Authorization", "is not Name=Value"),
    ],
)
def test_a_malformed_authentication_string_is_refused(setting: str, message: str) -> None:
    with pytest.raises(TelemetrySettingError, match=message):
        ingestion_credential(setting)


def test_entra_authentication_uses_the_managed_identity() -> None:
    assert ingestion_credential("") is None
    assert type(ingestion_credential("Authorization=AAD")).__name__ == "ManagedIdentityCredential"
    assert type(ingestion_credential("Authorization=AAD;ClientId=1f0e…")).__name__ == "ManagedIdentityCredential"


def test_a_connection_string_without_an_instrumentation_key_is_refused_without_being_echoed() -> None:
    with pytest.raises(TelemetrySettingError) as refused:
        configure_telemetry({"APPLICATIONINSIGHTS_CONNECTION_STRING": "Endpoint=https://x;Key=s3cret"})
    assert "s3cret" not in str(refused.value)


def test_every_instrumentation_of_the_distro_is_switched_off() -> None:
    from azure.monitor.opentelemetry._constants import _ALL_SUPPORTED_INSTRUMENTED_LIBRARIES

    assert set(_ALL_SUPPORTED_INSTRUMENTED_LIBRARIES) <= set(INSTRUMENTED_LIBRARIES)
