"""Service Bus envelopes: read a received message's body and headers; build the messages we send.

Our own bookkeeping travels in application properties (request id, attempt, first attempt
time) so the body stays exactly the contract. MessageIds are derived from the request id, so a
re-sent message is dropped by the queue's duplicate detection instead of doing the work twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from azure.servicebus import ServiceBusMessage
from azure.servicebus.amqp import AmqpMessageBodyType
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared import cloudevents
from shared.contracts import OnboardingRequest, OutcomeEvent, RequestId, StageMessage, StageName
from shared.queues import PIPELINE

Input = TypeVar("Input", OnboardingRequest, StageMessage)

REQUEST_ID = "onboarding-request-id"
ATTEMPT = "onboarding-attempt"
FIRST_ATTEMPT_AT = "onboarding-first-attempt-at"
PHASE = "onboarding-phase"
REPLAY = "onboarding-replay"
THROTTLES = "onboarding-throttles"
BOOKKEEPING = (
    REQUEST_ID,
    ATTEMPT,
    FIRST_ATTEMPT_AT,
    PHASE,
    REPLAY,
    THROTTLES,
)  # set by the pipeline (and its replay) only
THROTTLES_MAX = 999
REPLAY_MAX = 999  # replays of one request: far more than an operator needs, and short in a MessageId
JSON = "application/json"

# Service Bus refuses a MessageId over 128 characters. The pipeline appends at most about 62
# ("/replay-999/verify-delivery/welcome-check-604800/100/t100"), so a longer request id is replaced in MessageIds
# by a stable digest; the full id still travels in the body and the properties.
MESSAGE_KEY_MAX = 64
# Service Bus entity names: letters, digits, periods, hyphens, underscores, slashes; at most 260.
_ENTITY_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]|/(?!/))*[A-Za-z0-9_]$|^[A-Za-z0-9]$")
_PIPELINE_QUEUES = frozenset(stage.value for stage in PIPELINE)
_REQUEST_ID: TypeAdapter[str] = TypeAdapter(RequestId)
_DERIVED = "\\"  # starts an id text derived from a non-string id (id_text): never a request id's character


@dataclass(frozen=True)
class Delivery:
    """What a received message's envelope says about its request, independent of any SDK."""

    message_id: str
    request_id: str  # carried on our own messages; the MessageId for an upstream request
    correlation_id: str
    reply_to: str | None
    attempt: int  # 1 for the first try of this stage, +1 per scheduled retry
    first_attempt_at: datetime  # when this stage first saw the request: bounds total retry age
    phase: str = ""  # a stage run again on purpose (a welcome-mail re-check) has its own MessageIds
    replay: int = 0  # an operator's replay of a dead letter (onboard dlq replay): its own MessageIds and outcome
    throttles: int = 0  # retries the tenant's throttling forced: they do not use up attempts
    warnings: tuple[str, ...] = ()  # what intake noticed about the envelope (an unusable ReplyTo); reaches the outcome
    # The source system the body names: request ids are the source's own, so every MessageId derived from
    # one is scoped by it, and one source cannot make Service Bus drop another's messages (docs/security.md).
    source: str = ""
    queue: str = ""  # the queue it arrived on, when not the stage's own (an intake queue): retries go back there


class ReceivedMessage(Protocol):
    """What the pipeline reads of a received message (azure.servicebus' ServiceBusReceivedMessage)."""

    @property
    def message_id(self) -> str | None: ...
    @property
    def sequence_number(self) -> int | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def delivery_count(self) -> int | None: ...
    @property
    def application_properties(self) -> dict[str | bytes, Any] | None: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def body_type(self) -> AmqpMessageBodyType: ...
    @property
    def body(self) -> Any: ...


class EnvelopeError(ValueError):
    """The envelope itself is unusable (not the body): dead-letter as InvalidRequest."""


class UnreadableMessage(Exception):
    """A message no stage can read: dead-letter it as InvalidRequest with `description`."""

    def __init__(self, delivery: Delivery, description: str) -> None:
        super().__init__(description)
        self.delivery = delivery
        self.description = description


@dataclass(frozen=True)
class Inbound(Generic[Input]):
    """A received message, decoded once: the typed contract, its envelope, and the body as sent."""

    payload: Input
    delivery: Delivery
    body: bytes  # a retry re-sends exactly this


def contract_of(queue: StageName) -> type[OnboardingRequest] | type[StageMessage]:
    """The contract a stage's queue carries: upstream's request on the first, a stage message after it."""
    return OnboardingRequest if queue is PIPELINE[0] else StageMessage


def decode_from(
    queue: StageName, message: ReceivedMessage, now: datetime
) -> Inbound[OnboardingRequest] | Inbound[StageMessage]:
    """`decode` with the contract of the stage queue the message came from (raises UnreadableMessage)."""
    if contract_of(queue) is OnboardingRequest:
        return decode(message, OnboardingRequest, now)
    return decode(message, StageMessage, now)


def decode(message: ReceivedMessage, reads: type[Input], now: datetime) -> Inbound[Input]:
    """The one place where a received message becomes typed input; raises UnreadableMessage.

    On `create-contact` (reads OnboardingRequest) the message may come from upstream: the
    pipeline's bookkeeping properties are honoured only on the pipeline's own retries, and the
    ReplyTo is checked before anything is sent to it.
    """
    if reads is OnboardingRequest:
        delivery = _upstream_delivery(message, now)
    else:
        try:
            delivery = read_delivery(message, now)
        except EnvelopeError as error:
            description = f"The message envelope is unusable: {error}."
            raise UnreadableMessage(_upstream_delivery(message, now), description) from None
    try:
        body = read_body(message)
    except EnvelopeError as error:
        raise UnreadableMessage(delivery, f"The message envelope is unusable: {error}.") from None
    event: cloudevents.Unwrapped | None = None
    if reads is OnboardingRequest:
        try:
            event = cloudevents.unwrap(body, message.content_type, _text_keys(message.application_properties))
        except cloudevents.CloudEventError as error:
            raise UnreadableMessage(delivery, f"The request's CloudEvent is unusable: {error}.") from None
        if event is not None:  # from here on the request is the plain one: a retry re-sends that
            body = event.request
    try:
        payload = reads.model_validate_json(body)
    except ValidationError as error:
        what = "request" if reads is OnboardingRequest else "stage message"
        description = f"The {what} is not a valid contract v1 {reads.__name__}: {describe_validation_error(error)}"
        raise UnreadableMessage(delivery, description) from None
    event_id = event.event_id if event is not None else None
    if isinstance(payload, OnboardingRequest):
        if event is not None:
            try:
                cloudevents.check_action(event, payload.action)
            except cloudevents.CloudEventError as error:
                raise UnreadableMessage(delivery, f"The request's CloudEvent is unusable: {error}.") from None
        delivery = _own_retry(message, payload, now) or delivery
        # The request id: the body's, else the CloudEvent's id, else the MessageId.
        request_id = payload.request_id or event_id or delivery.request_id
        try:
            _REQUEST_ID.validate_python(request_id)
        except ValidationError:
            raise UnreadableMessage(
                delivery,  # named by its MessageId: the outcome can still say which message it was
                f"The {'CloudEvent id' if event_id else 'MessageId'} cannot serve as the request id (1 to 128 "
                "characters without spaces, control characters, /, \\, # or ?): set request_id in the body.",
            ) from None
        if request_id != delivery.request_id:
            delivery = _with_request_id(delivery, request_id)
    source = payload.source_system if isinstance(payload, OnboardingRequest) else payload.request.source_system
    return Inbound(payload, replace(delivery, source=source), body)


def message_key(request_id: str) -> str:
    """The request's part of every MessageId the pipeline derives: the id, or a digest when it is long."""
    if len(request_id) <= MESSAGE_KEY_MAX:
        return request_id
    return "sha256-" + hashlib.sha256(request_id.encode()).hexdigest()[:40]


def check_reply_to(reply_to: str | None) -> tuple[str | None, str | None]:
    """(the ReplyTo to publish the outcome to, or None for the outcome queue; a warning for the outcome)."""
    if not reply_to:
        return None, None
    shown = reply_to if len(reply_to) <= 80 else reply_to[:77] + "..."
    if not _ENTITY_NAME.match(reply_to) or len(reply_to) > 260:
        return None, f"ReplyTo {shown!r} is not a Service Bus queue name, so the outcome went to the outcome queue."
    if reply_to.split("/", 1)[0].lower() in _PIPELINE_QUEUES:
        return None, (
            f"ReplyTo {shown!r} names one of the pipeline's own queues; the outcome went to the outcome queue "
            "instead, so it cannot loop back into the pipeline."
        )
    return reply_to, None


def message_id_of(message: ReceivedMessage) -> str:
    """The message's MessageId as text, one text per distinct MessageId (the journal, the outcome and
    every derived MessageId are keyed by it): see `id_text`."""
    return id_text(message.message_id, message.sequence_number)


def id_text(raw: object, sequence_number: int | None = None) -> str:
    """An id as sent, as text, without two ids ever sharing one.

    A string is kept whole; only a leading backslash is doubled. Anything else is named by a text
    that starts with one backslash and its AMQP type, which no string can then be, and which no valid
    request id is (a request id holds no backslash), so such a message needs request_id in its body:
    a binary id that is not UTF-8 by a SHA-256 digest of all its bytes, a uuid or ulong by its value,
    a missing or empty one by the message's sequence number.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")  # as the SDK reads a binary id; property values come as bytes
        except UnicodeDecodeError:
            return f"{_DERIVED}binary:sha256-{hashlib.sha256(raw).hexdigest()}"
        return id_text(text, sequence_number)
    if isinstance(raw, str) and raw:
        return _DERIVED + raw if raw.startswith(_DERIVED) else raw
    if raw is None or raw == "":
        return f"{_DERIVED}{'none' if raw is None else 'empty'}:seq-{sequence_number}"
    if isinstance(raw, uuid.UUID):
        return f"{_DERIVED}uuid:{raw}"
    if isinstance(raw, int):
        return f"{_DERIVED}ulong:{raw}"
    digest = hashlib.sha256(repr(raw).encode()).hexdigest()
    return f"{_DERIVED}{type(raw).__name__}:sha256-{digest}"


def claimed_request_id(message: ReceivedMessage) -> str:
    """Which request a raw message belongs to, read leniently (a dead letter may be unreadable): the
    pipeline's request id property, else the MessageId. Upstream's own request is named by its body
    too (`decode`); this is what the envelope alone says."""
    properties = message.application_properties
    claimed = _text_keys(properties if isinstance(properties, dict) else None).get(REQUEST_ID)
    return message_id_of(message) if claimed in (None, "", b"") else id_text(claimed)


def _upstream_delivery(message: ReceivedMessage, now: datetime) -> Delivery:
    """The envelope as upstream sent it: identity from the MessageId, first attempt, ReplyTo checked."""
    message_id = message_id_of(message)
    reply_to, warning = check_reply_to(message.reply_to)
    return Delivery(
        message_id,
        message_id,
        _correlation_id(message) or message_id,
        reply_to,
        1,
        now,
        warnings=(warning,) if warning else (),
    )


def _own_retry(message: ReceivedMessage, request: OnboardingRequest, now: datetime) -> Delivery | None:
    """The bookkeeping of a create-contact retry the pipeline scheduled itself, else None (ignored).

    Upstream could set the same properties; they count only when the MessageId is the one the
    pipeline derives from them and the body names the same request, so a message cannot take
    another request's identity or start at attempt 999 through its properties.
    """
    properties = _text_keys(message.application_properties)
    if not any(name in properties for name in BOOKKEEPING):
        return None
    try:
        claimed = replace(read_delivery(message, now), source=request.source_system)
    except EnvelopeError:
        return None
    expected_id = retry_message_id(StageName.CREATE_CONTACT, claimed, claimed.attempt)
    if message.message_id != expected_id or (request.request_id and request.request_id != claimed.request_id):
        return None
    reply_to, warning = check_reply_to(claimed.reply_to)
    return replace(claimed, reply_to=reply_to, warnings=(warning,) if warning else ())


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, naming the field; input values are left out (they may hold addresses)."""
    problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()]
    return "; ".join(problems)


def _with_request_id(delivery: Delivery, request_id: str) -> Delivery:
    """The body's request_id is the request's identity; the correlation id follows it unless upstream set one."""
    defaulted = delivery.correlation_id == delivery.request_id
    return replace(delivery, request_id=request_id, correlation_id=request_id if defaulted else delivery.correlation_id)


def read_body(message: ReceivedMessage) -> bytes:
    """The body as bytes, whether it came as data sections or as an AMQP string/bytes value."""
    if message.body_type == AmqpMessageBodyType.DATA:
        return b"".join(message.body)
    if message.body_type == AmqpMessageBodyType.VALUE and isinstance(message.body, str | bytes):
        return message.body.encode() if isinstance(message.body, str) else message.body
    raise EnvelopeError(f"the body is an AMQP {message.body_type.value} section; send JSON as data or a string")


def read_delivery(message: ReceivedMessage, now: datetime) -> Delivery:
    properties = _text_keys(message.application_properties)
    message_id = message_id_of(message)
    request_id = claimed_request_id(message)
    attempt_text = _text(properties.get(ATTEMPT)) or "1"
    if not attempt_text.isdigit() or int(attempt_text) < 1:
        raise EnvelopeError(f"application property {ATTEMPT} must be a positive whole number")
    replay_text = _text(properties.get(REPLAY)) or "0"
    if not replay_text.isdigit() or int(replay_text) > REPLAY_MAX:
        raise EnvelopeError(f"application property {REPLAY} must be a whole number from 0 to {REPLAY_MAX}")
    throttles_text = _text(properties.get(THROTTLES)) or "0"
    if not throttles_text.isdigit() or int(throttles_text) > THROTTLES_MAX:
        raise EnvelopeError(f"application property {THROTTLES} must be a whole number from 0 to {THROTTLES_MAX}")
    first_text = _text(properties.get(FIRST_ATTEMPT_AT))
    try:
        first_attempt_at = datetime.fromisoformat(first_text) if first_text else now
    except ValueError as error:
        raise EnvelopeError(f"application property {FIRST_ATTEMPT_AT} must be an ISO 8601 time") from error
    return Delivery(
        message_id=message_id,
        request_id=request_id,
        correlation_id=_correlation_id(message) or request_id,
        reply_to=message.reply_to,
        attempt=int(attempt_text),
        first_attempt_at=first_attempt_at if first_attempt_at.tzinfo else first_attempt_at.replace(tzinfo=UTC),
        phase=_text(properties.get(PHASE)) or "",
        replay=int(replay_text),
        throttles=int(throttles_text),
    )


def phase_of(body: StageMessage) -> str:
    """A welcome-mail re-check runs verify-delivery again: each has its own phase, hence its own MessageIds."""
    return f"welcome-check-{body.welcome.checks}" if body.welcome else ""


def _request_key(request_id: str, replay: int, source: str) -> str:
    """Scoped by the source, whose own the request id is; a replay is a new run of the request: its
    MessageIds must not meet the first run's in the duplicate-detection window, or Service Bus would drop them."""
    key = message_key(f"{source}/{request_id}" if source else request_id)
    return f"{key}/replay-{replay}" if replay else key


def _stage_key(delivery: Delivery, stage: StageName, phase: str) -> str:
    key = _request_key(delivery.request_id, delivery.replay, delivery.source)
    return f"{key}/{stage}/{phase}" if phase else f"{key}/{stage}"


def retry_message_id(stage: StageName, delivery: Delivery, attempt: int) -> str:
    throttled = f"/t{delivery.throttles}" if delivery.throttles else ""
    return f"{_stage_key(delivery, stage, delivery.phase)}/{attempt}{throttled}"


def _bookkeeping(delivery: Delivery, phase: str) -> dict[str, str]:
    return (
        {REQUEST_ID: delivery.request_id}
        | ({PHASE: phase} if phase else {})
        | ({REPLAY: str(delivery.replay)} if delivery.replay else {})
    )


def next_stage_message(stage: StageName, body: StageMessage, delivery: Delivery) -> ServiceBusMessage:
    phase = phase_of(body)
    return _message(
        body.model_dump_json().encode(),
        message_id=_stage_key(delivery, stage, phase),
        delivery=delivery,
        properties=_bookkeeping(delivery, phase),
    )


def retry_message(stage: StageName, body: bytes, delivery: Delivery, *, throttled: bool = False) -> ServiceBusMessage:
    """The same body again, one attempt later (after throttling: the same attempt, one throttle
    more); the first attempt time bounds the total age."""
    if throttled:
        return _attempt_message(stage, body, replace(delivery, throttles=delivery.throttles + 1), delivery.attempt)
    return _attempt_message(stage, body, delivery, delivery.attempt + 1)


def replay_message(stage: StageName, body: bytes, delivery: Delivery, now: datetime) -> ServiceBusMessage:
    """A dead letter sent again by an operator once its cause is fixed: the same body (so the request
    id and what earlier stages gathered stay), the next replay number, and a fresh attempt budget."""
    if delivery.replay >= REPLAY_MAX:
        raise EnvelopeError(f"request {delivery.request_id} has been replayed {REPLAY_MAX} times already")
    replayed = replace(delivery, replay=delivery.replay + 1, first_attempt_at=now, throttles=0)
    return _attempt_message(stage, body, replayed, 1)


def _attempt_message(stage: StageName, body: bytes, delivery: Delivery, attempt: int) -> ServiceBusMessage:
    properties = _bookkeeping(delivery, delivery.phase) | {
        ATTEMPT: str(attempt),
        FIRST_ATTEMPT_AT: delivery.first_attempt_at.isoformat(),
    }
    if delivery.throttles:
        properties[THROTTLES] = str(delivery.throttles)
    return _message(
        body,
        message_id=retry_message_id(stage, delivery, attempt),
        delivery=delivery,
        properties=properties,
    )


def outcome_message(outcome: OutcomeEvent, delivery: Delivery) -> ServiceBusMessage:
    return _message(
        outcome.model_dump_json().encode(),
        message_id=outcome_message_id(delivery.request_id, delivery.replay, delivery.source),
        delivery=delivery,
        properties=_bookkeeping(delivery, ""),
        subject=f"onboarding.{outcome.status}",
    )


def outcome_message_id(request_id: str, replay: int = 0, source: str = "") -> str:
    """One per run of a request: a second outcome for the same run is dropped by duplicate detection."""
    return f"{_request_key(request_id, replay, source)}/outcome"


def _message(
    body: bytes, *, message_id: str, delivery: Delivery, properties: dict[str, str], subject: str | None = None
) -> ServiceBusMessage:
    return ServiceBusMessage(
        body,
        message_id=message_id,
        correlation_id=delivery.correlation_id,
        reply_to=delivery.reply_to,
        content_type=JSON,
        subject=subject,
        application_properties=dict(properties),  # type: ignore[arg-type]
    )


def _correlation_id(message: ReceivedMessage) -> str | None:
    """Upstream's CorrelationId when it is text; any other AMQP type is ignored (the request id stands in)."""
    correlation_id = message.correlation_id
    return correlation_id if isinstance(correlation_id, str) and correlation_id else None


def _text_keys(properties: dict[str | bytes, Any] | None) -> dict[str, Any]:
    # The SDK hands application property keys back as bytes (b"onboarding-attempt").
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in (properties or {}).items()}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


CLOUDEVENTS_JSON = "application/cloudevents+json"


def published_event(
    *,
    event_type: str,
    source: str,
    event_id: str,
    about: str,
    data: BaseModel,
    now: datetime,
    subject: str,
    correlation_id: str,
    request_id: str,
) -> ServiceBusMessage:
    """An event the app publishes about an earlier request (a lease's notice, a drift event): a structured
    CloudEvent (docs/cloudevents.md) whose id is also the MessageId, so duplicate detection drops a repeat.
    `about` is the event's subject (what it concerns); `subject` the message's, which consumers filter on."""
    event = {
        "specversion": "1.0",
        "type": event_type,
        "source": source,
        "id": event_id,
        "time": now.isoformat(),
        "subject": about,
        "datacontenttype": JSON,
        "data": data.model_dump(mode="json"),
    }
    return ServiceBusMessage(
        json.dumps(event).encode(),
        message_id=event_id,
        correlation_id=correlation_id,
        content_type=CLOUDEVENTS_JSON,
        subject=subject,
        application_properties={REQUEST_ID: request_id},
    )
