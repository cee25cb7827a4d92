"""The emulator's management endpoint: Service Bus's ATOM entity API over plain HTTP, on a port of its own.

Microsoft's emulator (2.0.0) answers the administration client on a separate HTTP port (5300 by
default) and is addressed with the same connection string on that port. This one answers the one
call the project makes, `ServiceBusAdministrationClient.get_queue`: `GET /<queue>` gives the queue's
Atom entry with its QueueDescription as configured; an entity that does not exist gives Service Bus's
empty "Publicly Listed Services" feed with 200 (the SDK then raises ResourceNotFoundError). A request
not signed with the emulator's one shared access rule, RootManageSharedAccessKey (the rule that holds
Manage), is refused 401 in Service Bus's `<Error>` shape. Sources: docs/service-bus-facts.md
("Management: the ATOM entity API").
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from standins.servicebus_emulator.config import EmulatorConfig, QueueConfig

MANAGE_RULE = "RootManageSharedAccessKey"  # the emulator's only shared access rule; it holds Manage, Send, Listen
START_TIMEOUT_SECONDS = 10.0
ATOM_FEED = "application/atom+xml;type=feed;charset=utf-8"
ATOM_ENTRY = "application/atom+xml;type=entry;charset=utf-8"
NEVER = "P10675199DT2H48M5.4775807S"  # TimeSpan.MaxValue, how Service Bus writes "no auto-delete"


def iso_duration(value: timedelta) -> str:
    """A timespan as Service Bus writes it: P14D, PT1M, PT10M, PT0.5S."""
    days, rest = divmod(value.total_seconds(), 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    time_part = "".join(
        f"{number:g}{unit}" for number, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if number
    )
    text = "P" + (f"{days:g}D" if days else "") + (f"T{time_part}" if time_part else "")
    return text if text != "P" else "PT0S"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, detail: str, request: Request) -> Response:
    tracker = f"{request.url.hostname}:{request.url.path.lstrip('/') or '$namespace'}"
    body = (
        f"<Error><Code>{status}</Code><Detail>{escape(detail)} TrackingId:{uuid.uuid4()}_G0, "
        f"SystemTracker:{escape(tracker)}, Timestamp:{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}</Detail></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml; charset=utf-8")


def _not_found_feed() -> Response:
    """What Service Bus answers for an entity that does not exist: its service list, empty, and 200."""
    body = (
        '<feed xmlns="http://www.w3.org/2005/Atom"><title type="text">Publicly Listed Services</title>'
        '<subtitle type="text">This is the list of publicly-listed services currently available.</subtitle>'
        f"<id>uuid:{uuid.uuid4()};id=1</id><updated>{_now()}</updated><generator>Service Bus 1.1</generator></feed>"
    )
    return Response(body, media_type=ATOM_FEED)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _queue_entry(queue: QueueConfig, url: str, namespace: str, created: str) -> str:
    """The queue's Atom entry, elements in Service Bus's order (the SDK reads them by name)."""
    description = (
        f"<LockDuration>{iso_duration(queue.lock_duration)}</LockDuration>"
        "<MaxSizeInMegabytes>1024</MaxSizeInMegabytes>"
        f"<RequiresDuplicateDetection>{_flag(queue.requires_duplicate_detection)}</RequiresDuplicateDetection>"
        "<RequiresSession>false</RequiresSession>"
        f"<DefaultMessageTimeToLive>{iso_duration(queue.default_message_time_to_live)}</DefaultMessageTimeToLive>"
        "<DeadLetteringOnMessageExpiration>"
        f"{_flag(queue.dead_lettering_on_message_expiration)}</DeadLetteringOnMessageExpiration>"
        "<DuplicateDetectionHistoryTimeWindow>"
        f"{iso_duration(queue.duplicate_detection_history_time_window)}</DuplicateDetectionHistoryTimeWindow>"
        f"<MaxDeliveryCount>{queue.max_delivery_count}</MaxDeliveryCount>"
        "<EnableBatchedOperations>true</EnableBatchedOperations>"
        "<IsAnonymousAccessible>false</IsAnonymousAccessible><AuthorizationRules></AuthorizationRules>"
        f"<Status>Active</Status><CreatedAt>{created}</CreatedAt><UpdatedAt>{created}</UpdatedAt>"
        f"<SupportOrdering>true</SupportOrdering><AutoDeleteOnIdle>{NEVER}</AutoDeleteOnIdle>"
        "<EnablePartitioning>false</EnablePartitioning>"
        "<EntityAvailabilityStatus>Available</EntityAvailabilityStatus><EnableExpress>false</EnableExpress>"
    )
    return (
        f'<entry xmlns="http://www.w3.org/2005/Atom"><id>{escape(url)}</id><title type="text">{escape(queue.name)}'
        f"</title><published>{created}</published><updated>{created}</updated><author><name>{escape(namespace)}"
        f'</name></author><link rel="self" href="{escape(url)}"/><content type="application/xml">'
        '<QueueDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" '
        f'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">{description}</QueueDescription></content></entry>'
    )


def _rule_of(authorization: str) -> str | None:
    """The shared access rule a SAS token names (skn); None for anything else, Entra bearer tokens included."""
    scheme, _, token = authorization.partition(" ")
    if scheme != "SharedAccessSignature":
        return None
    fields = parse_qs(token)
    return fields.get("skn", [None])[0]


def management_app(config: EmulatorConfig, namespace: str = "localhost") -> Starlette:
    queues = {queue.name.lower(): queue for queue in config.queues}
    created = _now()

    async def get_entity(request: Request) -> Response:
        rule = _rule_of(request.headers.get("authorization", ""))
        if rule is None:
            return _error(401, "MissingToken: the request is not signed with a shared access signature.", request)
        if rule != MANAGE_RULE:
            # The signature is not checked (as on AMQP); only a rule with Manage may read entities.
            return _error(
                401, "Unauthorized access. 'Manage' claim(s) are required to perform this operation.", request
            )
        queue = queues.get(request.path_params["entity"].lower())
        if queue is None:
            return _not_found_feed()
        return Response(_queue_entry(queue, str(request.url), namespace, created), media_type=ATOM_ENTRY)

    async def refuse_change(request: Request) -> Response:
        return _error(405, "This emulator's management endpoint only reads entities (GET).", request)

    return Starlette(
        routes=[
            Route("/{entity:path}", get_entity, methods=["GET"]),
            Route("/{entity:path}", refuse_change, methods=["PUT", "DELETE", "POST", "PATCH"]),
        ]
    )


class ManagementEndpoint:
    """The management app served by uvicorn on a thread of its own."""

    def __init__(self, app: Starlette, *, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=self.port, log_level="warning", access_log=False, lifespan="off")
        )
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._server.run, name="servicebus-management", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator's management endpoint did not start on {self.host}:{self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._thread = None
