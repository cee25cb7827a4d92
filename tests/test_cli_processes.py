"""The README's by-hand flow and its ordinary troubles, with `onboard` run as child processes.

Each failure a new user meets (no settings, Service Bus unreachable, a port in use, the broker
restarting under a running host) must be one line that says what to do, with no traceback.
"""

from __future__ import annotations

import asyncio
import shlex
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.servicebus.aio import ServiceBusClient

from cli.settings import write_env_file
from cli.upstream import collect_outcomes, submit
from shared.contracts import OnboardingRequest, OutcomeEvent, OutcomeStatus
from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator
from standins.servicebus_emulator.server import free_port
from standins.stack import local_stack
from tests.fixtures.pipeline import OUTCOMES
from tests.onboard_process import RunningOnboard, run_onboard
from tests.samples import PARTNERS, sample_request

pytestmark = pytest.mark.stack

REQUEST = ("--email", "ana.silva@fabrikam.example", "--display-name", "Ana Silva", "--source-system", "demo-hr")
CLOSED_PORT_CONNECTION = (
    "Endpoint=sb://localhost:{port};SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
)


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_the_readme_flow_by_hand_works_with_no_traceback_and_no_needless_error(tmp_path: Path) -> None:
    sandbox = RunningOnboard(
        "sandbox",
        "--servicebus-port",
        str(free_port("127.0.0.1")),
        "--servicebus-management-port",
        str(free_port("127.0.0.1")),
        "--tenant-port",
        str(free_port("127.0.0.1")),
        "--write-env",
        cwd=tmp_path,
    )
    host: RunningOnboard | None = None
    ran: list[subprocess.CompletedProcess[str]] = []

    def onboard(*args: str) -> subprocess.CompletedProcess[str]:
        ran.append(run_onboard(*args, cwd=tmp_path))
        return ran[-1]

    try:
        sandbox.wait_for("Ctrl-C stops both")
        # The printed lines survive a shell's `source` whole (the connection string holds `;`).
        printed = "\n".join(line for line in sandbox.lines if not line.startswith("#"))
        (tmp_path / "settings.sh").write_text(printed + "\n")
        sourced = subprocess.run(
            ["bash", "-c", 'set -a; . ./settings.sh; printf %s "$ServiceBusConnection"'],  # noqa: S607
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert sourced.endswith("UseDevelopmentEmulator=true;")
        assert f"ServiceBusConnection={shlex.quote(sourced)}" in (tmp_path / ".env").read_text().replace('"', "'")

        # Before any host runs: the request waits on the queue, and status says so.
        first = onboard("submit", *REQUEST, "--group", "partners@contoso.com", "--request-id", "by-hand-1")
        assert first.returncode == 0, first.stderr
        assert "Submitted request by-hand-1 to queue create-contact." in first.stdout
        assert "Queued on create-contact, not yet handled" in onboard("status", "by-hand-1").stdout
        unknown = onboard("status", "nobody-1")
        assert "Unknown id" in unknown.stdout and unknown.returncode == 1
        resent = onboard("submit", *REQUEST, "--group", "partners@contoso.com", "--request-id", "by-hand-1")
        assert resent.returncode == 0
        assert "drops it as a duplicate" in resent.stderr and "still waiting on the queue" in resent.stderr

        host = RunningOnboard("host", cwd=tmp_path)
        host.wait_for("Local host runs 5 functions")  # three stage queues, the doctor and the dead-letter sweep
        waited = onboard("submit", *REQUEST, "--group", "partners@contoso.com", "--request-id", "by-hand-2", "--wait")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert "Outcome    Succeeded" in waited.stdout and "Partners (Distribution)" in waited.stdout
        failed = onboard(
            "submit", *REQUEST, "--group", "no-such-group@contoso.com", "--request-id", "by-hand-3", "--wait"
        )
        assert failed.returncode == 3
        assert "Failed: GroupNotFound" in failed.stdout
        summary = onboard("status").stdout
        assert "by-hand-3: GroupNotFound" in summary
        assert "by-hand-1" in summary and "by-hand-2" in summary
        # The deployment as a whole, from the .env the sandbox wrote: both halves, the app's through its queue.
        checked = onboard("doctor", "--wait", "--timeout", "60")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "everything the product needs holds" in checked.stdout
    finally:
        host_code = host.stop() if host else 0
        sandbox_code = sandbox.stop()

    assert (host_code, sandbox_code) == (0, 0)
    everything = [sandbox.output, host.output if host else "", *(run.stdout + run.stderr for run in ran)]
    assert not [text for text in everything if "Traceback" in text]
    assert not [line for line in sandbox.lines if " ERROR " in line]  # clients closing connections is normal
    # No ERROR from the host: the wrong group is the request's fault, a WARNING, not a page for a person.
    assert [line for line in (host.lines if host else []) if " ERROR " in line] == []
    assert not [line for line in everything if "Auth level is not applied" in line]


def test_settings_come_from_dot_env_and_an_unreachable_namespace_is_one_line(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")  # nothing listens there
    (tmp_path / ".env").write_text(f"ServiceBusConnection='{CLOSED_PORT_CONNECTION.format(port=port)}'\n")

    result = run_onboard("submit", *REQUEST, "--group", "partners@contoso.com", cwd=tmp_path)  # hang guard: 120 s

    assert result.returncode == 1
    assert lines_of(result.stderr) == [
        f"Could not reach Service Bus at sb://localhost:{port} (ServiceBusConnectionError). "
        "Is `onboard sandbox` running, and does ServiceBusConnection name it?"
    ]


def test_each_command_names_only_the_settings_it_needs_by_environment_variable(tmp_path: Path) -> None:
    host = run_onboard("host", cwd=tmp_path)
    assert host.returncode == 2
    (line,) = lines_of(host.stdout + host.stderr)
    assert line.startswith("onboard host: set exactly one of ServiceBusConnection")
    assert "ONBOARDING_TENANT_ID is not set" in line
    assert "ONBOARDING_TENANT_DOMAIN" not in line  # optional since Exchange calls are anchored on the tenant id

    submit = run_onboard("submit", *REQUEST, "--group", "partners@contoso.com", cwd=tmp_path)
    assert submit.returncode == 2
    (line,) = lines_of(submit.stdout + submit.stderr)
    assert line.startswith("onboard submit: set exactly one of ServiceBusConnection")
    assert "TENANT" not in line


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_port_in_use_is_one_line_naming_the_option(tmp_path: Path, occupied_port: int) -> None:
    result = run_onboard(
        "sandbox",
        "--servicebus-port",
        str(occupied_port),
        "--tenant-port",
        str(free_port("127.0.0.1")),
        "--state-dir",
        str(tmp_path / "state"),
        cwd=tmp_path,
    )

    assert result.returncode == 1
    (line,) = lines_of(result.stdout + result.stderr)
    assert f"Port {occupied_port} (for the Service Bus emulator) is already in use" in line
    assert "--servicebus-port" in line
    assert not (tmp_path / "state").exists()


def test_a_running_host_waits_for_service_bus_and_survives_its_restart(tmp_path: Path) -> None:
    with local_stack() as stack:
        port = stack.emulator.port
        stack.emulator.stop()  # the host starts while Service Bus is away
        write_env_file(stack.environment, tmp_path / ".env")
        host = RunningOnboard("host", "--quiet", cwd=tmp_path)
        emulators: list[ServiceBusEmulator] = []
        try:
            host.wait_for("Service Bus is unreachable")
            for outage in (1, 2):
                emulators.append(ServiceBusEmulator(EmulatorConfig.default(), port=port))
                emulators[-1].start()
                host.wait_for("reconnected to Service Bus", count=outage, timeout=60)
                if outage == 1:
                    emulators[-1].stop()
                    host.wait_for("Service Bus is unreachable", count=2, timeout=60)
            # After the restart the host still works: a request sent now ends with its outcome.
            request = sample_request("after-restart-1", "ana.silva@fabrikam.example", "Ana Silva", PARTNERS)
            outcomes = asyncio.run(submit_and_collect(emulators[-1].connection_string, request))
        finally:
            code = host.stop()  # first: the emulator's stop is no outage the host should see
            for emulator in emulators:
                emulator.stop()

    assert outcomes["after-restart-1"].status is OutcomeStatus.SUCCEEDED, outcomes
    assert code == 0, host.output
    assert "Traceback" not in host.output
    # One line to start, then one per outage and one per recovery, however many queues noticed.
    assert len(host.lines) == 1 + 2 + 2, host.output


async def submit_and_collect(connection: str, request: OnboardingRequest) -> dict[str, OutcomeEvent]:
    async with ServiceBusClient.from_connection_string(connection) as client:
        ids = await submit(client, [request])
        return await collect_outcomes(client, OUTCOMES, ids, within_seconds=60)
