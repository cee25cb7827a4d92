"""The app refuses to start on a setting it cannot run with, in one line naming it, and says what is
legal but likely a mistake: no policy, an ONBOARDING_* name it does not know (shared/startup.py)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from shared.setting_names import COMMAND_LINE_NAMES, PROVISIONING_NAMES, names_of, unknown_names
from shared.settings import Settings
from shared.startup import NO_POLICY, AppCannotStart, check_start
from tools.demo import DEMO_POLICY, OFFLINE_APP_SETTINGS


@pytest.fixture
def app_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name, value in OFFLINE_APP_SETTINGS.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_a_policy_file_that_does_not_exist_stops_the_app_naming_the_setting_and_the_path(
    app_settings: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app_settings.setenv("ONBOARDING_POLICY_FILE", str(tmp_path / "policy.json"))
    with pytest.raises(AppCannotStart) as refused:
        check_start()
    assert str(refused.value) == (
        f"the app cannot start: ONBOARDING_POLICY_FILE={tmp_path / 'policy.json'}: the file does not exist"
    )


def test_a_relative_policy_path_says_where_it_was_read_from(app_settings: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app_settings.chdir(tmp_path)
    app_settings.setenv("ONBOARDING_POLICY_FILE", "policy.json")
    with pytest.raises(AppCannotStart, match=rf"policy.json \(read as {tmp_path}/policy.json\): the file does not"):
        check_start()


def test_a_policy_file_that_does_not_load_is_one_line_naming_the_field(
    app_settings: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "policy.json"
    app_settings.setenv("ONBOARDING_POLICY_FILE", str(broken))
    for text, said in (
        ('{"sources": ', "not a valid policy: Invalid JSON"),
        ('{"sources": {"hr": {}}}', "not a valid policy: sources.hr.allowed_groups: Field required"),
        ('{"source": {}}', "not a valid policy: source: Extra inputs are not permitted"),
    ):
        broken.write_text(text)
        with pytest.raises(AppCannotStart) as refused:
            check_start()
        assert said in str(refused.value) and "\n" not in str(refused.value)


def test_a_broken_setting_stops_the_app_in_plain_words(app_settings: pytest.MonkeyPatch) -> None:
    app_settings.setenv("ONBOARDING_TENANT_ID", "contoso")
    app_settings.setenv("ONBOARDING_RETRY_MAX_ATTEMPTS", "many")
    with pytest.raises(AppCannotStart) as refused:
        check_start()
    assert str(refused.value) == (
        "the app cannot start: ONBOARDING_TENANT_ID must be the tenant's id, a GUID (36 characters: hex digits "
        "and dashes); ONBOARDING_RETRY_MAX_ATTEMPTS must be a whole number"
    )


def test_no_policy_starts_saying_every_request_will_be_denied(
    app_settings: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app_settings.delenv("ONBOARDING_POLICY_FILE")
    with caplog.at_level(logging.WARNING, logger="onboarding.startup"):
        assert check_start().policy_file is None
    assert caplog.messages == [NO_POLICY]
    assert "every request will be denied" in NO_POLICY


def test_a_mistyped_setting_name_is_named_with_the_one_meant(
    app_settings: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app_settings.setenv("ONBOARDING_POLICY_FIEL", str(DEMO_POLICY))
    app_settings.setenv("ONBOARDING_SOMETHING_ELSE", "1")
    with caplog.at_level(logging.WARNING, logger="onboarding.startup"):
        check_start()
    assert caplog.messages == [
        "ONBOARDING_POLICY_FIEL (among the app settings) is not a setting of this app and is ignored; "
        "did you mean ONBOARDING_POLICY_FILE?",
        "ONBOARDING_SOMETHING_ELSE (among the app settings) is not a setting of this app and is ignored "
        "(docs/settings.md lists every setting)",
    ]


def test_the_provisioning_names_are_those_infra_reads_and_no_typo() -> None:
    """azd's parameters (infra/main.parameters.json) may sit beside the app's settings in an environment:
    each is an app setting of the same name or one of PROVISIONING_NAMES."""
    parameters = set(re.findall(r"\$\{(ONBOARDING_[A-Z_]+)\}", Path("infra/main.parameters.json").read_text()))
    assert set(PROVISIONING_NAMES) <= parameters
    assert parameters - set(PROVISIONING_NAMES) <= names_of(Settings)
    assert unknown_names(parameters, names_of(Settings)) == {}
    assert unknown_names({"ONBOARDING_MAX_CONCURENT_CALLS"}, ()) == {
        "ONBOARDING_MAX_CONCURENT_CALLS": "ONBOARDING_MAX_CONCURRENT_CALLS"
    }


def test_the_commands_own_settings_are_known_names() -> None:
    from cli.doctor import DoctorSettings

    assert names_of(DoctorSettings) <= names_of(Settings) | set(COMMAND_LINE_NAMES)
