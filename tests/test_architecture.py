"""Dependencies point one way: contracts import no adapter, triggers load no storage SDK, the
sandbox credential is not in the deployed package, and bootstrap takes adapters as overrides.
Of the command line only the local tools (sandbox, host, demo) use the stand-ins, and no module
imports one that imports it back."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.bootstrap import build_services
from shared.settings import SERVICEBUS_CONNECTION, Settings
from tests.fakes import FailureScript, FakeExchange, FakeGraph, Recorder, RecordingJournal, RecordingOutbox
from tools.demo import OFFLINE_APP_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
APP_ENVIRONMENT = {**os.environ, **OFFLINE_APP_SETTINGS}  # importing function_app checks the settings
DEPLOYED = ("function_app.py", "functions", "shared")
PROJECT_PACKAGES = ("cli", "tools", "standins", "shared", "functions")
# The commands that run the stand-ins; every other command also works against Azure alone.
LOCAL_TOOLS = {"cli.sandbox", "cli.host", "cli.demo"}
SETTINGS = {
    SERVICEBUS_CONNECTION: "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true;",
    "tenant_id": "00000000-0000-0000-0000-000000000001",
    "tenant_domain": "contoso.onmicrosoft.com",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def project_modules() -> dict[str, Path]:
    modules = {"function_app": ROOT / "function_app.py"}
    for package in PROJECT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports anywhere in its text (also inside a
    function or under TYPE_CHECKING): `from package import module` counts as importing the module."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                }
        graph[name] = {module for module in found if module in modules and module != name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        if (module := todo.pop()) not in seen:
            seen.add(module)
            todo += graph[module]
    return seen


def test_the_grant_command_reaches_no_stand_in() -> None:
    """`onboard grant` runs against a real tenant; the sandbox's credential comes from the local tools."""
    reached = reachable(import_graph(), "cli.grant")
    assert {"cli.grant_plan", "cli.grant_graph"} <= reached
    assert not {module for module in reached if module.split(".")[0] in {"standins", "tools"}}


def test_only_the_local_tools_of_the_command_line_import_the_stand_ins() -> None:
    graph = import_graph()
    offenders = {
        f"{module} imports {imported}"
        for module, imports in graph.items()
        if module.startswith("cli") and module not in LOCAL_TOOLS
        for imported in imports
        if imported.split(".")[0] in {"standins", "tools"}
    }
    assert not offenders


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    cycles = {
        " -> ".join(sorted((module, other)))
        for module, imports in graph.items()
        for other in imports
        if module in reachable(graph, other)
    }
    assert not cycles


def test_contracts_import_nothing_of_the_project_but_two_leaves() -> None:
    leaves = {"shared.queues", "shared.addresses"}  # queue names; how addresses are measured
    assert {m for m in imported_modules(ROOT / "shared" / "contracts.py") if m.startswith("shared")} <= leaves
    for leaf in leaves:
        path = ROOT / "shared" / f"{leaf.split('.')[1]}.py"
        assert not {m for m in imported_modules(path) if m.split(".")[0] in {"shared", "pydantic"}}


def test_the_deployed_package_never_imports_the_stand_ins_or_the_command_line() -> None:
    files = [ROOT / "function_app.py", *(ROOT / "functions").rglob("*.py"), *(ROOT / "shared").rglob("*.py")]
    offenders = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in files
        for module in imported_modules(path)
        if module.split(".")[0] in {"standins", "cli", "tests"}
    }
    assert not offenders


def test_importing_the_trigger_modules_loads_no_table_storage_sdk() -> None:
    probe = (
        "import sys, function_app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('standins', 'cli') or m.startswith('azure.data.tables')))"
    )
    child = subprocess.run(  # noqa: S603  # our own interpreter and a constant script
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, env=APP_ENVIRONMENT
    )
    assert child.stdout.strip() == "[]"


def test_production_settings_cannot_select_the_sandbox_credential() -> None:
    with pytest.raises(ValidationError, match="local stand-ins only"):
        Settings.model_validate({**SETTINGS, "directory_credential": "sandbox"})
    allowed = Settings.model_validate({**SETTINGS, "directory_credential": "sandbox", "allow_sandbox_credential": True})
    with pytest.raises(RuntimeError, match="supplied by the local host"):
        build_services(allowed)


@pytest.mark.parametrize("setting", ["graph_base_url", "exchange_base_url"])
def test_the_directory_is_reached_over_https_except_in_the_sandbox(setting: str) -> None:
    """The bearer token travels to both base URLs: never in clear text to a real tenant."""
    plain = {**SETTINGS, setting: "http://graph.contoso.example/v1.0"}
    with pytest.raises(ValidationError, match=f"ONBOARDING_{setting.upper()} must be an https:// URL"):
        Settings.model_validate(plain)
    with pytest.raises(ValidationError, match="must be an https:// URL"):
        Settings.model_validate({**plain, "directory_credential": "default"})
    sandbox = {**plain, "directory_credential": "sandbox", "allow_sandbox_credential": True}
    assert str(getattr(Settings.model_validate(sandbox), setting)).startswith("http://")


async def test_build_services_uses_the_adapters_it_is_given_and_closes_only_its_own() -> None:
    recorder, script = Recorder(), FailureScript()
    graph, exchange = FakeGraph(script), FakeExchange(script)
    outbox, journal = RecordingOutbox(recorder), RecordingJournal(recorder)
    services = build_services(
        Settings.model_validate(SETTINGS), graph=graph, exchange=exchange, outbox=outbox, journal=journal
    )
    assert services.stage_dependencies.graph is graph and services.stage_dependencies.exchange is exchange
    assert services.outbox is outbox and services.journal is journal
    assert len(services.closers) == 1, "only the credential it built itself"
    await services.close()


def test_indexing_the_functions_loads_no_app_service_only_the_queue_names_and_the_settings() -> None:
    """The host imports function_app at every cold start; the services wait for the first message. The
    settings and the policy file are read then (pydantic, and the journal setting's module), so a broken
    one stops the app before any message is taken (shared/startup.py)."""
    deferred = ("shared.bootstrap", "shared.runner", "msgraph", "azure.identity", "httpx")
    probe = f"import sys, function_app; print(sorted(m for m in {deferred!r} if m in sys.modules))"
    child = subprocess.run(  # noqa: S603  # our own interpreter and a constant script
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, env=APP_ENVIRONMENT
    )
    assert child.stdout.strip() == "[]"
