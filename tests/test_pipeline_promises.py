"""The pipeline's promises when the world misbehaves, through the local host, the emulator and the sandbox.

Each test sets a sandbox knob or an emulator setting, sends real requests with the SDK, and reads
the outcome events and the tenant back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from datetime import timedelta

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver

from cli.upstream import collect_outcomes, submit
from shared.contracts import GroupRef, OnboardingRequest, OutcomeEvent, OutcomeStatus, StageName
from shared.decisions import Decision
from shared.envelope import Delivery
from shared.journal import SqliteJournal, TransitionKind
from shared.outbox import QueueSenders
from shared.outcomes import finish
from shared.policy import OnboardingPolicy
from shared.progress import Progress, Turn
from shared.retry import RetryPolicy
from shared.runner import StageRunner
from shared.settings import SERVICEBUS_CONNECTION
from shared.stages import Stage, StageDependencies
from standins.local_host import LocalMessageActions, as_the_host_hands_it
from standins.servicebus_emulator import EmulatorConfig
from standins.stack import LocalStack, local_stack, running_host
from tests.fakes import FailureScript, FakeExchange, FakeGraph
from tests.fixtures.pipeline import OUTCOMES, Readback, onboard
from tests.samples import sample_request as demo_request
from tests.samples import sample_request_json

pytestmark = pytest.mark.stack  # every test here starts stand-ins

PARTNERS = "partners@contoso.com"
BOARD = "board@contoso.com"  # a distribution group no source system may target (demo policy)
FINANCE_TEAM_ID = "7c1d2e3f-0004-4b5c-8d9e-0f1a2b3c4d04"


async def dead_lettered(stack: LocalStack, queue: str) -> list[ServiceBusReceivedMessage]:
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq,
    ):
        return list(await dlq.peek_messages(max_message_count=50))


async def test_each_refusal_dead_letters_with_its_reason(stack: LocalStack) -> None:
    security = demo_request("r-security", "ann@fabrikam.example", "Ann Lee", PARTNERS).model_copy(
        update={"group": GroupRef(object_id=FINANCE_TEAM_ID)}
    )
    expected = {
        "r-unknown-group": (
            "GroupNotFound",
            demo_request("r-unknown-group", "a@fabrikam.example", "A B", "x@contoso.com"),
        ),
        "r-security": ("UnsupportedGroupKind", security),
        "r-dynamic": (
            "UnsupportedGroupKind",
            demo_request("r-dynamic", "b@fabrikam.example", "B C", "all-staff@contoso.com"),
        ),
        "r-source": (
            "PolicyDenied",
            demo_request("r-source", "c@fabrikam.example", "C D", PARTNERS).model_copy(update={"source_system": "crm"}),
        ),
        "r-blocked": ("PolicyDenied", demo_request("r-blocked", "d@blocked.example", "D E", PARTNERS)),
        "r-group-not-allowed": (
            "PolicyDenied",
            demo_request("r-group-not-allowed", "e@fabrikam.example", "E F", BOARD),
        ),
        "r-accepted-domain": (
            "AddressInUseInternally",
            demo_request("r-accepted-domain", "f@contoso.com", "F G", PARTNERS),
        ),
        "r-internal-user": (
            "AddressInUseInternally",
            demo_request("r-internal-user", "adele.vance@contoso.com", "Adele Vance", "project-falcon@contoso.com"),
        ),
    }
    outcomes = await onboard(stack, [request for _, request in expected.values()])
    assert {rid: (o.status, o.reason) for rid, o in outcomes.items()} == {
        rid: (OutcomeStatus.FAILED, reason) for rid, (reason, _) in expected.items()
    }
    reasons = {m.message_id: m.dead_letter_reason for m in await dead_lettered(stack, "create-contact")}
    assert reasons == {rid: reason for rid, (reason, _) in expected.items()}
    assert not stack.sandbox.directory.contacts, "no refusal may leave a contact behind"


async def test_permission_and_rejection_are_permanent(stack: LocalStack) -> None:
    stack.sandbox.inject("exchange", 403, operation="New-MailContact")
    outcome = (await onboard(stack, [demo_request("r-403", "g@fabrikam.example", "G H", PARTNERS)]))["r-403"]
    assert (outcome.status, outcome.reason) == (OutcomeStatus.FAILED, "PermissionDenied")
    assert "It needs Exchange Recipient Administrator" in outcome.description  # the role New-MailContact is in
    stack.sandbox.inject("exchange", 400, operation="Add-DistributionGroupMember")
    outcome = (await onboard(stack, [demo_request("r-400", "h@fabrikam.example", "H I", PARTNERS)]))["r-400"]
    assert (outcome.status, outcome.reason, outcome.stage) == (
        OutcomeStatus.FAILED,
        "DirectoryRejected",
        StageName.ADD_MEMBER,
    )
    assert [m.dead_letter_reason for m in await dead_lettered(stack, "add-member")] == ["DirectoryRejected"]


async def test_5xx_bursts_are_retried_to_success(stack: LocalStack, readback: Readback) -> None:
    stack.sandbox.inject("exchange", 503, count=3, operation="New-MailContact")
    stack.sandbox.inject("exchange", 500, count=2, operation="Add-DistributionGroupMember")
    stack.sandbox.inject("graph", 502, count=2)
    outcome = (await onboard(stack, [demo_request("r-5xx", "i@fabrikam.example", "I J", PARTNERS)]))["r-5xx"]
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
    creates = [e.status for e in stack.sandbox.request_log if e.operation == "New-MailContact"]
    assert creates == [503, 503, 503, 200]
    contact = await readback.exchange.find_mail_contact("i@fabrikam.example")
    members = await readback.exchange.list_distribution_group_members(PARTNERS)
    assert contact is not None and [m.identity for m in members] == [contact.identity]


async def test_welcome_mail_is_confirmed_by_message_trace_or_fails() -> None:
    welcome = {
        "ONBOARDING_WELCOME_SENDER": "welcome@contoso.com",
        "ONBOARDING_WELCOME_CHECK_INTERVAL_SECONDS": "0.5",
    }
    with local_stack(settings=welcome) as stack:
        stack.sandbox.set_knobs(trace_lag_seconds=1.5, bounce_domains=["bounce.example"])
        requests = [
            demo_request("w-ok", "kai@fabrikam.example", "Kai Berg", PARTNERS),
            demo_request("w-bounce", "lou@bounce.example", "Lou Ng", PARTNERS),
        ]
        outcomes = await onboard(stack, requests)
        checks = [e for e in stack.sandbox.request_log if e.operation == "Get-MessageTraceV2"]
        verify_dlq = await dead_lettered(stack, "verify-delivery")
    assert outcomes["w-ok"].status is OutcomeStatus.SUCCEEDED, outcomes["w-ok"]
    assert "welcome message was delivered" in outcomes["w-ok"].description
    assert (outcomes["w-bounce"].status, outcomes["w-bounce"].reason) == (OutcomeStatus.FAILED, "DeliveryFailed")
    assert len(checks) >= 2, "the messages are re-checked until their trace rows appear (one query serves both)"
    assert [m.dead_letter_reason for m in verify_dlq] == ["DeliveryFailed"]


async def test_many_welcomes_are_verified_within_the_tenants_message_trace_quota() -> None:
    """Get-MessageTraceV2 allows the tenant 100 queries in 5 minutes; here 30 checks share a quota of 6."""
    welcome = {"ONBOARDING_WELCOME_SENDER": "welcome@contoso.com", "ONBOARDING_WELCOME_CHECK_INTERVAL_SECONDS": "2"}
    requests = [demo_request(f"w-{n}", f"p{n}@fabrikam.example", f"Person {n}", PARTNERS) for n in range(30)]
    with local_stack(settings=welcome) as stack:
        stack.sandbox.set_knobs(message_trace_quota=6)
        outcomes = await onboard(stack, requests, within_seconds=120)
        traces = [e.status for e in stack.sandbox.request_log if e.operation == "Get-MessageTraceV2"]
    assert all("welcome message was delivered" in outcomes[f"w-{n}"].description for n in range(30)), outcomes
    assert 429 not in traces, traces


async def test_a_burst_into_one_group_turns_its_sender_check_off_once(stack: LocalStack) -> None:
    """Six people into Partners at once (it requires authenticated senders): one Set-DistributionGroup."""
    requests = [demo_request(f"burst-{n}", f"b{n}@fabrikam.example", f"Burst {n}", PARTNERS) for n in range(6)]
    outcomes = await onboard(stack, requests)
    assert all(o.status is not OutcomeStatus.FAILED for o in outcomes.values()), outcomes
    changes = [e for e in stack.sandbox.request_log if e.operation == "Set-DistributionGroup"]
    assert len(changes) == 1, changes


async def test_a_rerun_for_someone_already_in_the_group_sends_no_second_welcome() -> None:
    """A bulk file sent again after the duplicate-detection window must not mail everyone again."""
    welcome = {"ONBOARDING_WELCOME_SENDER": "welcome@contoso.com", "ONBOARDING_WELCOME_CHECK_INTERVAL_SECONDS": "0.5"}
    first = demo_request("w-first", "mia@fabrikam.example", "Mia Holt", PARTNERS)
    again = first.model_copy(update={"request_id": "w-again"})  # the same person and group, a new request
    with local_stack(settings=welcome) as stack:
        outcomes = await onboard(stack, [first])
        outcomes |= await onboard(stack, [again])
        mails = [e for e in stack.sandbox.request_log if e.operation.endswith("/sendMail")]
    assert outcomes["w-first"].status is OutcomeStatus.SUCCEEDED, outcomes["w-first"]
    assert "welcome message was delivered" in outcomes["w-first"].description
    assert outcomes["w-again"].status is OutcomeStatus.SUCCEEDED, outcomes["w-again"]
    assert "already a member" in outcomes["w-again"].description
    assert len(mails) == 1


class StageBug(Exception):
    """What the crashing test stage raises: the one error an invocation may end with here."""


async def run_as_the_host_does(
    runner: StageRunner, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage
) -> StageBug | None:
    """One invocation as the Azure host makes it: the extension's view of the message, blocking settlement.

    The stage's own crash, re-raised by the runner for the host to abandon the message, is returned
    (the host logs it); anything else, the local host's errors included, fails the test.
    """
    actions = LocalMessageActions(receiver, asyncio.get_running_loop(), {str(message.lock_token): message})
    try:
        await runner.run(as_the_host_hands_it(message), actions)
    except StageBug as crash:
        return crash
    return None


async def test_a_stage_that_crashes_on_every_delivery_is_left_to_service_bus_to_dead_letter() -> None:
    """With extension 1.0.0b2 the function never learns which delivery is the last (no count)."""

    async def crashing_stage(request: OnboardingRequest, delivery: Delivery, deps: StageDependencies) -> Decision:
        raise StageBug("a bug")

    crashing = Stage(StageName.CREATE_CONTACT, crashing_stage)
    body = sample_request_json()
    with local_stack(emulator_config=EmulatorConfig.default().with_overrides(max_delivery_count=3)) as stack:
        connection = stack.environment[SERVICEBUS_CONNECTION]
        async with ServiceBusClient.from_connection_string(connection) as client:
            outbox = QueueSenders(ServiceBusClient.from_connection_string(connection))
            journal = SqliteJournal(":memory:")
            runner = StageRunner(crashing, _dependencies(), outbox, OUTCOMES, 3, journal)
            async with client.get_queue_sender("add-member") as sender:
                await sender.send_messages(ServiceBusMessage(body, message_id="crash-1"))
            attempts = []
            crashes: list[StageBug | None] = []
            async with client.get_queue_receiver("add-member") as receiver:
                for _ in range(3):
                    (message,) = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
                    attempts.append((message.delivery_count, as_the_host_hands_it(message).delivery_count))
                    crashes.append(await run_as_the_host_does(runner, receiver, message))
            await outbox.close()
            history = await journal.history("crash-1")
            outcomes = await collect_outcomes(client, OUTCOMES, ["crash-1"], within_seconds=2)
        (dead,) = await dead_lettered(stack, "add-member")
    assert attempts == [(0, None), (1, None), (2, None)]  # the SDK's AMQP count; what the function sees
    assert [str(crash) for crash in crashes] == ["a bug"] * 3, "the runner re-raises the crash for the host"
    assert [(t.decision, t.cause) for t in history] == [(TransitionKind.CRASHED, "StageBug; redelivery follows")] * 3
    assert outcomes == {}, "no ProcessingFailed guessed from a count the function does not have"
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded" and b"".join(dead.body) == body


async def test_a_settlement_that_fails_leaves_one_outcome_and_no_crash(caplog: pytest.LogCaptureFixture) -> None:
    """The first delivery outlives its lock, so complete fails (as the host's gRPC call would): the message comes
    back, is finished again, and the repeated outcome is the same message, which duplicate detection drops."""

    async def slow_first_time(request: OnboardingRequest, delivery: Delivery, deps: StageDependencies) -> Decision:
        if delivery.attempt == 1 and not finished:
            await asyncio.sleep(3)  # longer than the 2 s lock; nothing renews it
        finished.append(delivery.request_id)
        return finish(Turn(StageName.ADD_MEMBER, delivery, deps.clock()), Progress(request=request), "done")

    finished: list[str] = []
    short_locks = EmulatorConfig.default().with_overrides(lock_duration=timedelta(seconds=2))
    with local_stack(emulator_config=short_locks) as stack:
        connection = stack.environment[SERVICEBUS_CONNECTION]
        async with ServiceBusClient.from_connection_string(connection) as client:
            outbox = QueueSenders(ServiceBusClient.from_connection_string(connection))
            journal = SqliteJournal(":memory:")
            stage = Stage(StageName.CREATE_CONTACT, slow_first_time)
            runner = StageRunner(stage, _dependencies(), outbox, OUTCOMES, 3, journal)
            async with client.get_queue_sender("add-member") as sender:
                await sender.send_messages(ServiceBusMessage(sample_request_json(), message_id="settle-1"))
            async with client.get_queue_receiver("add-member") as receiver:
                for _ in range(2):
                    (message,) = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
                    with caplog.at_level(logging.WARNING, logger="onboarding.runner"):
                        assert await run_as_the_host_does(runner, receiver, message) is None
                assert await receiver.receive_messages(max_message_count=1, max_wait_time=3) == []
            await outbox.close()
            history = await journal.history(finished[0])
            async with client.get_queue_receiver(OUTCOMES) as outcomes_receiver:
                outcomes = await outcomes_receiver.peek_messages(max_message_count=10)
        assert await dead_lettered(stack, "add-member") == []
    assert len(finished) == 2, "the message came back after the failed settlement"
    assert "could not settle the message (SettlementError)" in caplog.text
    assert [t.decision for t in history] == [TransitionKind.FINISHED] * 2  # never CRASHED
    (outcome,) = [OutcomeEvent.model_validate_json(b"".join(m.body)) for m in outcomes]
    assert outcome.status is OutcomeStatus.SUCCEEDED


def _dependencies() -> StageDependencies:
    script = FailureScript()
    return StageDependencies(FakeGraph(script), FakeExchange(script), OnboardingPolicy(), RetryPolicy(), "https://x")


async def test_locks_are_renewed_while_a_slow_stage_runs(readback: Readback) -> None:
    short_locks = EmulatorConfig.default().with_overrides(lock_duration=timedelta(seconds=5))
    with local_stack(emulator_config=short_locks) as stack:
        stack.sandbox.set_knobs(latency_ms=2000)
        async with (
            running_host(stack.environment) as host,
            ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        ):
            ids = await submit(client, [demo_request("slow-1", "mo@fabrikam.example", "Mo Ra", PARTNERS)])
            outcome = (await collect_outcomes(client, OUTCOMES, ids, within_seconds=90))["slow-1"]
            invocations = host.invocations
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
    assert invocations == 3, "a lock that expired mid-stage would have redelivered a message"


async def test_a_worker_killed_mid_stage_loses_and_duplicates_nothing(readback: Readback) -> None:
    short_locks = EmulatorConfig.default().with_overrides(lock_duration=timedelta(seconds=5))
    with local_stack(emulator_config=short_locks) as stack:
        stack.sandbox.set_knobs(latency_ms=2000)
        connection = stack.environment[SERVICEBUS_CONNECTION]
        async with ServiceBusClient.from_connection_string(connection) as client:
            ids = await submit(client, [demo_request("kill-1", "vi@fabrikam.example", "Vi Sun", PARTNERS)])
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli",
            "host",
            env={**os.environ, **stack.environment},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            # Kill the worker after New-MailContact has created the contact but before its answer arrives.
            deadline = time.monotonic() + 60
            while stack.sandbox.directory.contact_by_identity("vi@fabrikam.example") is None:
                assert time.monotonic() < deadline and worker.returncode is None, "the worker never created the contact"
                await asyncio.sleep(0.02)
            os.killpg(worker.pid, signal.SIGKILL)
        finally:
            await asyncio.wait_for(worker.wait(), timeout=10)
        stack.sandbox.set_knobs(latency_ms=0)
        outcomes = await _resume(stack, ids)
        members = stack.sandbox.directory.group_by_identity(PARTNERS)
        contacts = [
            c for c in stack.sandbox.directory.contacts.values() if c.external_email_address == "vi@fabrikam.example"
        ]
        creates = [e.status for e in stack.sandbox.request_log if e.operation == "New-MailContact"]
    outcome = outcomes["kill-1"]
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
    assert outcome.recipient is not None and outcome.recipient.created is False  # found, not made twice
    assert len(contacts) == 1 and creates == [200]
    assert members is not None and members.members.count(contacts[0].external_directory_object_id) == 1


async def _resume(stack: LocalStack, ids: list[str]) -> dict[str, OutcomeEvent]:
    async with (
        running_host(stack.environment),
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
    ):
        return await collect_outcomes(client, OUTCOMES, ids, within_seconds=60)


async def test_where_the_policy_forbids_the_5_7_133_fix_the_request_ends_with_a_warning_naming_it(
    stack: LocalStack, readback: Readback
) -> None:
    secure = "suppliers-secure@contoso.com"  # not in the demo policy's sender_authentication_fix_allowed
    await readback.exchange.set_require_sender_authentication(secure, True, unified=False)
    outcome = (await onboard(stack, [demo_request("r-nofix", "gus@fabrikam.example", "Gus Hall", secure)]))["r-nofix"]
    assert outcome.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS, outcome
    (warning,) = outcome.warnings
    assert "550 5.7.133" in warning
    assert f"Set-DistributionGroup -Identity '{secure}' -RequireSenderAuthenticationEnabled $false" in warning
    assert outcome.changes == ()
    restrictions = await readback.exchange.get_sender_restrictions(secure, unified=False)
    assert restrictions.require_sender_authentication is True, "the group was left as it was"
