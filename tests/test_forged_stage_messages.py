"""Forged stage messages through the real path: the azure-servicebus SDK sends them straight to add-member and
verify-delivery on the emulator, the local host runs function_app.py, the sandbox is the tenant.

Anyone with Data Sender on a stage queue can do this (docs/security.md). Each forged message must end in
exactly one PolicyDenied outcome, and the tenant must be as it was.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from cli.upstream import collect_outcomes
from shared.contracts import (
    DeadLetterReason,
    GroupKind,
    OnboardingRequest,
    OutcomeStatus,
    Recipient,
    RecipientKind,
    ResolvedGroup,
    StageMessage,
    StageName,
)
from shared.envelope import REQUEST_ID
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import LocalStack, running_host
from tests.fixtures.pipeline import OUTCOMES, Readback, onboard
from tools.demo import demo_request

pytestmark = pytest.mark.stack

PARTNERS = ResolvedGroup(
    id="7c1d2e3f-0001-4b5c-8d9e-0f1a2b3c4d01", display_name="Partners", mail="partners@contoso.com", kind="Distribution"
)
BOARD = ResolvedGroup(
    id="7c1d2e3f-0006-4b5c-8d9e-0f1a2b3c4d06", display_name="Board", mail="board@contoso.com", kind="Distribution"
)
ALL_STAFF = ResolvedGroup(
    id="7c1d2e3f-0005-4b5c-8d9e-0f1a2b3c4d05",
    display_name="All staff",
    mail="all-staff@contoso.com",
    kind="Microsoft365",
)
FALCON = ResolvedGroup(
    id="7c1d2e3f-0003-4b5c-8d9e-0f1a2b3c4d03",
    display_name="Project Falcon",
    mail="project-falcon@contoso.com",
    kind=GroupKind.MICROSOFT_365,
)
EXISTING_GUEST = Recipient(kind=RecipientKind.GUEST_USER, id="0b6a9c1e-3333-4a4e-9b1a-5f7c2d3e4a03", created=False)
INTERNAL_USER = Recipient(kind=RecipientKind.GUEST_USER, id="0b6a9c1e-1111-4a4e-9b1a-5f7c2d3e4a01", created=False)


def _forged(
    request_id: str, address: str, group: ResolvedGroup, recipient: Recipient, **request: object
) -> StageMessage:
    body = demo_request(request_id, address, "Forged Person", group.mail).model_copy(update=request)
    return StageMessage(request=body, group=group, recipient=recipient, accepted_at=datetime.now(UTC))


async def _send(client: ServiceBusClient, stage: StageName, message: StageMessage) -> None:
    request_id = str(message.request.request_id)
    async with client.get_queue_sender(stage.value) as sender:
        await sender.send_messages(
            ServiceBusMessage(
                message.model_dump_json(),
                message_id=f"{request_id}/{stage}",
                application_properties={REQUEST_ID: request_id},
                content_type="application/json",
            )
        )


async def test_forged_stage_messages_end_policy_denied_and_change_nothing(
    stack: LocalStack, readback: Readback
) -> None:
    honest = await onboard(stack, [demo_request("honest-1", "jo@fabrikam.example", "Jo Park", "partners@contoso.com")])
    contact = honest["honest-1"].recipient
    assert contact is not None
    board_before = await readback.exchange.list_distribution_group_members("board@contoso.com")
    board_restrictions = await readback.exchange.get_sender_restrictions("board@contoso.com", unified=False)
    staff_before = await readback.graph.list_group_member_ids(ALL_STAFF.id)
    falcon_before = await readback.graph.list_group_member_ids(FALCON.id)

    forged = {
        # a group outside the policy, with the honest run's real contact
        "forged-board": (StageName.ADD_MEMBER, _forged("forged-board", "jo@fabrikam.example", BOARD, contact)),
        # a Microsoft 365 group outside the policy, with a real guest
        "forged-staff": (
            StageName.ADD_MEMBER,
            _forged("forged-staff", "existing.guest@fabrikam.example", ALL_STAFF, EXISTING_GUEST),
        ),
        # an internal user named as the guest, into an allowed group
        "forged-internal": (
            StageName.ADD_MEMBER,
            _forged("forged-internal", "adele.vance@contoso.com", FALCON, INTERNAL_USER),
        ),
        # the review's case: an allowed group's id with another group's address, to turn off its sender check
        "forged-address": (
            StageName.VERIFY_DELIVERY,
            _forged(
                "forged-address",
                "jo@fabrikam.example",
                PARTNERS.model_copy(update={"mail": "board@contoso.com"}),
                contact,
                allow_external_senders=True,
            ),
        ),
        # a dry run that never went through create-contact
        "forged-dry-run": (
            StageName.ADD_MEMBER,
            _forged("forged-dry-run", "existing.guest@fabrikam.example", FALCON, EXISTING_GUEST, dry_run=True),
        ),
        # a source the policy does not list
        "forged-source": (
            StageName.VERIFY_DELIVERY,
            _forged("forged-source", "jo@fabrikam.example", PARTNERS, contact, source_system="intruder"),
        ),
    }
    async with (
        running_host(stack.environment),
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
    ):
        for stage, message in forged.values():
            await _send(client, stage, message)
        outcomes = await collect_outcomes(client, OUTCOMES, list(forged), within_seconds=60)

    results = {rid: (o.status, o.reason) for rid, o in outcomes.items()}
    # The forged address is acted on as the directory names the group: Partners, which the honest run fixed.
    assert results.pop("forged-address")[0] is not OutcomeStatus.FAILED
    assert results == {rid: (OutcomeStatus.FAILED, DeadLetterReason.POLICY_DENIED) for rid in results}
    assert await readback.exchange.list_distribution_group_members("board@contoso.com") == board_before
    assert await readback.exchange.get_sender_restrictions("board@contoso.com", unified=False) == board_restrictions
    assert await readback.graph.list_group_member_ids(ALL_STAFF.id) == staff_before
    assert await readback.graph.list_group_member_ids(FALCON.id) == falcon_before


async def test_an_honest_request_with_a_real_guest_still_passes(stack: LocalStack) -> None:
    request: OnboardingRequest = demo_request(
        "honest-guest", "existing.guest@fabrikam.example", "Existing Guest", "project-falcon@contoso.com"
    )
    outcome = (await onboard(stack, [request]))["honest-guest"]
    assert outcome.status is not OutcomeStatus.FAILED, outcome
