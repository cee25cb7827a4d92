"""checkov's Bicep checks on infra/: no failed check, every skip justified, and every file parsed.

checkov runs once per session, as a subprocess from its own venv (.venv/checkov, installed by
`make test` from tests/infra/checkov-requirements.txt: it cannot share the dev venv). It runs
offline: BC_SKIP_MAPPING, --skip-download, and proxies pointed at a closed local port so that any
attempt to reach the network fails at once instead of waiting.

checkov reads Bicep with its own, older pycep-parser and *silently skips* a file it cannot parse
(exit code 0, the file listed under parsing_errors), so parse errors are asserted explicitly.

What it can see: the resources declared in these files. The Azure Verified Modules that create the
resources are in the Bicep registry, which checkov does not open, so its resource count can be 0;
the settings passed to those modules are asserted in tests/infra/test_bicep.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra.bicep import INFRA, REPOSITORY

pytestmark = pytest.mark.stack  # checkov runs as a child process (its own venv)

CHECKOV_VENV = REPOSITORY / ".venv" / "checkov" / "bin" / "checkov"
CLOSED_PORT = "http://127.0.0.1:9"


def _checkov() -> Path:
    configured = os.environ.get("CHECKOV")
    if configured:
        return Path(configured)
    if CHECKOV_VENV.exists():
        return CHECKOV_VENV
    on_path = shutil.which("checkov")
    if on_path:
        return Path(on_path)
    pytest.fail(
        "checkov not found: run `make test` (it installs tests/infra/checkov-requirements.txt into .venv/checkov), "
        "or set CHECKOV to its path",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(REPOSITORY)),
        "BC_SKIP_MAPPING": "TRUE",
        "HTTP_PROXY": CLOSED_PORT,
        "HTTPS_PROXY": CLOSED_PORT,
        "http_proxy": CLOSED_PORT,
        "https_proxy": CLOSED_PORT,
    }
    command = [str(_checkov()), "-d", str(INFRA), "--framework", "bicep", "-o", "json", "--skip-download"]
    result = subprocess.run(  # noqa: S603 - a fixed command line
        command, capture_output=True, text=True, env=environment, cwd=REPOSITORY, timeout=300, check=False
    )
    # checkov exits 1 when a check fails; anything else but 0 means it did not run.
    assert result.returncode in (0, 1), f"checkov exited {result.returncode}:\n{result.stderr[-4000:]}"
    try:
        parsed = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON report:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}", pytrace=False)
    # One framework gives one report. With no resource at all, checkov prints only the summary.
    assert isinstance(parsed, dict), parsed
    return parsed if "summary" in parsed else {"results": {}, "summary": parsed}


def test_checkov_parsed_every_file(report: dict[str, Any]) -> None:
    unparsed = report["results"].get("parsing_errors", [])
    assert not unparsed and report["summary"]["parsing_errors"] == 0, (
        f"checkov's pycep-parser cannot read {unparsed}: it skipped them without checking anything. "
        "Use syntax its parser reads (infra/main.bicep, syntax note)."
    )


def test_no_failed_check(report: dict[str, Any]) -> None:
    failed = [
        f"{check['check_id']} {check['file_path']}:{check['file_line_range']} {check['resource']}: {check['check_name']}"
        for check in report["results"].get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    assert report["summary"]["failed"] == 0


def test_every_skip_is_justified(report: dict[str, Any]) -> None:
    """A skip is a `// checkov:skip=CKV_...: reason` comment inside the resource; the reason is required."""
    unjustified = [
        f"{check['check_id']} {check['file_path']}"
        for check in report["results"].get("skipped_checks", [])
        # checkov's text when the comment has no reason
        if (check["check_result"].get("suppress_comment") or "").strip() in ("", "No comment provided")
    ]
    assert not unjustified, f"skipped without a reason: {unjustified}"
