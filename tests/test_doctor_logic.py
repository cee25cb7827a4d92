"""The doctor's pure decisions: what a token's roles, a queue's properties and a policy's groups make of a line,
and what the lines make of the exit code. (The calls themselves run against the stand-ins: tests/test_doctor.py.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from azure.servicebus.management import QueueProperties

from cli.doctor import EXIT_INCOMPLETE, EXIT_WRONG, exit_code
from cli.doctor_queues import QueueExpectation, differences, expected_queues
from shared.contracts import GroupKind
from shared.directory.rights import GROUP_READ, MAIL_SEND, USER_INVITE, USER_READ, Features
from shared.policy import OnboardingPolicy
from shared.queues import SELF_CHECK_QUEUE
from shared.selfcheck import Check, Status, check_roles, named_groups, token_claims
from standins.servicebus_emulator.management import iso_duration
from standins.tenant_sandbox.token_face import encode_token


def _line(status: Status) -> Check:
    return Check(area="test", name=status.value, status=status, detail="")


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ([Status.OK, Status.WARNING], 0),
        ([Status.OK, Status.SKIPPED], EXIT_INCOMPLETE),
        ([Status.SKIPPED, Status.WRONG], EXIT_WRONG),
    ],
)
def test_the_exit_code_is_zero_only_when_nothing_is_wrong_or_unchecked(statuses: list[Status], code: int) -> None:
    assert exit_code([_line(status) for status in statuses]) == code


def test_a_missing_role_is_wrong_and_one_beyond_the_features_a_warning() -> None:
    lines = {
        c.name: c
        for c in check_roles("Graph", frozenset({GROUP_READ, USER_INVITE}), [GROUP_READ, USER_READ], welcome=False)
    }
    assert lines[f"Graph roles: {GROUP_READ}"].status is Status.OK
    assert lines[f"Graph roles: {USER_READ}"].status is Status.WRONG
    assert lines[f"Graph roles: {USER_INVITE}"].status is Status.WARNING


def test_tenant_wide_mail_send_with_a_welcome_sender_is_a_warning_naming_the_scoped_role() -> None:
    (line,) = check_roles("Graph", frozenset({MAIL_SEND}), [], welcome=True)
    assert line.status is Status.WARNING and "Application Mail.Send" in line.detail


def test_the_features_of_a_distribution_only_policy_need_no_guest_rights() -> None:
    roles = Features(frozenset({GroupKind.DISTRIBUTION}), welcome=False).app_roles()
    assert USER_INVITE not in roles and GROUP_READ in roles


def test_the_policy_names_each_group_once_and_any_group_is_no_group() -> None:
    policy = OnboardingPolicy.model_validate(
        {
            "sources": {"hr": {"allowed_groups": ["B@contoso.com", "*"]}, "crm": {"allowed_groups": ["b@contoso.com"]}},
            "sender_authentication_fix_allowed": ["a@contoso.com"],
        }
    )
    assert named_groups(policy) == ["b@contoso.com", "a@contoso.com"]


def _queue(**changes: Any) -> QueueProperties:
    properties: dict[str, Any] = {
        "authorization_rules": [],
        "auto_delete_on_idle": None,
        "dead_lettering_on_message_expiration": True,
        "default_message_time_to_live": timedelta(days=14),
        "duplicate_detection_history_time_window": timedelta(minutes=10),
        "availability_status": None,
        "enable_batched_operations": True,
        "enable_express": False,
        "enable_partitioning": False,
        "lock_duration": timedelta(minutes=1),
        "max_delivery_count": 10,
        "max_size_in_megabytes": 1024,
        "requires_duplicate_detection": True,
        "requires_session": False,
        "status": None,
        "forward_to": None,
        "user_metadata": None,
        "forward_dead_lettered_messages_to": None,
        "max_message_size_in_kilobytes": None,
    }
    return QueueProperties("create-contact", **(properties | changes))


def test_a_stage_queue_is_held_to_what_the_code_relies_on() -> None:
    stage = QueueExpectation("create-contact", True, 10, True)
    assert differences(_queue(), stage) == []
    found = differences(
        _queue(requires_duplicate_detection=False, max_delivery_count=5, dead_lettering_on_message_expiration=False),
        stage,
    )
    assert len(found) == 3
    assert "duplicate detection is off" in found[0] and "MaxDeliveryCount is 5" in found[1]
    assert (
        "window is 0:05:00"
        in differences(_queue(duplicate_detection_history_time_window=timedelta(minutes=5)), stage)[0]
    )


def test_the_doctor_queue_is_held_only_to_existing_without_sessions() -> None:
    (doctor,) = [q for q in expected_queues("onboarding-outcomes", 10) if q.name == SELF_CHECK_QUEUE]
    assert (
        differences(_queue(requires_duplicate_detection=False, dead_lettering_on_message_expiration=False), doctor)
        == []
    )
    assert differences(_queue(requires_session=True), doctor) == ["it requires sessions, which the triggers do not use"]


def test_a_tokens_claims_are_read_and_anything_else_is_no_claims() -> None:
    assert token_claims(encode_token({"roles": ["Group.Read.All"]})) == {"roles": ["Group.Read.All"]}
    assert token_claims("not a token") == {}


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(minutes=1), "PT1M"),
        (timedelta(days=14), "P14D"),
        (timedelta(minutes=10), "PT10M"),
        (timedelta(seconds=0.5), "PT0.5S"),
    ],
)
def test_the_emulator_writes_durations_as_service_bus_does(duration: timedelta, text: str) -> None:
    assert iso_duration(duration) == text


def test_a_sources_own_intake_queue_is_held_to_what_create_contact_relies_on() -> None:
    by_name = {q.name: q for q in expected_queues("onboarding-outcomes", 10, ("intake-partner",))}
    assert by_name["intake-partner"] == QueueExpectation("intake-partner", True, 10, True)
    assert by_name["create-contact"] == QueueExpectation("create-contact", True, 10, True)
