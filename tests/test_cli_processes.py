"""The README's by-hand flow and its ordinary troubles, with `onboard` run as child processes.

Each failure a new user meets (no settings, Service Bus unreachable, a port in use, the broker
restarting under a running host) must be one line that says what to do, with no traceback.
"""

from __future__ import annotations

import asyncio
import random
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.servicebus.aio import ServiceBusClient

from cli.settings import write_env_file
from cli.upstream import peek_count
from shared.settings import SERVICEBUS_CONNECTION
from standins.local_host import RECONNECT_MAX_DELAY_SECONDS
from standins.servicebus_emulator import EmulatorConfig, ServiceBusEmulator
from standins.servicebus_emulator.server import free_port
from standins.stack import local_stack
from tests.fixtures.pipeline import OUTCOMES
from tests.onboard_process import RunningOnboard, run_onboard
from tests.waiting import HANG_GUARD_SECONDS
from tools.chaos import Report, count_outcomes, every_outcome, send_requests

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
        host.wait_for("Local host runs 8 functions")  # three stage queues, doctor, leases, drift and two timers
        waited = onboard("submit", *REQUEST, "--group", "partners@contoso.com", "--request-id", "by-hand-2", "--wait")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert "Outcome    Succeeded" in waited.stdout and "Partners (Distribution)" in waited.stdout
        person = (
            "--email",
            "ana.silva@fabrikam.example",
            "--group",
            "partners@contoso.com",
            "--source-system",
            "demo-hr",
        )
        renamed = onboard("update", *person, "--display-name", "Ana Silva-Reis", "--request-id", "by-hand-4", "--wait")
        assert renamed.returncode == 0, renamed.stdout + renamed.stderr
        assert "Action     update" in renamed.stdout and "display name and names" in renamed.stdout
        left = onboard("offboard", *person, "--request-id", "by-hand-5", "--wait")
        assert left.returncode == 0, left.stdout + left.stderr
        assert "no longer a member" in left.stdout and "Deleted the mail contact this app created" in left.stdout
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
    # Run where there is no .env (say, in docs/), each says where it looked.
    assert f"or in a .env file: there is none in {tmp_path} (run the command in the directory that holds it)" in line

    status = run_onboard("status", cwd=tmp_path)
    assert status.returncode == 2
    (line,) = lines_of(status.stdout + status.stderr)
    assert line.startswith(f"No journal at {tmp_path / '.onboard' / 'journal.db'}, and no .env in {tmp_path}:")
    assert "Run `onboard sandbox`" not in line  # it may well be running, in the directory that has the .env


def test_a_host_whose_policy_file_is_missing_refuses_to_start_and_takes_no_message(tmp_path: Path) -> None:
    missing = tmp_path / "policy.json"
    with local_stack() as stack:
        write_env_file({**stack.environment, "ONBOARDING_POLICY_FILE": str(missing)}, tmp_path / ".env")
        waiting = run_onboard(
            "submit", *REQUEST, "--group", "partners@contoso.com", "--request-id", "p-1", cwd=tmp_path
        )
        assert waiting.returncode == 0, waiting.stderr

        host = run_onboard("host", cwd=tmp_path)

        left = asyncio.run(peeked_requests(stack.environment[SERVICEBUS_CONNECTION]))
    assert host.returncode == 2
    assert lines_of(host.stdout + host.stderr) == [
        f"onboard host: the app cannot start: ONBOARDING_POLICY_FILE={missing}: the file does not exist"
    ]
    assert left == [("p-1", 0)], "the request waits, never delivered"


async def peeked_requests(connection: str) -> list[tuple[str | None, int | None]]:
    async with (
        ServiceBusClient.from_connection_string(connection) as client,
        client.get_queue_receiver("create-contact") as receiver,
    ):
        return [(m.message_id, m.delivery_count) for m in await receiver.peek_messages(max_message_count=10)]


def test_a_mistyped_setting_name_is_named_and_a_missing_policy_said_at_start(tmp_path: Path) -> None:
    with local_stack() as stack:
        environment = {name: value for name, value in stack.environment.items() if name != "ONBOARDING_POLICY_FILE"}
        write_env_file({**environment, "ONBOARDING_POLICY_FIEL": "policy.json"}, tmp_path / ".env")
        status = run_onboard("status", cwd=tmp_path)
        host = RunningOnboard("host", "--quiet", cwd=tmp_path)
        try:
            host.wait_for("Local host runs")
        finally:
            code = host.stop()

    typo = "ONBOARDING_POLICY_FIEL ({where}) is not a setting of this app and is ignored; did you mean ONBOARDING_POLICY_FILE?"
    assert typo.format(where=f"in {tmp_path / '.env'}") in lines_of(status.stderr)
    assert code == 0
    said = [line.split(" [-] ", 1)[-1] for line in host.lines[:2]]
    assert said == [
        typo.format(where="among the app settings"),
        "ONBOARDING_POLICY_FILE is not set: every request will be denied (PolicyDenied)",
    ]


@pytest.fixture
def occupied_ports() -> Iterator[tuple[int, int]]:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as one,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as two,
    ):
        for listener in (one, two):
            listener.bind(("127.0.0.1", 0))
            listener.listen()
        yield one.getsockname()[1], two.getsockname()[1]


def test_ports_in_use_are_one_line_naming_each_option(tmp_path: Path, occupied_ports: tuple[int, int]) -> None:
    servicebus, tenant = occupied_ports
    management = str(free_port("127.0.0.1"))
    state = ("--servicebus-management-port", management, "--state-dir", str(tmp_path / "state"))
    one = run_onboard(
        "sandbox",
        "--servicebus-port",
        str(servicebus),
        "--tenant-port",
        str(free_port("127.0.0.1")),
        *state,
        cwd=tmp_path,
    )
    both = run_onboard(
        "sandbox", "--servicebus-port", str(servicebus), "--tenant-port", str(tenant), *state, cwd=tmp_path
    )

    assert (one.returncode, both.returncode) == (1, 1)
    assert lines_of(one.stdout + one.stderr) == [
        f"Port {servicebus} (for the Service Bus emulator) is already in use, perhaps by another `onboard sandbox`: "
        "stop that, or pass --servicebus-port."
    ]
    assert lines_of(both.stdout + both.stderr) == [  # every port at once, not one per try
        f"Ports {servicebus} (for the Service Bus emulator; --servicebus-port), {tenant} (for the tenant sandbox; "
        "--tenant-port) are already in use, perhaps by another `onboard sandbox`: stop that, or pass other ports "
        "with those options."
    ]
    assert not (tmp_path / "state").exists()


def test_a_running_host_waits_for_service_bus_and_survives_its_restart_under_load(tmp_path: Path) -> None:
    """Service Bus away at the start, then a broker restart while 300 requests are in flight: one line
    when it goes and one when it is back, handling again within the backoff bound, no traceback,
    and every request ends with exactly one outcome (nothing lost, nothing done twice)."""
    database = tmp_path / "servicebus.db"  # durable, as `onboard sandbox` keeps it: a restart loses nothing
    with local_stack(servicebus_database=database) as stack:
        port = stack.emulator.port
        stack.emulator.stop()  # the host starts while Service Bus is away
        write_env_file(stack.environment, tmp_path / ".env")
        host = RunningOnboard("host", "--quiet", cwd=tmp_path)
        emulators: list[ServiceBusEmulator] = []

        def start_emulator() -> ServiceBusEmulator:
            emulators.append(ServiceBusEmulator(EmulatorConfig.default(), port=port, database=database))
            emulators[-1].start()
            return emulators[-1]

        report = Report()
        try:
            host.wait_for("Service Bus is unreachable")
            connection = start_emulator().connection_string
            host.wait_for("reconnected to Service Bus", timeout=60)
            ids = asyncio.run(send_requests(stack, 300, random.Random(25), 0.0, report))
            asyncio.run(wait_for_outcomes_on_their_queue(connection, at_least=20))  # requests in flight now
            emulators[-1].stop()
            start_emulator()
            back_at = time.monotonic()
            host.wait_for("reconnected to Service Bus", count=2, timeout=120)
            reconnected_after = time.monotonic() - back_at
            outcomes = asyncio.run(every_outcome(stack, set(ids), time.monotonic() + HANG_GUARD_SECONDS))
            count_outcomes(report, ids, outcomes, stack)
        finally:
            code = host.stop()  # first: the emulator's stop is no outage the host should see
            for emulator in emulators:
                emulator.stop()

    assert (report.lost, report.duplicated) == ([], []), report.lines()
    assert sum(report.outcomes.values()) == 300
    # The next try after Service Bus is back comes within the backoff's cap; a few seconds to connect.
    assert reconnected_after < RECONNECT_MAX_DELAY_SECONDS + 10, host.output
    assert code == 0, host.output
    assert "Traceback" not in host.output
    # One line to start, one per outage and one per recovery however many queues and invocations
    # noticed, and one to say what stopping waits for. Besides: the app's own sender may meet a link the
    # outage broke (a lease's wake-up is scheduled through it) and say so in one line per message, which
    # comes back; never a traceback (above).
    app_lines = [line for line in host.lines if "could not reach Service Bus" in line or "] function " in line]
    assert all(line.split("] ", 1)[1].startswith(("stage ", "function ")) for line in app_lines), host.output
    assert len(host.lines) - len(app_lines) == 1 + 2 + 2 + 1, host.output
    assert sum("Service Bus is unreachable" in line for line in host.lines) == 2
    assert host.lines[-1].startswith("Stopping:")


async def wait_for_outcomes_on_their_queue(connection: str, *, at_least: int) -> None:
    async with ServiceBusClient.from_connection_string(connection) as client:
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while await peek_count(client, OUTCOMES, cap=at_least) < at_least:
            assert time.monotonic() < deadline, f"fewer than {at_least} outcomes within {HANG_GUARD_SECONDS} s"
            await asyncio.sleep(0.5)


def test_a_wait_that_service_bus_ends_says_the_requests_were_sent_and_how_to_follow_them(tmp_path: Path) -> None:
    """`bulk --wait` with no host: Service Bus goes away while it waits, then comes back for `submit
    --wait`, which is stopped with Ctrl-C. Both say what was sent and how to follow it, no traceback."""
    emulator = ServiceBusEmulator(EmulatorConfig.default())
    emulator.start()
    try:
        write_env_file({SERVICEBUS_CONNECTION: emulator.connection_string}, tmp_path / ".env")
        (tmp_path / "people.csv").write_text(
            "external_email,display_name,group,source_system\n"
            "ana.silva@fabrikam.example,Ana Silva,partners@contoso.com,demo-hr\n"
            "ben.okafor@fabrikam.example,Ben Okafor,partners@contoso.com,demo-hr\n"
        )
        bulk = RunningOnboard("bulk", "people.csv", "--wait", cwd=tmp_path)
        bulk.wait_for("Sent 2 request(s)")
        emulator.stop()
        bulk_code = bulk.finish()
        emulator = ServiceBusEmulator(EmulatorConfig.default(), port=emulator.port)
        emulator.start()
        submit = RunningOnboard(
            "submit", *REQUEST, "--group", "partners@contoso.com", "--request-id", "w-1", "--wait", cwd=tmp_path
        )
        submit.wait_for("Waiting up to")
        submit_code = submit.stop()
    finally:
        emulator.stop()

    assert bulk_code == 3, bulk.output
    assert bulk.lines[-1] == (
        "Stopped waiting: Service Bus went away. All 2 requests were sent and go on in the "
        "pipeline: `onboard status --watch` shows where they stand, `onboard status REQUEST_ID` one of them; "
        "`onboard bulk people.csv --wait` again within 10 minutes waits for them once more and sends none twice."
    )
    assert submit_code == 130, submit.output
    assert submit.lines[-1] == (
        "Interrupted while waiting. Request w-1 was sent and goes on in the pipeline: "
        "`onboard status w-1` shows where it stands."
    )
    assert "Traceback" not in bulk.output + submit.output
