"""The Functions Python worker indexes function_app.py the way the host will, and accepts every function.

Runs index_probe.py (the worker package's own indexing code: azure_functions_runtime.bindings.meta
.load_binding_registry, loader.index_function_app, loader.process_indexed_function) in a fresh
interpreter, so the app's modules, the protobuf runtime and sys.path are as clean as in a worker
process and nothing leaks into the rest of the test session.

Which interpreter: $WORKER_PYTHON if set, else .venv/worker (built by `make worker-venv` when python3.13
is on PATH: the app's requirements as 3.13 resolves them, azure-functions-runtime included). Without
either the tests skip and say why (pytest -ra prints it), or fail under CI (tests/tools.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.tools import require_tool
from tools.demo import OFFLINE_APP_SETTINGS

PROBE = Path(__file__).resolve().parent / "index_probe.py"
APP_DIR = Path(__file__).resolve().parents[2]
WORKER_PYTHON = os.environ.get("WORKER_PYTHON", str(APP_DIR / ".venv" / "worker" / "bin" / "python"))

pytestmark = pytest.mark.stack  # a child interpreter, about two seconds

EXPECTED_QUEUES = {
    "create_contact": "create-contact",
    "add_member": "add-member",
    "verify_delivery": "verify-delivery",
    # functions/triggers.py: the app's self-check, asked for by `onboard doctor` (issue 24)
    "doctor": "doctor",
    # functions/triggers.py: leases' scheduled wake-ups (issue 26)
    "leases": "leases",
    # functions/triggers.py: the drift watch's pages and checks (issue 27)
    "drift": "drift",
}
# functions/triggers.py: the timer that sweeps the dead-letter sub-queues (issue 24; no trigger on them)
SWEEP = "dead_letter_sweep"
# functions/triggers.py: the timer that starts each period's drift sweep (issue 27), on ONBOARDING_DRIFT_SCHEDULE
DRIFT_SWEEP = "drift_sweep"
TIMERS = {SWEEP, DRIFT_SWEEP}


def _worker_env() -> dict[str, str]:
    # Only what an interpreter needs and the app settings Azure gives the worker as it indexes (the app
    # checks them then: shared/startup.py), the fewest it starts with: nothing from the developer's shell.
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT"}}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the app tree
    return env | OFFLINE_APP_SETTINGS


def _index(app_dir: Path, settings: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  # the worker venv's interpreter and our own probe
        [WORKER_PYTHON, str(PROBE), str(app_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_worker_env() | (settings or {}),
        cwd=app_dir,
        check=False,
    )


@pytest.fixture(scope="module")
def indexed() -> dict[str, Any]:
    require_tool(
        Path(WORKER_PYTHON).exists(),
        f"no worker interpreter at {WORKER_PYTHON}: run `make worker-venv` (needs python3.13)",
    )
    probe = subprocess.run(  # noqa: S603  # the worker venv's interpreter, a constant script
        [WORKER_PYTHON, "-c", "import sys, azure_functions_runtime; print(sys.version_info >= (3, 13))"],
        capture_output=True,
        text=True,
        env=_worker_env(),
        check=False,
    )
    require_tool(
        probe.returncode == 0 and probe.stdout.strip() == "True",
        f"{WORKER_PYTHON} has no azure-functions-runtime on Python >= 3.13: {probe.stderr.strip()[-300:]}",
    )
    result = _index(APP_DIR)
    assert result.returncode == 0, f"the worker refused to index the app:\n{result.stderr[-4000:]}"
    indexed: dict[str, Any] = json.loads(result.stdout)
    return indexed


def test_every_function_is_indexed(indexed: dict[str, Any]) -> None:
    assert {f["name"] for f in indexed["functions"]} == {*EXPECTED_QUEUES, *TIMERS}


def test_the_dead_letter_sweep_is_a_timer(indexed: dict[str, Any]) -> None:
    function = next(f for f in indexed["functions"] if f["name"] == SWEEP)
    assert function["raw_bindings"] == [
        {"type": "timerTrigger", "direction": "IN", "name": "timer", "schedule": "0 */5 * * * *", "runOnStartup": False}
    ]
    assert function["is_async"] is True


def test_the_drift_sweep_is_a_timer_on_its_schedule_setting(indexed: dict[str, Any]) -> None:
    function = next(f for f in indexed["functions"] if f["name"] == DRIFT_SWEEP)
    assert function["raw_bindings"] == [
        {"type": "timerTrigger", "direction": "IN", "name": "timer", "schedule": "0 15 0 * * *", "runOnStartup": False}
    ]
    hourly = _index(APP_DIR, {"ONBOARDING_DRIFT_SCHEDULE": "0 5 * * * *"})
    assert hourly.returncode == 0, hourly.stderr[-2000:]
    scheduled = next(f for f in json.loads(hourly.stdout)["functions"] if f["name"] == DRIFT_SWEEP)
    assert scheduled["raw_bindings"][0]["schedule"] == "0 5 * * * *"
    refused = _index(APP_DIR, {"ONBOARDING_DRIFT_SCHEDULE": "daily"})
    assert refused.returncode != 0 and "ONBOARDING_DRIFT_SCHEDULE" in refused.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("function_name", sorted(EXPECTED_QUEUES))
def test_trigger_binding_metadata(indexed: dict[str, Any], function_name: str) -> None:
    function = next(f for f in indexed["functions"] if f["name"] == function_name)
    assert function["raw_bindings"] == [
        {
            "type": "serviceBusTrigger",
            "direction": "IN",
            "name": "message",
            "queueName": EXPECTED_QUEUES[function_name],
            "connection": "ServiceBusConnection",
            "autoCompleteMessages": False,
            "properties": {"SupportsDeferredBinding": True},
        }
    ]
    # The second parameter is accepted as the settlement client, not mistaken for a missing binding.
    assert function["settlement_client_arg"] == "message_actions"
    assert function["deferred_bindings_enabled"] is True
    assert function["is_async"] is True


def test_a_sources_own_intake_queue_is_indexed_from_the_app_setting(indexed: dict[str, Any]) -> None:
    """Azure gives the worker the app settings as it indexes: ONBOARDING_INTAKE_QUEUES adds a trigger."""
    result = _index(APP_DIR, {"ONBOARDING_INTAKE_QUEUES": "intake-partner"})
    assert result.returncode == 0, result.stderr[-4000:]
    functions = json.loads(result.stdout)["functions"]
    queues = {f["name"]: f["raw_bindings"][0].get("queueName") for f in functions if f["name"] not in TIMERS}
    assert queues == EXPECTED_QUEUES | {"create_contact_from_intake_partner": "intake-partner"}
    refused = _index(APP_DIR, {"ONBOARDING_INTAKE_QUEUES": "add-member"})
    assert refused.returncode != 0 and "ONBOARDING_INTAKE_QUEUES" in refused.stderr


def test_an_app_that_cannot_start_fails_its_indexing_in_one_line_naming_the_setting(
    indexed: dict[str, Any], tmp_path: Path
) -> None:
    """A missing policy file fails the worker's indexing; the worker then answers the host's init with
    that failure and the host indexes no function (docs/functions-host.md): nothing is consumed."""
    missing = tmp_path / "policy.json"
    refused = _index(APP_DIR, {"ONBOARDING_POLICY_FILE": str(missing)})
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        f"shared.startup.AppCannotStart: the app cannot start: ONBOARDING_POLICY_FILE={missing}: the file does not exist"
    )


def test_versions_are_the_pinned_ones(indexed: dict[str, Any]) -> None:
    versions = indexed["versions"]
    assert versions["azure-functions-runtime"] == "1.3.0"
    assert versions["azurefunctions-extensions-bindings-servicebus"] == "1.0.0b2"
    major, minor = (int(p) for p in versions["protobuf"].split(".")[:2])
    assert (major, minor) >= (6, 31), "the extension's settlement_pb2 needs protobuf >= 6.31.1 at import"


def test_an_unbound_parameter_is_refused(indexed: dict[str, Any], tmp_path: Path) -> None:
    """The check has teeth: a parameter that is neither a binding nor the settlement client fails indexing."""
    (tmp_path / "function_app.py").write_text(
        textwrap.dedent(
            """
            import azure.functions as func
            import azurefunctions.extensions.bindings.servicebus as servicebus

            app = func.FunctionApp()

            @app.service_bus_queue_trigger(arg_name="message", queue_name="q", connection="ServiceBusConnection",
                                           auto_complete_messages=False)
            async def broken(message: servicebus.ServiceBusReceivedMessage,
                             message_actions: servicebus.ServiceBusMessageActions, extra: str) -> None:
                pass
            """
        )
    )
    result = _index(tmp_path)
    assert result.returncode != 0
    assert "FunctionLoadError" in result.stderr


# httpcore asks which async library runs at every lock and event it sets up, by importing sniffio; a failed
# import is not remembered, so without sniffio installed each of those searched sys.path again (7.7 % of a
# busy host's CPU, docs/performance.md; encode/httpcore pull request 1103). requirements.txt installs it.
_ASYNC_LIBRARY_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    from httpcore._synchronization import current_async_library

    class Looked:
        names = []
        def find_spec(self, name, path=None, target=None):
            self.names.append(name)
            return None

    async def main():
        current_async_library()  # the first call may import
        looked = Looked()
        sys.meta_path.insert(0, looked)
        for _ in range(10):
            current_async_library()
        print(json.dumps(looked.names))

    asyncio.run(main())
    """
)


def test_the_deployed_http_stack_searches_for_no_module_at_each_lock(indexed: dict[str, Any]) -> None:
    result = subprocess.run(  # noqa: S603  # the worker venv's interpreter, a constant script
        [WORKER_PYTHON, "-c", _ASYNC_LIBRARY_PROBE], capture_output=True, text=True, env=_worker_env(), check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == []
