"""The README's product command: `onboard demo` exits 0 only when every sample met its outcome."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app


@pytest.mark.stack
def test_demo_prints_every_outcome_and_exits_zero() -> None:
    result = CliRunner().invoke(app, ["demo", "--timeout", "60"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    for text in ("Partners", "Suppliers (secure)", "Project Falcon", "GroupNotFound", "4 of 4 samples"):
        assert text in result.output


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
    assert "external_email" in result.output


def test_host_names_missing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ServiceBusConnection", "ONBOARDING_TENANT_ID", "ONBOARDING_TENANT_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir("/")  # no .env here
    result = CliRunner().invoke(app, ["host"])
    assert result.exit_code == 2
    assert "ONBOARDING_TENANT_ID is not set" in result.output


def test_host_refuses_a_malformed_journal_setting_at_start_without_echoing_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir("/")  # no .env here
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
