"""Upstream systems cannot speak for each other (docs/security.md, "Sources").

A source the policy binds to an intake queue of its own (ONBOARDING_INTAKE_QUEUES, a create-contact
trigger per queue) is a fact, not a claim: a request claiming it through another queue is refused,
and it cannot claim another source through its own. Request ids are the source's own: the same id
from two sources is two requests, neither dropped as the other's duplicate. Through the real SDK,
emulator, sandbox and local host.
"""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func
import pytest
from azure.servicebus.aio import ServiceBusClient

from cli.upstream import request_message
from functions.triggers import blueprint, swept_queues
from shared.contracts import DeadLetterReason, OnboardingRequest, OutcomeEvent, OutcomeStatus
from shared.queues import INTAKE_QUEUES_SETTING, StageName, intake_queues
from shared.settings import SERVICEBUS_CONNECTION
from standins.servicebus_emulator import EmulatorConfig
from standins.stack import local_stack, running_host
from tests.fixtures.pipeline import OUTCOMES
from tools.demo import demo_request

PARTNER_INTAKE = "intake-partner-portal"
POLICY = {
    "sources": {
        "demo-hr": {"allowed_groups": ["partners@contoso.com", "project-falcon@contoso.com"]},
        "partner-portal": {"allowed_groups": ["partners@contoso.com"], "intake_queue": PARTNER_INTAKE},
    }
}


def _with_partner_intake() -> EmulatorConfig:
    queues = EmulatorConfig.default().queues
    intake = next(q for q in queues if q.name == StageName.CREATE_CONTACT).model_copy(update={"name": PARTNER_INTAKE})
    return EmulatorConfig(queues=(*queues, intake))


def _request(request_id: str, source: str, email: str) -> OnboardingRequest:
    return demo_request(request_id, email, "Pat Lee", "partners@contoso.com").model_copy(
        update={"source_system": source}
    )


async def _outcomes(client: ServiceBusClient, expected: int) -> dict[tuple[str | None, str], OutcomeEvent]:
    """Every outcome by (source, request id): two sources may use the same request id."""
    found: dict[tuple[str | None, str], OutcomeEvent] = {}
    async with client.get_queue_receiver(OUTCOMES, max_wait_time=60) as receiver:
        async for message in receiver:
            outcome = OutcomeEvent.model_validate_json(b"".join(message.body))
            found[(outcome.source_system, outcome.request_id)] = outcome
            await receiver.complete_message(message)
            if len(found) == expected:
                break
    return found


@pytest.mark.stack
async def test_a_source_bound_to_its_intake_is_a_fact_and_its_request_ids_its_own(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    app = func.FunctionApp()
    app.register_functions(blueprint({INTAKE_QUEUES_SETTING: PARTNER_INTAKE}))
    sends = {
        # the same request id from both sources, each through its own queue: two requests
        StageName.CREATE_CONTACT.value: [
            _request("shared-id-1", "demo-hr", "hr.person@fabrikam.example"),
            _request("claims-partner", "partner-portal", "claimed@fabrikam.example"),  # the wrong queue
        ],
        PARTNER_INTAKE: [
            _request("shared-id-1", "partner-portal", "partner.person@fabrikam.example"),
            _request("claims-hr", "demo-hr", "claimed-hr@fabrikam.example"),  # speaks for another source
        ],
    }
    with local_stack(emulator_config=_with_partner_intake(), policy_file=policy) as stack:
        async with (
            running_host(stack.environment, app=app),
            ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        ):
            for queue, requests in sends.items():
                async with client.get_queue_sender(queue) as sender:
                    for request in requests:
                        await sender.send_messages(request_message(request, str(request.request_id)))
            outcomes = await _outcomes(client, expected=4)

    succeeded = {OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS}  # the 5.7.133 fix is not allowed
    assert outcomes[("demo-hr", "shared-id-1")].status in succeeded
    assert outcomes[("partner-portal", "shared-id-1")].status in succeeded
    for key in (("partner-portal", "claims-partner"), ("demo-hr", "claims-hr")):
        assert (outcomes[key].status, outcomes[key].reason) == (OutcomeStatus.FAILED, DeadLetterReason.POLICY_DENIED)
        assert "whose senders may not speak for it" in outcomes[key].description


def test_intake_queues_are_checked_when_the_app_is_indexed() -> None:
    assert intake_queues({INTAKE_QUEUES_SETTING: " intake-a, intake-b ,intake-a,"}) == ("intake-a", "intake-b")
    for bad in ("add-member", "has space", "-dash-first", "doctor"):
        with pytest.raises(ValueError, match=INTAKE_QUEUES_SETTING):
            intake_queues({INTAKE_QUEUES_SETTING: bad})
    app = func.FunctionApp()
    app.register_functions(blueprint({INTAKE_QUEUES_SETTING: "intake-a"}))
    names = [f.get_function_name() for f in app.get_functions()]
    assert "create_contact_from_intake_a" in names
    # Its dead letters are swept like create-contact's (a timer, no trigger on the sub-queue).
    assert swept_queues({INTAKE_QUEUES_SETTING: "intake-a"})["intake-a"] is StageName.CREATE_CONTACT
