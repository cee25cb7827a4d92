"""A request wrapped as a CloudEvents 1.0 event, in either AMQP content mode (docs/cloudevents.md).

Structured mode: the body is the JSON event format (content-type `application/cloudevents+json`, or
a JSON body with `specversion`) and `data` holds the plain request. Binary mode: the body is the
plain request and the attributes travel as application properties `cloudEvents:<name>` (the AMQP
binding's prefix; `cloudEvents_` too, which some SDKs write). Either way the request inside is the
contract v1 request, and the event's `id` is its request id unless `data` names one. Each action
has its event type; the request's own `action` must be the one its type names.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import from_json

from shared.contracts import RequestAction

# The onboard type kept its name from before requests had an action: events that use it keep their meaning.
REQUEST_TYPE = "org.m365-external-onboarding.request.v1"
REQUEST_TYPES: dict[RequestAction, str] = {
    RequestAction.ONBOARD: REQUEST_TYPE,
    RequestAction.OFFBOARD: "org.m365-external-onboarding.request.offboard.v1",
    RequestAction.UPDATE: "org.m365-external-onboarding.request.update.v1",
}
_ACTION_OF_TYPE = {event_type: action for action, event_type in REQUEST_TYPES.items()}
STRUCTURED = "application/cloudevents"
_PREFIXES = ("cloudEvents:", "cloudEvents_")
_JSON_TYPES = ("application/json", "text/json")
_TOO_DEEP = "recursion limit exceeded"  # pydantic_core's error for JSON nested past its limit


class CloudEventError(ValueError):
    """The message claims to be a CloudEvent and is not a valid one of ours: InvalidRequest."""


class _Attributes(BaseModel):
    """The context attributes the pipeline checks; extensions are allowed and ignored."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str
    datacontenttype: str | None = None

    @model_validator(mode="after")
    def _ours(self) -> _Attributes:
        if self.type not in _ACTION_OF_TYPE:
            raise ValueError(f"type must be one of {', '.join(REQUEST_TYPES.values())}, not {self.type[:80]!r}")
        if self.datacontenttype and self.datacontenttype.split(";")[0].strip().lower() not in _JSON_TYPES:
            raise ValueError(f"datacontenttype must be application/json, not {self.datacontenttype[:60]!r}")
        return self


class _StructuredEvent(_Attributes):
    data: Any = None
    data_base64: str | None = None

    @model_validator(mode="after")
    def _one_data(self) -> _StructuredEvent:
        if (self.data is None) == (self.data_base64 is None):
            raise ValueError("the event must carry the request in exactly one of data and data_base64")
        return self


@dataclass(frozen=True)
class Unwrapped:
    request: bytes  # the plain contract v1 request, JSON
    event_id: str
    action: RequestAction  # what the event's type names: the request's action must be the same


def unwrap(body: bytes, content_type: str | None, properties: dict[str, Any]) -> Unwrapped | None:
    """The request inside a CloudEvent, or None when the message is a plain request."""
    binary = {
        name[len(prefix) :]: value
        for name, value in properties.items()
        for prefix in _PREFIXES
        if name.startswith(prefix)
    }
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type.startswith(STRUCTURED):
        if media_type != STRUCTURED + "+json":
            raise CloudEventError(
                f"the CloudEvents format {media_type!r} is not accepted; send application/cloudevents+json"
            )
        return _structured(body)
    if binary:
        attributes = _validated(_Attributes, {**binary, "datacontenttype": content_type} if content_type else binary)
        return Unwrapped(body, attributes.id, _ACTION_OF_TYPE[attributes.type])
    if media_type in ("", *_JSON_TYPES) and _claims_specversion(body):
        return _structured(body)  # the JSON event format sent without its content type
    return None


def _structured(body: bytes) -> Unwrapped:
    try:
        # pydantic's parser, as for the plain request: it stops at a nesting depth where json.loads
        # would raise RecursionError (an event 100,000 arrays deep), which is a crash, not a refusal.
        parsed = from_json(body)
    except ValueError as error:
        if str(error).startswith(_TOO_DEEP):
            raise CloudEventError("the CloudEvent is nested too deeply to be a request") from None
        raise CloudEventError("the CloudEvent is not JSON") from None
    event = _validated(_StructuredEvent, parsed)
    action = _ACTION_OF_TYPE[event.type]
    if event.data_base64 is not None:
        try:
            return Unwrapped(base64.b64decode(event.data_base64, validate=True), event.id, action)
        except (binascii.Error, ValueError):
            raise CloudEventError("data_base64 is not base64") from None
    return Unwrapped(json.dumps(event.data).encode(), event.id, action)


def check_action(event: Unwrapped, requested: RequestAction) -> None:
    """The request inside must ask for what the event's type names (a request without `action` onboards):
    a consumer routing by type and the pipeline reading the body must never disagree."""
    if requested is not event.action:
        raise CloudEventError(
            f"its type {REQUEST_TYPES[event.action]} is for action {event.action}, but the request's action is "
            f"{requested}: set action to {event.action} in the request, or send the type of {requested}"
        )


def _validated(model: type[_Attributes], value: Any) -> Any:
    if not isinstance(value, dict):
        raise CloudEventError("the CloudEvent must be a JSON object")
    try:
        return model.model_validate({str(k): _text(v) for k, v in value.items()})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in error.errors(include_input=False)
        )
        raise CloudEventError(f"not a valid CloudEvent for this pipeline: {problems}") from None


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _claims_specversion(body: bytes) -> bool:
    """A cheap look before parsing: only a JSON object that mentions specversion can be an event."""
    return body.lstrip()[:1] == b"{" and b'"specversion"' in body
