"""`onboard doctor` against the local stack: the command as an operator runs it (typer), the product's own
clients over HTTP and AMQP against the tenant sandbox and the Service Bus emulator, and, with --wait, the
app's self-check answered by function_app.py's `doctor` trigger on the local host.

Each check is shown to fail by making the stand-in differ in that one respect: a refused `or` filter
(a sandbox knob), an app role not granted, a queue not provisioned, a group the policy names that the
tenant lacks, an Exchange role not given, and an operator without Manage on the queues.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient
from typer.testing import CliRunner

from cli.main import app
from shared.directory import rights
from shared.queues import SELF_CHECK_QUEUE
from shared.selfcheck import (
    OR_FILTER_FALLBACK,
    SUBJECT,
    SelfCheckReport,
    SelfCheckRequest,
    Status,
    report_message_id,
)
from shared.settings import SERVICEBUS_CONNECTION
from shared.startup import AppCannotStart
from standins.local_app import LOCAL_PLAN, without
from standins.servicebus_emulator import EmulatorConfig
from standins.stack import LocalStack, local_stack, running_host
from standins.tenant_sandbox import Knobs
from tests.fixtures.pipeline import OUTCOMES
from tools.demo import DEMO_POLICY, WELCOME_SETTINGS

pytestmark = pytest.mark.stack


def doctor(stack: LocalStack, *options: str, **settings: str) -> tuple[int, dict[str, Any]]:
    """`onboard doctor --json` with the stack's settings (as `onboard sandbox --write-env` writes them)."""
    environment = {**stack.environment, **settings}
    result = CliRunner().invoke(app, ["doctor", "--json", *options], env=environment, catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def statuses(report: dict[str, Any], status: str) -> set[str]:
    return {check["name"] for check in report["checks"] if check["status"] == status}


def test_a_deployment_as_granted_holds_everything_the_product_needs() -> None:
    with local_stack(settings=WELCOME_SETTINGS) as stack:
        code, report = doctor(stack)
    assert statuses(report, "wrong") == set() and statuses(report, "skipped") == set(), report
    assert code == 0
    checks = by_name(report)
    for name in (
        "Graph token",
        f"Graph roles: {rights.USER_INVITE}",
        f"Exchange roles: {rights.MANAGE_AS_APP}",
        f"Exchange wids: {rights.RECIPIENT_ADMINISTRATOR}",
        "Get-AcceptedDomain",
        "Get-MailContact",
        "Get-DistributionGroup",
        "Get-UnifiedGroup",
        "Get-MessageTraceV2",
        "combined address filter on /groups",
        "$top paging on /groups",
        "group partners@contoso.com",
        f"Microsoft Graph: {rights.GROUP_READ}",
        f"Entra role: {rights.RECIPIENT_ADMINISTRATOR}",
        "queue create-contact",
        f"queue {SELF_CHECK_QUEUE}",
    ):
        assert checks[name]["status"] == "ok", checks.get(name)
    # What no read can show is said, with how to verify it by hand.
    assert statuses(report, "warning") == {rights.SECURITY_GROUP_MEMBERSHIP, rights.APPLICATION_MAIL_SEND}


def test_a_refused_or_filter_is_wrong_and_names_the_fallback() -> None:
    with local_stack(sandbox_knobs=Knobs(refuse_or_with_lambda=True)) as stack:
        code, report = doctor(stack)
        shown = CliRunner().invoke(app, ["doctor"], env={**stack.environment, "COLUMNS": "200"})
    assert code == 1
    refused = by_name(report)["combined address filter on /groups"]
    assert refused["status"] == "wrong" and "Request_UnsupportedQuery" in refused["detail"]
    assert refused["fix"] == OR_FILTER_FALLBACK and "two requests" in refused["fix"]
    assert by_name(report)["group partners@contoso.com"]["status"] == "wrong"  # looked up by address
    # As a person reads it: the line, its fix, the verdict.
    assert shown.exit_code == 1
    lines = " ".join(shown.stdout.split())
    assert "wrong graph combined address filter on /groups: Graph refused" in lines
    assert f"Fix: {OR_FILTER_FALLBACK}" in lines
    assert "something the product needs does not hold." in lines


def test_an_app_role_not_granted_is_wrong_in_the_directory_and_in_the_token() -> None:
    with local_stack(grant=without(LOCAL_PLAN, rights.USER_INVITE)) as stack:
        code, report = doctor(stack)
    assert code == 1
    assert statuses(report, "wrong") == {f"Microsoft Graph: {rights.USER_INVITE}", f"Graph roles: {rights.USER_INVITE}"}
    granted = by_name(report)[f"Microsoft Graph: {rights.USER_INVITE}"]
    assert granted["fix"].startswith("onboard grant --identity ") and "m365" in granted["fix"]


def test_an_exchange_role_not_given_fails_its_cmdlet_and_names_the_role() -> None:
    with local_stack(grant=without(LOCAL_PLAN, rights.MESSAGE_TRACKING), settings=WELCOME_SETTINGS) as stack:
        code, report = doctor(stack)
    assert code == 1
    assert statuses(report, "wrong") == {"Get-MessageTraceV2"}
    assert rights.MESSAGE_TRACKING in by_name(report)["Get-MessageTraceV2"]["detail"]


def test_a_queue_not_provisioned_is_wrong() -> None:
    queues = tuple(q for q in EmulatorConfig.default().queues if q.name != "add-member")
    with local_stack(emulator_config=EmulatorConfig(queues=queues)) as stack:
        code, report = doctor(stack)
    assert code == 1
    assert statuses(report, "wrong") == {"queue add-member"}
    assert by_name(report)["queue add-member"]["detail"] == "does not exist"


def test_a_group_the_policy_names_that_the_tenant_lacks_is_wrong(tmp_path: Path) -> None:
    policy = json.loads(DEMO_POLICY.read_text())
    policy["sources"]["demo-hr"]["allowed_groups"].append("ghosts@contoso.com")
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy))
    with local_stack(policy_file=policy_file) as stack:
        code, report = doctor(stack)
    assert code == 1
    assert statuses(report, "wrong") == {"group ghosts@contoso.com"}
    assert "GroupNotFound" in by_name(report)["group ghosts@contoso.com"]["detail"]


def test_without_manage_on_the_queues_their_check_is_skipped_and_says_what_it_needs() -> None:
    with local_stack() as stack:
        listen_only = stack.emulator.management_connection_string.replace("RootManageSharedAccessKey", "ListenOnly")
        code, report = doctor(stack, ONBOARDING_SERVICEBUS_MANAGEMENT_CONNECTION=listen_only)
    assert code == 3
    assert statuses(report, "wrong") == set()
    skipped = by_name(report)["queues"]
    assert skipped["status"] == "skipped" and "Azure Service Bus Data Owner" in skipped["fix"]


async def test_with_wait_the_deployed_app_checks_itself_and_answers_on_the_outcome_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The app half through the queue, as in Azure, and the start-up run into the log."""
    caplog.set_level(logging.INFO, logger="onboarding.selfcheck")
    with local_stack(settings={**WELCOME_SETTINGS, "ONBOARDING_SELF_CHECK_AT_START": "true"}) as stack:
        async with running_host(stack.environment):
            code, report = await asyncio.to_thread(doctor, stack, "--wait", "--timeout", "60")
            async with ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client:
                async with client.get_queue_receiver(OUTCOMES) as receiver:
                    published = await receiver.peek_messages(max_message_count=10)
    assert code == 0, report
    assert by_name(report)["Graph token"]["status"] == "ok"
    assert by_name(report)["Get-MessageTraceV2"]["status"] == "ok"
    assert [message.subject for message in published] == [SUBJECT]
    assert any("self-check: 0 of" in record.getMessage() for record in caplog.records), "no start-up run logged"


async def test_an_app_that_cannot_start_gives_no_report_and_the_doctor_says_where_to_look(tmp_path: Path) -> None:
    """A missing policy file stops the app at its start (shared/startup.py), so nothing answers on the
    doctor queue either: the doctor says where the app says why."""
    missing = str(tmp_path / "missing.json")
    with local_stack() as stack:
        with pytest.raises(AppCannotStart, match=r"missing\.json: the file does not exist"):
            async with running_host({**stack.environment, "ONBOARDING_POLICY_FILE": missing}):
                pass
        code, report = await asyncio.to_thread(
            doctor, stack, "--wait", "--timeout", "3", ONBOARDING_POLICY_FILE=missing
        )
    assert code == 1
    unanswered = by_name(report)["the app's own checks"]
    assert unanswered["status"] == "wrong" and "`the app cannot start`" in unanswered["fix"]


async def test_a_report_whose_reply_to_queue_does_not_exist_goes_to_the_outcome_queue_saying_so() -> None:
    request = SelfCheckRequest(request_id="doctor-reply-to-1", message_trace=False)
    with local_stack() as stack:
        async with (
            running_host(stack.environment),
            ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        ):
            async with client.get_queue_sender(SELF_CHECK_QUEUE) as sender:
                await sender.send_messages(
                    ServiceBusMessage(request.model_dump_json(), message_id=request.request_id, reply_to="nobody-reads")
                )
            async with client.get_queue_receiver(OUTCOMES, max_wait_time=30) as receiver:
                (message,) = await receiver.receive_messages(max_message_count=1, max_wait_time=30)
    assert message.message_id == report_message_id(request.request_id) and message.subject == SUBJECT
    report = SelfCheckReport.model_validate_json(b"".join(message.body))
    assert "'nobody-reads' does not exist" in report.checks[-1].detail
    assert {check.status for check in report.checks} <= {Status.OK, Status.WARNING}


async def test_a_flood_of_doctor_messages_spends_one_message_trace_query_per_spacing() -> None:
    """The doctor queue is outside input: a second report within the spacing leaves message trace out."""
    requests = [SelfCheckRequest(request_id=f"doctor-flood-{n}") for n in range(2)]
    with local_stack(settings=WELCOME_SETTINGS) as stack:
        async with (
            running_host(stack.environment),
            ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        ):
            async with client.get_queue_sender(SELF_CHECK_QUEUE) as sender:
                for request in requests:
                    await sender.send_messages(
                        ServiceBusMessage(request.model_dump_json(), message_id=request.request_id)
                    )
            received: list[ServiceBusReceivedMessage] = []
            async with client.get_queue_receiver(OUTCOMES, max_wait_time=30) as receiver:
                while len(received) < len(requests):
                    batch = await receiver.receive_messages(max_message_count=2, max_wait_time=30)
                    assert batch, "a report did not arrive"
                    received += batch
    traces = [by_name(json.loads(b"".join(message.body)))["Get-MessageTraceV2"] for message in received]
    # At most one query: the second report leaves it out (and so may the first, when an earlier test in
    # this process queried within the spacing: the spacing is the process's, as in Azure).
    assert [trace["status"] for trace in traces].count("ok") <= 1
    assert any("queried it less than 5 minutes ago" in trace["detail"] for trace in traces)
