"""A request wrapped as a CloudEvents 1.0 event is accepted in both AMQP content modes; a bad event is
one specific InvalidRequest. Decoding is pure; one request goes through the real stack."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from cli.upstream import collect_outcomes
from shared import envelope
from shared.cloudevents import REQUEST_TYPE, REQUEST_TYPES
from shared.contracts import OnboardingRequest, OutcomeStatus, RequestAction, StageName
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import LocalStack, running_host
from tests.fakes import FakeReceivedMessage
from tests.fixtures.pipeline import OUTCOMES
from tests.samples import sample_request_json

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
REQUEST = json.loads(sample_request_json())


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/hr/workday",
        "type": REQUEST_TYPE,
        "datacontenttype": "application/json",
        "data": REQUEST,
    }
    return {k: v for k, v in (base | changes).items() if v is not None}


def decoded(body: dict[str, Any] | bytes, **envelope_fields: Any) -> envelope.Inbound[OnboardingRequest]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    fields = {"message_id": "msg-1"} | envelope_fields
    return envelope.decode(FakeReceivedMessage(body=raw, **fields), OnboardingRequest, NOW)


@pytest.mark.parametrize("content_type", ["application/cloudevents+json; charset=utf-8", None, "application/json"])
def test_a_structured_event_carries_the_request_and_its_id_is_the_request_id(content_type: str | None) -> None:
    inbound = decoded(event(), content_type=content_type)
    assert inbound.payload.external_email == REQUEST["external_email"]
    assert inbound.delivery.request_id == "evt-1"
    assert json.loads(inbound.body) == REQUEST  # a retry re-sends the plain request


def test_data_base64_and_an_explicit_request_id() -> None:
    encoded = base64.b64encode(json.dumps(REQUEST | {"request_id": "hr-9"}).encode()).decode()
    inbound = decoded(event(data=None, data_base64=encoded), content_type="application/cloudevents+json")
    assert inbound.delivery.request_id == "hr-9"  # the request's own id wins over the event's


@pytest.mark.parametrize("prefix", ["cloudEvents:", "cloudEvents_"])
def test_binary_mode_attributes_in_application_properties(prefix: str) -> None:
    attributes = {"specversion": "1.0", "id": "evt-2", "source": "/hr", "type": REQUEST_TYPE}
    properties: dict[str | bytes, Any] = {f"{prefix}{k}".encode(): v for k, v in attributes.items()}
    inbound = decoded(REQUEST, content_type="application/json", application_properties=properties)
    assert (inbound.delivery.request_id, inbound.payload.display_name) == ("evt-2", REQUEST["display_name"])


@pytest.mark.parametrize(
    ("body", "content_type", "said"),
    [
        (event(specversion="0.3"), None, "specversion"),
        (event(type="com.example.other"), None, f"type must be one of {REQUEST_TYPE}"),
        (event(type=REQUEST_TYPES[RequestAction.OFFBOARD]), None, "set action to offboard in the request"),
        (event(data=REQUEST | {"action": "update"}), None, "is for action onboard, but the request's action is update"),
        (event(id=None), None, "id: Field required"),
        (event(id="a/b"), None, "The CloudEvent id cannot serve as the request id"),
        (event(data_base64="e30="), None, "exactly one of data and data_base64"),
        (event(data=None), None, "exactly one of data and data_base64"),
        (event(data=None, data_base64="***"), None, "data_base64 is not base64"),
        (event(datacontenttype="application/xml"), None, "datacontenttype must be application/json"),
        (event(), "application/cloudevents+avro", "is not accepted; send application/cloudevents+json"),
        (b"[1]", "application/cloudevents+json", "must be a JSON object"),
        (b"not json", "application/cloudevents+json", "the CloudEvent is not JSON"),
        (event(data={"external_email": "x"}), None, "not a valid contract v1 OnboardingRequest"),
    ],
)
def test_a_bad_event_is_one_specific_invalid_request(body: Any, content_type: str | None, said: str) -> None:
    with pytest.raises(envelope.UnreadableMessage) as raised:
        decoded(body, content_type=content_type)
    assert said in raised.value.description
    assert raised.value.delivery.request_id == "msg-1"  # the outcome can still name the message


DEPTH = 100_000


def deeply_nested(where: str) -> bytes:
    """JSON nested DEPTH arrays deep at `where` (a 200 kB body, within Service Bus's 256 KB)."""
    deep = "[" * DEPTH + "]" * DEPTH
    if where == "data":
        return b'{"specversion": "1.0", "id": "evt-deep", "source": "/hr", "type": "%s", "data": %s}' % (
            REQUEST_TYPE.encode(),
            deep.encode(),
        )
    return b'{"specversion": "1.0", "id": "evt-deep", "source": "/hr", "extension": %s}' % deep.encode()


@pytest.mark.parametrize("where", ["data", "extension"])
@pytest.mark.parametrize("content_type", ["application/cloudevents+json", None])
def test_an_event_nested_too_deep_is_an_invalid_request_not_a_crash(where: str, content_type: str | None) -> None:
    with pytest.raises(envelope.UnreadableMessage) as raised:
        decoded(deeply_nested(where), content_type=content_type)
    assert "nested too deeply" in raised.value.description
    assert raised.value.delivery.request_id == "msg-1"


@pytest.mark.parametrize("action", list(RequestAction))
def test_each_action_has_its_type_in_both_modes(action: RequestAction) -> None:
    request = REQUEST | {"action": action.value}
    structured = decoded(event(type=REQUEST_TYPES[action], data=request), content_type="application/cloudevents+json")
    attributes = {"specversion": "1.0", "id": "evt-3", "source": "/hr", "type": REQUEST_TYPES[action]}
    properties: dict[str | bytes, Any] = {f"cloudEvents:{k}".encode(): v for k, v in attributes.items()}
    binary = decoded(request, content_type="application/json", application_properties=properties)
    assert structured.payload.action is binary.payload.action is action


def test_a_binary_event_with_a_bad_attribute_is_refused() -> None:
    properties: dict[str | bytes, Any] = {b"cloudEvents:specversion": "1.0", b"cloudEvents:id": "e"}
    with pytest.raises(envelope.UnreadableMessage, match="source: Field required"):
        decoded(REQUEST, application_properties=properties)


def test_a_plain_request_is_untouched() -> None:
    inbound = decoded(REQUEST, content_type="application/json")
    assert (inbound.delivery.request_id, json.loads(inbound.body)) == ("msg-1", REQUEST)


@pytest.mark.stack
async def test_a_cloudevent_through_the_real_pipeline_succeeds(stack: LocalStack) -> None:
    message = ServiceBusMessage(
        json.dumps(event(id="ce-e2e-1")).encode(),
        message_id="ce-e2e-1",
        content_type="application/cloudevents+json; charset=utf-8",
    )
    async with (
        running_host(stack.environment),
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
    ):
        async with client.get_queue_sender(StageName.CREATE_CONTACT.value) as sender:
            await sender.send_messages(message)
        outcomes = await collect_outcomes(client, OUTCOMES, ["ce-e2e-1"], within_seconds=30)
    assert outcomes["ce-e2e-1"].status is OutcomeStatus.SUCCEEDED
