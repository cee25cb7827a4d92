"""The lifecycle end to end: onboard, update and offboard through the real azure-servicebus SDK, the
emulator, the local host running function_app.py, and the tenant sandbox as Graph and Exchange.

Each test reads the tenant back with the project's own clients: who is a member, which contact is
left, what its names are. Pure decisions are in tests/test_lifecycle_decisions.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from cli.upstream import collect_outcomes, submit
from shared.contracts import (
    DeadLetterReason,
    OnboardingRequest,
    OutcomeEvent,
    OutcomeStatus,
    RequestAction,
    ResolvedGroup,
    StageMessage,
    StageName,
)
from shared.drift.model import membership_key
from shared.envelope import REQUEST_ID
from shared.journal import SqliteJournal
from shared.provenance import CONTACT_ATTRIBUTE
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import LocalStack, running_host
from tests.fixtures.pipeline import OUTCOMES, Readback
from tools.demo import demo_request

pytestmark = pytest.mark.stack

PARTNERS = "partners@contoso.com"
FALCON = "project-falcon@contoso.com"  # a Microsoft 365 group of the demo tenant
FALCON_ID = "7c1d2e3f-0003-4b5c-8d9e-0f1a2b3c4d03"


def offboard(request_id: str, address: str, group: str) -> OnboardingRequest:
    return demo_request(request_id, address, "Unused", group).model_copy(
        update={"action": RequestAction.OFFBOARD, "display_name": None, "first_name": None, "last_name": None}
    )


class Upstream:
    """An upstream system with the host running: send requests, one batch after another, and read outcomes."""

    def __init__(self, client: ServiceBusClient) -> None:
        self.client = client

    async def send(self, *requests: OnboardingRequest) -> dict[str, OutcomeEvent]:
        ids = await submit(self.client, requests)
        return await collect_outcomes(self.client, OUTCOMES, ids, within_seconds=60)

    async def one(self, request: OnboardingRequest) -> OutcomeEvent:
        return (await self.send(request))[str(request.request_id)]


@asynccontextmanager
async def upstream(stack: LocalStack) -> AsyncIterator[Upstream]:
    async with (
        running_host(stack.environment),
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
    ):
        yield Upstream(client)


def statuses(outcomes: dict[str, OutcomeEvent]) -> dict[str, OutcomeStatus]:
    return {request_id: outcome.status for request_id, outcome in outcomes.items()}


async def contact_row(readback: Readback, address: str) -> dict[str, object] | None:
    contact = await readback.exchange.find_mail_contact(address)
    if contact is None:
        return None
    rows = (await readback.exchange.invoke("Get-MailContact", {"Identity": contact.identity})).rows
    return rows[0]


def member_addresses(members: Sequence[object]) -> set[str]:
    return {str(getattr(m, "email_address", "")).lower() for m in members}


async def test_onboard_then_offboard_a_distribution_group_deletes_the_contact_the_app_created(
    stack: LocalStack, readback: Readback
) -> None:
    address = "lee.ortiz@fabrikam.example"
    async with upstream(stack) as hr:
        onboarded = await hr.one(demo_request("life-dl-1", address, "Lee Ortiz", PARTNERS))
        stamped = await contact_row(readback, address)
        offboarded = await hr.one(offboard("life-dl-2", address, PARTNERS))
        again = await hr.one(offboard("life-dl-3", address, PARTNERS))
    assert onboarded.status is OutcomeStatus.SUCCEEDED and onboarded.action is RequestAction.ONBOARD
    assert stamped is not None and stamped[CONTACT_ATTRIBUTE] == "m365-external-onboarding;created-by=life-dl-1"
    assert (offboarded.status, offboarded.action) == (OutcomeStatus.SUCCEEDED, RequestAction.OFFBOARD)
    assert "Deleted the mail contact this app created (request life-dl-1)" in offboarded.changes
    assert await readback.exchange.find_mail_contact(address) is None
    assert address not in member_addresses(await readback.exchange.list_distribution_group_members(PARTNERS))
    # Offboarding someone who is no member (any more) succeeds and says so.
    assert again.status is OutcomeStatus.SUCCEEDED and "nothing to remove" in again.description


async def test_onboard_then_offboard_a_microsoft_365_group_removes_the_guest_and_keeps_the_account(
    stack: LocalStack, readback: Readback
) -> None:
    address = "kim.sato@fabrikam.example"
    async with upstream(stack) as hr:
        onboarded = await hr.one(demo_request("life-m365-1", address, "Kim Sato", FALCON))
        assert onboarded.recipient is not None
        guest = onboarded.recipient.id
        assert guest in await readback.graph.list_group_member_ids(FALCON_ID)
        offboarded = await hr.one(offboard("life-m365-2", address, FALCON))
    assert onboarded.status is not OutcomeStatus.FAILED, onboarded
    assert offboarded.status is OutcomeStatus.SUCCEEDED, offboarded
    assert "no longer a member" in offboarded.description and "guest account is kept" in offboarded.description
    assert guest not in await readback.graph.list_group_member_ids(FALCON_ID)
    user = await readback.graph.find_user_by_mail(address)
    assert user is not None and user.id == guest


async def test_offboarding_an_adopted_contact_removes_the_membership_and_keeps_the_contact(
    stack: LocalStack, readback: Readback
) -> None:
    address = "sam.diaz@fabrikam.example"
    # An administrator's contact, made before the app: no stamp.
    await readback.exchange.new_mail_contact(
        name="Sam Diaz (supplier)", external_email_address=address, display_name="Sam Diaz"
    )
    async with upstream(stack) as hr:
        onboarded = await hr.one(demo_request("life-adopt-1", address, "Sam Diaz", PARTNERS))
        offboarded = await hr.one(offboard("life-adopt-2", address, PARTNERS))
    assert onboarded.recipient is not None and not onboarded.recipient.created
    assert offboarded.status is OutcomeStatus.SUCCEEDED and "adopted" in offboarded.description
    assert await readback.exchange.find_mail_contact(address) is not None
    assert address not in member_addresses(await readback.exchange.list_distribution_group_members(PARTNERS))


async def test_update_sets_the_names_and_a_new_address_is_refused(stack: LocalStack, readback: Readback) -> None:
    address = "ana.lima@fabrikam.example"
    rename = demo_request("life-upd-2", address, "Ana Lima-Costa", PARTNERS).model_copy(
        update={"action": RequestAction.UPDATE, "first_name": "Ana", "last_name": "Lima-Costa"}
    )
    move = demo_request("life-upd-3", address, "Ana Lima", PARTNERS).model_copy(
        update={"action": RequestAction.UPDATE, "new_external_email": "ana@northwind.example"}
    )
    async with upstream(stack) as hr:
        await hr.one(demo_request("life-upd-1", address, "Ana Lima", PARTNERS))
        outcomes = await hr.send(rename, move)
    assert statuses(outcomes) == {"life-upd-2": OutcomeStatus.SUCCEEDED, "life-upd-3": OutcomeStatus.FAILED}
    assert outcomes["life-upd-3"].reason is DeadLetterReason.ADDRESS_CHANGE_REFUSED
    row = await contact_row(readback, address)
    assert row is not None and (row["DisplayName"], row["FirstName"], row["LastName"]) == (
        "Ana Lima-Costa",
        "Ana",
        "Lima-Costa",
    )
    assert await readback.exchange.find_mail_contact("ana@northwind.example") is None
    # The drift watch's roster names the person as they are now (its drift events carry the name).
    journal = SqliteJournal(str(stack.journal_database))
    try:
        group = outcomes["life-upd-2"].group
        assert group is not None
        kept = await journal.membership(membership_key(address, group.id))
    finally:
        await journal.close()
    assert kept is not None and kept.display_name == "Ana Lima-Costa"


async def test_a_forged_offboard_on_a_later_stage_queue_is_refused_and_changes_nothing(
    stack: LocalStack, readback: Readback
) -> None:
    address = "jo.park@fabrikam.example"
    async with upstream(stack) as hr:
        honest = await hr.one(demo_request("life-honest-1", address, "Jo Park", PARTNERS))
        assert honest.recipient is not None and honest.group is not None
        forged = StageMessage(
            request=offboard("life-forged-1", address, PARTNERS),
            group=ResolvedGroup.model_validate(honest.group.model_dump()),
            recipient=honest.recipient,
            accepted_at=datetime.now(UTC),
        )
        outcomes: dict[str, OutcomeEvent] = {}
        for stage in (StageName.ADD_MEMBER, StageName.VERIFY_DELIVERY):
            request_id = f"life-forged-{stage}"
            message = forged.model_copy(
                update={"request": forged.request.model_copy(update={"request_id": request_id})}
            )
            async with hr.client.get_queue_sender(stage.value) as sender:
                await sender.send_messages(
                    ServiceBusMessage(
                        message.model_dump_json(),
                        message_id=f"{request_id}/{stage}",
                        application_properties={REQUEST_ID: request_id},
                        content_type="application/json",
                    )
                )
            outcomes |= await collect_outcomes(hr.client, OUTCOMES, [request_id], within_seconds=60)
    assert {(o.status, o.reason) for o in outcomes.values()} == {(OutcomeStatus.FAILED, DeadLetterReason.POLICY_DENIED)}
    assert all("carries an offboard" in o.description for o in outcomes.values())
    assert address in member_addresses(await readback.exchange.list_distribution_group_members(PARTNERS))
    assert await readback.exchange.find_mail_contact(address) is not None
