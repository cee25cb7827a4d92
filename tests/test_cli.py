"""The README's product command: `onboard demo` exits 0 only when every step met its outcome."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.main import app
from cli.settings import read_env_file
from shared.setting_names import env_name
from shared.settings import SERVICEBUS_CONNECTION, Settings
from tests.onboard_process import run_onboard


@pytest.fixture(autouse=True)
def no_dot_env_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command reads ./.env into the environment: never a developer's own, in these tests."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.stack
@pytest.mark.parametrize("columns", [80, 120])
def test_demo_prints_one_readable_block_per_step_quietly_and_exits_zero(tmp_path: Path, columns: int) -> None:
    result = run_onboard("demo", "--timeout", "60", cwd=tmp_path, columns=columns)
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ("Partners", "Suppliers (secure)", "Project Falcon", "Failed: GroupNotFound", "6 of 6 steps"):
        assert text in result.stdout
    assert result.stdout.count("✔ ") == 6  # four samples, then an update and an offboard
    words = " ".join(" ".join(result.stdout.split()).split())
    assert "✔ Update: Jordan Reyes is renamed Jordan Reyes-Ortiz Outcome Succeeded Action update" in words
    assert "Action offboard" in words and "Recipient MailContact (created by this app)" in words
    assert max(len(line) for line in result.stdout.splitlines()) <= columns
    # Each word whole: a wrapped line breaks between words, never inside one.
    assert "delivered (message trace)." in " ".join(line.strip() for line in result.stdout.splitlines())
    assert result.stderr == "", "the expected GroupNotFound is no ERROR in a demo that went as planned"
    said = " ".join(result.stdout.split())
    assert "journal stopped with it" in said and "run it by hand (README, By hand)" in said
    assert "reads the same journal" not in said  # it was a temporary one


@pytest.mark.parametrize("command", ["demo", "sandbox", "host", "submit", "status", "schema"])
def test_help_describes_every_option_and_shows_flags_as_flags(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    undescribed = [param.name for param in click_command.params if not getattr(param, "help", "x")]
    assert undescribed == []
    assert "Needs" in result.output, "each command says which settings it needs"


def test_host_verbose_can_be_turned_off_and_dot_env_is_mentioned() -> None:
    assert "-v, --verbose / -q, --quiet" in CliRunner().invoke(app, ["host", "--help"]).output
    assert ".env" in CliRunner().invoke(app, ["--help"]).output


def test_submit_refuses_an_invalid_request_before_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ServiceBusConnection",
        "Endpoint=sb://localhost:1;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true;",
    )
    monkeypatch.setenv("ONBOARDING_TENANT_ID", "11111111-2222-3333-4444-555555555555")
    monkeypatch.setenv("ONBOARDING_TENANT_DOMAIN", "contoso.onmicrosoft.com")
    result = CliRunner().invoke(
        app,
        [
            "submit",
            "--email",
            "not-an-address",
            "--display-name",
            "X",
            "--group",
            "g@contoso.com",
            "--source-system",
            "hr",
        ],
    )
    assert result.exit_code == 2
    assert result.output == "Invalid request: --email is not an email address: An email address must have an @-sign.\n"

    by_name = CliRunner().invoke(
        app,
        [
            "submit",
            *("--email", "a@fabrikam.example", "--display-name", "A", "--group", "Partners"),
            *("--source-system", "demo hr", "--request-id", "a b"),
        ],
        env={"COLUMNS": "400"},
    )
    assert by_name.exit_code == 2
    assert by_name.output == (  # in words, never a UUID parser's or a regular expression's
        "Invalid request: --group must be the group's SMTP address (name@domain) or its object id (a GUID), "
        "not its display name; --request-id must be 1-128 characters without spaces, control characters, "
        "/ \\ # or ?; --source-system must be 1-64 letters, digits, '.', '_' or '-'.\n"
    )


def test_host_names_missing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ServiceBusConnection", "ONBOARDING_TENANT_ID", "ONBOARDING_TENANT_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["host"])
    assert result.exit_code == 2
    assert "ONBOARDING_TENANT_ID is not set" in result.output


def test_host_refuses_a_malformed_journal_setting_at_start_without_echoing_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ServiceBusConnection", "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=v")
    monkeypatch.setenv("ONBOARDING_TENANT_ID", "00000000-0000-0000-0000-000000000000")
    monkeypatch.setenv("ONBOARDING_TENANT_DOMAIN", "contoso.onmicrosoft.com")
    monkeypatch.setenv("ONBOARDING_JOURNAL", "AccountName=x;AccountKey=c2VjcmV0a2V5;")
    result = CliRunner().invoke(app, ["host"], env={"COLUMNS": "240"})
    assert result.exit_code == 2
    assert "journal setting has an unknown form" in result.output
    assert "c2VjcmV0a2V5" not in result.output


def test_sandbox_refuses_bad_knobs_and_seed_files_before_starting_anything(tmp_path: Path) -> None:
    knobs = tmp_path / "knobs.json"
    knobs.write_text('{"latency_ms": -5}')
    state = tmp_path / "state"
    refused = CliRunner().invoke(app, ["sandbox", "--knobs", str(knobs), "--state-dir", str(state)])
    assert refused.exit_code == 2
    assert "Invalid value for --knobs" in refused.output and "latency_ms" in refused.output
    missing = CliRunner().invoke(app, ["sandbox", "--seed", str(tmp_path / "none.json"), "--state-dir", str(state)])
    assert missing.exit_code == 2 and "Invalid value for --seed" in missing.output
    assert not state.exists(), "nothing was started or created"


def test_dot_env_fills_in_only_what_the_environment_leaves_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONBOARDING_TENANT_DOMAIN", "from-the-environment.onmicrosoft.com")
    monkeypatch.setenv(SERVICEBUS_CONNECTION, "")  # restored after the test, whatever .env sets
    monkeypatch.delenv(SERVICEBUS_CONNECTION)
    (tmp_path / ".env").write_text(
        "ONBOARDING_TENANT_DOMAIN=from-dot-env.onmicrosoft.com\n"
        "ServiceBusConnection='Endpoint=sb://localhost:5672;SharedAccessKeyName=k;SharedAccessKey=v;'\n"
    )

    read_env_file()

    assert os.environ["ONBOARDING_TENANT_DOMAIN"] == "from-the-environment.onmicrosoft.com"
    assert os.environ[SERVICEBUS_CONNECTION] == "Endpoint=sb://localhost:5672;SharedAccessKeyName=k;SharedAccessKey=v;"


def test_settings_are_named_as_they_are_set() -> None:
    assert env_name(Settings, "tenant_id") == "ONBOARDING_TENANT_ID"
    assert env_name(Settings, "servicebus_connection_string") == "ServiceBusConnection"
    assert env_name(Settings, "servicebus_namespace") == "ServiceBusConnection__fullyQualifiedNamespace"


def test_status_reads_its_journal_setting_from_dot_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONBOARDING_JOURNAL", "")  # restored after the test, whatever .env sets
    monkeypatch.delenv("ONBOARDING_JOURNAL")
    elsewhere = tmp_path / "elsewhere" / "journal.db"
    (tmp_path / ".env").write_text(f"ONBOARDING_JOURNAL='sqlite:{elsewhere}'\n")

    result = CliRunner().invoke(app, ["status"], env={"COLUMNS": "240"})

    assert result.exit_code == 2
    assert result.output.startswith(f"No journal at {elsewhere}: set ONBOARDING_JOURNAL (or --journal)")


def test_help_lists_the_commands_in_a_newcomers_order_and_there_is_a_version() -> None:
    from importlib import metadata

    from cli.main import NEWCOMER_ORDER, PACKAGE

    help_text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "120"}).output
    listed = [line.split()[0] for line in help_text.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == list(NEWCOMER_ORDER)
    assert set(typer.main.get_command(app).commands) == set(NEWCOMER_ORDER)  # type: ignore[attr-defined]
    assert listed[:3] == ["demo", "sandbox", "host"], "first what a newcomer runs first"

    version = CliRunner().invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output == f"onboard {metadata.version(PACKAGE)}\n"
