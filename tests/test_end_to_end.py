"""The whole pipeline on the local stand-ins: emulator, tenant sandbox, local host, real SDKs.

Requests go onto queue create-contact with the real azure-servicebus SDK; the local host runs
function_app.py's triggers; the end state is read back from the sandbox through the project's
own Graph and Exchange clients.
"""

from __future__ import annotations

import re

import pytest
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from cli.upstream import collect_outcomes, submit
from shared.contracts import OutcomeStatus, RecipientKind, StageName
from shared.journal import TransitionKind
from shared.settings import SERVICEBUS_CONNECTION
from shared.stages.add_member import REPLICATION_PAUSES_SECONDS
from standins.stack import LocalStack, local_stack, running_host
from tests.fixtures.pipeline import OUTCOMES, Readback, journal_history, onboard
from tests.samples import sample_request as demo_request
from tools.demo import SAMPLES

pytestmark = pytest.mark.stack  # every test here starts stand-ins


async def test_every_group_kind_ends_in_the_right_state(stack: LocalStack, readback: Readback) -> None:
    outcomes = await onboard(stack, [sample.request for sample in SAMPLES])
    assert len(outcomes) == len(SAMPLES)
    for sample in SAMPLES:
        outcome = outcomes[str(sample.request.request_id)]
        assert sample.met_by(outcome), outcome

    dg = outcomes["demo-dg-1"]
    assert dg.recipient is not None
    assert dg.recipient.kind is RecipientKind.MAIL_CONTACT
    contact = await readback.exchange.find_mail_contact("jordan.reyes@fabrikam.example")
    assert contact is not None
    assert contact.identity == dg.recipient.id
    members = await readback.exchange.list_distribution_group_members("partners@contoso.com")
    assert [m.identity for m in members].count(contact.identity) == 1
    restrictions = await readback.exchange.get_sender_restrictions("partners@contoso.com", unified=False)
    assert restrictions.require_sender_authentication is False
    assert any("RequireSenderAuthenticationEnabled" in change for change in dg.changes)

    mesg = outcomes["demo-mesg-1"]
    assert mesg.recipient is not None
    assert mesg.recipient.kind is RecipientKind.MAIL_CONTACT
    members = await readback.exchange.list_distribution_group_members("suppliers-secure@contoso.com")
    assert mesg.recipient.id in {m.identity for m in members}

    m365 = outcomes["demo-m365-1"]
    assert m365.recipient is not None
    assert m365.recipient.kind is RecipientKind.GUEST_USER
    guest = await readback.graph.find_user_by_mail("sam.okafor@tailspin.example")
    assert guest is not None
    assert guest.user_type == "Guest"
    assert guest.id == m365.recipient.id
    assert m365.group is not None
    assert guest.id in await readback.graph.list_group_member_ids(m365.group.id)
    assert await readback.exchange.find_mail_contact("sam.okafor@tailspin.example") is None


async def test_unknown_group_is_dead_lettered_with_a_reason(stack: LocalStack) -> None:
    request = demo_request("e2e-unknown", "lee.chen@fabrikam.example", "Lee Chen", "no-such-group@contoso.com")
    outcomes = await onboard(stack, [request])
    outcome = outcomes["e2e-unknown"]
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.reason == "GroupNotFound"
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        client.get_queue_receiver("create-contact", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq,
    ):
        # Peeked: the dead letter stays for operators.
        (dead,) = await dlq.peek_messages(max_message_count=5)
        assert dead.dead_letter_reason == "GroupNotFound"
        assert "no-such-group@contoso.com" in (dead.dead_letter_error_description or "")
        assert dead.message_id == "e2e-unknown"


async def test_running_the_same_request_twice_changes_nothing_more(stack: LocalStack, readback: Readback) -> None:
    first = demo_request("e2e-repeat-1", "ana.silva@fabrikam.example", "Ana Silva", "partners@contoso.com")
    again = first.model_copy(update={"request_id": "e2e-repeat-2"})  # same person, new request
    outcomes = await onboard(stack, [first])
    outcomes |= await onboard(stack, [again])
    assert {o.status for o in outcomes.values()} == {OutcomeStatus.SUCCEEDED}
    assert outcomes["e2e-repeat-2"].recipient is not None
    assert outcomes["e2e-repeat-2"].recipient.created is False
    members = await readback.exchange.list_distribution_group_members("partners@contoso.com")
    contact = await readback.exchange.find_mail_contact("ana.silva@fabrikam.example")
    assert contact is not None
    assert [m.identity for m in members].count(contact.identity) == 1


async def test_invalid_body_is_kept_intact_in_the_dead_letter_queue(stack: LocalStack) -> None:
    from azure.servicebus import ServiceBusMessage

    async with (
        running_host(stack.environment),
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
    ):
        async with client.get_queue_sender("create-contact") as sender:
            await sender.send_messages(ServiceBusMessage(b"{not json", message_id="e2e-garbage"))
        outcomes = await collect_outcomes(client, OUTCOMES, ["e2e-garbage"], within_seconds=30)
        async with client.get_queue_receiver("create-contact", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            (dead,) = await dlq.peek_messages(max_message_count=5)
            assert b"".join(dead.body) == b"{not json"
            assert dead.dead_letter_reason == "InvalidRequest"
    assert outcomes["e2e-garbage"].reason == "InvalidRequest"


async def test_throttling_becomes_a_scheduled_retry_that_succeeds(stack: LocalStack) -> None:
    # Retry-After 3 s is beyond the clients' in-process budget: the stage must schedule a retry.
    stack.sandbox.inject("exchange", 429, retry_after=3, count=2)
    stack.sandbox.inject("graph", 429, retry_after=3, count=1)
    request = demo_request("e2e-throttled", "kim.lee@fabrikam.example", "Kim Lee", "partners@contoso.com")
    outcome = (await onboard(stack, [request]))["e2e-throttled"]
    history = await journal_history(stack, "e2e-throttled")
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
    assert sum(1 for entry in stack.sandbox.request_log if entry.status == 429) == 3
    # Three scheduled retries, none sooner than Retry-After: the journal says "in <delay> s: <cause>".
    scheduled = [
        re.match(r"in (\d+\.\d) s: ", t.cause or "") for t in history if t.decision is TransitionKind.RETRY_SCHEDULED
    ]
    delays = [float(found[1]) for found in scheduled if found]
    assert len(delays) == 3 and min(delays) >= 3.0, history


async def test_throttling_uses_no_attempts_and_ends_at_the_throttle_limit() -> None:
    """Two attempts would not survive three 429s if throttling used attempts; the throttle cap still ends a storm."""
    settings = {"ONBOARDING_RETRY_MAX_ATTEMPTS": "2", "ONBOARDING_RETRY_MAX_THROTTLES": "2"}
    busy = demo_request("e2e-busy", "kim.lee@fabrikam.example", "Kim Lee", "partners@contoso.com")
    storm = demo_request("e2e-storm", "lee.kim@fabrikam.example", "Lee Kim", "partners@contoso.com")
    with local_stack(settings=settings) as limited:
        connection = limited.environment[SERVICEBUS_CONNECTION]
        async with running_host(limited.environment), ServiceBusClient.from_connection_string(connection) as client:
            limited.sandbox.inject("graph", 429, retry_after=1, count=4)  # 2 calls, each retried once in-process
            await submit(client, [busy])
            outcomes = await collect_outcomes(client, OUTCOMES, ["e2e-busy"], within_seconds=30)
            limited.sandbox.inject("graph", 429, retry_after=1, count=100)
            await submit(client, [storm])
            outcomes |= await collect_outcomes(client, OUTCOMES, ["e2e-storm"], within_seconds=30)
    assert outcomes["e2e-busy"].status is OutcomeStatus.SUCCEEDED
    failed = outcomes["e2e-storm"]
    assert (failed.status, failed.reason) == (OutcomeStatus.FAILED, "RetriesExhausted")
    assert "after 1 attempts and 2 throttled tries" in failed.description


async def test_replication_lag_is_waited_out_for_contacts_and_guests(stack: LocalStack, readback: Readback) -> None:
    # Longer than add-member's pauses within an invocation (2 s) plus the hop from create-contact, so that
    # a scheduled retry follows them even when a busy machine makes that hop take seconds.
    stack.sandbox.set_knobs(replication_lag_seconds=sum(REPLICATION_PAUSES_SECONDS) + 6)
    requests = [
        demo_request("e2e-lag-dg", "noor.ali@fabrikam.example", "Noor Ali", "partners@contoso.com"),
        demo_request("e2e-lag-m365", "noor.ali@tailspin.example", "Noor Ali", "project-falcon@contoso.com"),
    ]
    outcomes = await onboard(stack, requests)
    assert {o.status for o in outcomes.values()} == {OutcomeStatus.SUCCEEDED}, outcomes
    # The add to the group met the new contact (Exchange) and the new guest (Graph) not yet replicated,
    # and add-member retried each until it was: without the lag neither happens.
    for request_id in ("e2e-lag-dg", "e2e-lag-m365"):
        history = await journal_history(stack, request_id)
        retried = [
            t for t in history if t.stage is StageName.ADD_MEMBER and t.decision is TransitionKind.RETRY_SCHEDULED
        ]
        assert retried, f"{request_id}: add-member never waited for replication: {history}"
    guest = await readback.graph.find_user_by_mail("noor.ali@tailspin.example")
    assert guest is not None
    assert guest.id in await readback.graph.list_group_member_ids("7c1d2e3f-0003-4b5c-8d9e-0f1a2b3c4d03")


async def test_a_group_named_by_a_secondary_address_is_found(stack: LocalStack, readback: Readback) -> None:
    # partner-desk@ is a secondary SMTP address of Partners in the demo tenant: `mail` is partners@.
    request = demo_request("e2e-alias", "lena.berg@fabrikam.example", "Lena Berg", "partner-desk@contoso.com")
    outcome = (await onboard(stack, [request]))["e2e-alias"]
    assert outcome.status is OutcomeStatus.SUCCEEDED, (outcome.reason, outcome.description)
    assert outcome.group is not None and outcome.group.mail == "partners@contoso.com"
    contact = await readback.exchange.find_mail_contact("lena.berg@fabrikam.example")
    members = await readback.exchange.list_distribution_group_members("partners@contoso.com")
    assert contact is not None and contact.identity in {m.identity for m in members}


async def test_an_existing_guest_is_reused_for_a_microsoft_365_group(stack: LocalStack, readback: Readback) -> None:
    existing = stack.sandbox.directory.user_by_mail("existing.guest@fabrikam.example")
    assert existing is not None and existing.user_type == "Guest"
    request = demo_request("e2e-guest", existing.mail, "Existing Guest", "project-falcon@contoso.com")
    outcome = (await onboard(stack, [request]))["e2e-guest"]
    assert outcome.status is OutcomeStatus.SUCCEEDED, (outcome.reason, outcome.description)
    assert outcome.recipient is not None and outcome.recipient.kind is RecipientKind.GUEST_USER
    assert (outcome.recipient.id, outcome.recipient.created) == (existing.id, False)
    assert [u.id for u in stack.sandbox.directory.users.values() if u.mail == existing.mail] == [existing.id]
    assert existing.id in await readback.graph.list_group_member_ids("7c1d2e3f-0003-4b5c-8d9e-0f1a2b3c4d03")
