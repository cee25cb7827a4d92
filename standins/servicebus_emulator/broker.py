"""The AMQP 1.0 side: links, transfers, dispositions, CBS and the $management operations.

Runs on proton's reactor thread and is the only code that touches the QueueStore. Facts about
what the azure-servicebus SDK expects, and their sources: docs/service-bus-facts.md.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from proton import Array, Condition, Connection, Data, Delivery, Endpoint, Handler, Link, Message, symbol

from standins.servicebus_emulator import codec
from standins.servicebus_emulator.store import EntityNotFound, LockLost, QueueStore, StoredMessage

logger = logging.getLogger("standins.servicebus_emulator")

CBS_NODE = "$cbs"
MANAGEMENT_SUFFIX = "/$management"
INCOMING_CREDIT = 100
TICK_SECONDS = 0.1  # how often lock expiry and scheduled messages are noticed
STOP_GRACE_SECONDS = 0.2  # for the forced-close frames to leave before the sockets are dropped
NOT_FOUND = "amqp:not-found"
MAX_MESSAGE_SIZE = 256 * 1024  # the Standard tier's limit, advertised on every link a client sends on
MESSAGE_SIZE_EXCEEDED = "amqp:link:message-size-exceeded"
LOCK_LOST = "com.microsoft:message-lock-lost"


def utc_now() -> datetime:
    return datetime.now(UTC)


def normalise_address(address: str | None) -> str:
    """`amqps://host/queue`, `sb://host:port/Queue` and `queue` all name the same entity."""
    text = address or ""
    if "://" in text:
        text = urlparse(text).path
    return text.strip("/").lower()


def _values(value: Any) -> list[Any]:
    """AMQP arrays decode as proton Arrays, lists as lists."""
    if isinstance(value, Array):
        return list(value.elements)
    return list(value or [])


class Broker(Handler):  # type: ignore[misc]  # proton is untyped here
    def __init__(
        self,
        store: QueueStore,
        host: str,
        port: int,
        on_ready: Callable[[], None],
        on_stopped: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self.store = store
        self._address = f"{host}:{port}"
        self._on_ready = on_ready
        self._on_stopped = on_stopped
        self._connections: set[Connection] = set()
        self._consumers: dict[str, list[Link]] = defaultdict(list)
        self._reply_links: list[Link] = []
        self._acceptor: Any = None
        self._container: Any = None  # an injected event does not carry it
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------

    def on_reactor_init(self, event: Any) -> None:
        self._container = event.container
        self._acceptor = event.container.listen(self._address)
        event.container.schedule(TICK_SECONDS, self)
        self._on_ready()

    def on_timer_task(self, event: Any) -> None:
        if self._stopping:
            return
        now = utc_now()
        try:
            self.store.expire_locks(now)
            self.store.expire_messages(now)
            self._pump_all()
        except Exception:  # e.g. a full disk under the durable store: log, keep serving, try again
            logger.exception("the emulator's periodic work failed; retrying on the next tick")
        event.container.schedule(TICK_SECONDS, self)

    def on_stop_emulator(self, event: Any) -> None:
        """Injected from another thread by ServiceBusEmulator.stop().

        Container.stop() would leave the listening socket and every client's socket open (a new
        emulator could not take the port; clients would wait on a dead peer). Instead: stop
        listening, tell each client the connection is forced closed, and shortly after drop
        whatever is still open; the container then ends once nothing is left.
        """
        self._stopping = True
        if self._acceptor is not None:
            self._acceptor.close()
        for connection in self._connections:
            connection.condition = _error("amqp:connection:forced", "The Service Bus emulator is stopping.")
            connection.close()
        self._container.schedule(STOP_GRACE_SECONDS, _StopFinisher(self))

    def finish_stop(self) -> None:
        for connection in self._connections:
            transport = connection.transport
            if transport is not None:
                transport.close_tail()
                transport.close_head()
        self._on_stopped()

    # --- endpoints ------------------------------------------------------------------------

    def on_connection_init(self, event: Any) -> None:
        self._connections.add(event.connection)

    def on_connection_remote_open(self, event: Any) -> None:
        if event.connection.state & Endpoint.LOCAL_UNINIT:
            event.connection.open()

    def on_session_remote_open(self, event: Any) -> None:
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    def on_link_remote_open(self, event: Any) -> None:
        link: Link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        node = normalise_address(link.remote_source.address if link.is_sender else link.remote_target.address)
        if link.is_receiver:
            link.max_message_size = MAX_MESSAGE_SIZE  # the SDK sizes its batches by what the attach says
        link.open()
        if node == CBS_NODE.lower() or node.endswith(MANAGEMENT_SUFFIX):
            setattr(link, "emulator_node", node)  # noqa: B010  # proton keeps attributes across wrappers
            if link.is_sender:
                self._reply_links.append(link)
            else:
                link.flow(INCOMING_CREDIT)
            return
        try:
            queue = self.store.queue(node)
        except EntityNotFound:
            link.condition = _error(NOT_FOUND, _not_found(node))
            link.close()
            return
        if link.is_receiver and queue.is_dead_letter_queue:
            link.condition = _error("amqp:not-allowed", "Cannot send to a dead-letter queue.")
            link.close()
            return
        setattr(link, "emulator_node", node)  # noqa: B010
        if link.is_sender:
            self._consumers[node].append(link)
        else:
            link.flow(INCOMING_CREDIT)

    def on_link_remote_close(self, event: Any) -> None:
        self._forget(event.link)
        if not event.link.state & Endpoint.LOCAL_CLOSED:
            event.link.close()

    def on_session_remote_close(self, event: Any) -> None:
        if not event.session.state & Endpoint.LOCAL_CLOSED:
            event.session.close()

    def on_connection_remote_close(self, event: Any) -> None:
        if not event.connection.state & Endpoint.LOCAL_CLOSED:
            event.connection.close()

    def on_transport_tail_closed(self, event: Any) -> None:
        # Nothing more will arrive. After a malformed frame proton stops reading but keeps the
        # socket open, waiting on output it never writes: close it so the client is dropped.
        # A client that closed properly, or an error proton reports itself, still gets its reply.
        connection = event.connection
        closed_properly = connection is not None and connection.state & Endpoint.REMOTE_CLOSED
        if not closed_properly and event.transport.condition is None:
            event.transport.close_head()

    def on_transport_closed(self, event: Any) -> None:
        # A client that vanished: drop its links; its locked messages come back when locks expire.
        for links in (*self._consumers.values(), self._reply_links):
            links[:] = [link for link in links if link.connection != event.connection]
        self._connections.discard(event.connection)

    def _forget(self, link: Link) -> None:
        for links in (*self._consumers.values(), self._reply_links):
            if link in links:
                links.remove(link)

    def on_link_flow(self, event: Any) -> None:
        link = event.link
        if link.is_sender:
            self._flush_replies(link)
            node = getattr(link, "emulator_node", None)
            if node in self._consumers:
                self._pump(node)

    # --- transfers ------------------------------------------------------------------------

    def on_delivery(self, event: Any) -> None:
        delivery: Delivery = event.delivery
        link = delivery.link
        if link.is_receiver:
            if delivery.aborted:  # the sender gave up mid-transfer: nothing arrived
                delivery.settle()
                link.flow(1)
            elif delivery.readable and self._discard_if_oversize(link, delivery):
                if not delivery.partial:
                    link.advance()
                    self._refuse_oversize(link, delivery)
                    link.flow(1)
            elif delivery.readable and not delivery.partial:
                encoded = bytes(link.recv(delivery.pending) or b"")
                link.advance()
                self._on_incoming(link, delivery, encoded)
                link.flow(1)
        elif delivery.updated:
            # Also when the client settled first: the SDK releases, pre-settled, every message that
            # arrives outside a receive call, and that message must be unlocked at once.
            self._on_outcome(delivery)

    def _discard_if_oversize(self, link: Link, delivery: Delivery) -> bool:
        """A client that ignores the advertised limit: drop its bytes as they come, keep only the count."""
        discarded: int = getattr(delivery, "discarded_bytes", 0)
        if not discarded and delivery.pending <= MAX_MESSAGE_SIZE:
            return False
        discarded += len(link.recv(delivery.pending) or b"")
        setattr(delivery, "discarded_bytes", discarded)  # noqa: B010
        return True

    def _refuse_oversize(self, link: Link, delivery: Delivery) -> None:
        size: int = getattr(delivery, "discarded_bytes", 0)
        logger.warning("refused a %d-byte message to %s", size, getattr(link, "emulator_node", ""))
        delivery.local.condition = _error(
            MESSAGE_SIZE_EXCEEDED,
            f"The received message (size: {size} bytes) exceeds the limit ({MAX_MESSAGE_SIZE} bytes) "
            "currently allowed on the link.",
        )
        delivery.update(Delivery.REJECTED)
        delivery.settle()

    def _on_incoming(self, link: Link, delivery: Delivery, encoded: bytes) -> None:
        node = getattr(link, "emulator_node", "")
        try:
            if node == CBS_NODE.lower() or node.endswith(MANAGEMENT_SUFFIX):
                self._on_request(link, node, codec.decode(encoded))
            else:
                now = utc_now()
                for part in codec.split_batch(encoded):
                    self._enqueue(node, part, now)
                self._pump(node)
            delivery.update(Delivery.ACCEPTED)
        except sqlite3.Error as error:  # the durable store failed: our fault, not the message's
            logger.error("could not store a transfer to %s: %s", node, error)
            delivery.local.condition = _error("amqp:internal-error", "The emulator could not store the message.")
            delivery.update(Delivery.REJECTED)
        except Exception as error:  # a malformed message must not take the broker down
            logger.warning("refused a transfer to %s: %s", node, error)
            delivery.local.condition = _error("amqp:decode-error", str(error))
            delivery.update(Delivery.REJECTED)
        delivery.settle()

    def _enqueue(self, node: str, encoded: bytes, now: datetime) -> int | None:
        """A sent message (a transfer or schedule-message): its id, schedule and time-to-live come from it."""
        message = codec.decode(encoded)
        return self.store.enqueue(
            node,
            encoded,
            codec.message_id_of(message),
            now,
            codec.scheduled_time_of(message),
            codec.time_to_live_of(message),
        )

    def _on_outcome(self, delivery: Delivery) -> None:
        token = getattr(delivery, "lock_token", None)
        state = delivery.remote_state
        try:
            if token is None:
                pass  # settled already (receive-and-delete) or not ours
            elif state == Delivery.ACCEPTED:
                self.store.complete(token)
            elif state == Delivery.REJECTED:
                info = _condition_info(delivery.remote.condition)
                self.store.dead_letter(token, info.get("DeadLetterReason"), info.get("DeadLetterErrorDescription"))
            elif state == Delivery.MODIFIED and delivery.remote.undeliverable:
                self.store.defer(token)
            elif state == Delivery.MODIFIED:
                self.store.abandon(token)
            elif state == Delivery.RELEASED:
                self.store.release(token)
            else:
                return  # not a terminal outcome yet
            setattr(delivery, "lock_token", None)  # noqa: B010  # one outcome per delivery
            delivery.update(state)
        except LockLost:
            delivery.local.condition = _error(LOCK_LOST, "The lock supplied is invalid or has expired.")
            delivery.update(Delivery.REJECTED)
        delivery.settle()
        node = getattr(delivery.link, "emulator_node", None)
        if node in self._consumers:
            self._pump(node)

    def _pump_all(self) -> None:
        for node in list(self._consumers):
            self._pump(node)

    def _pump(self, node: str) -> None:
        """Hand available messages to this queue's receivers while they have credit."""
        now = utc_now()
        for link in list(self._consumers.get(node, [])):
            if link.state & (Endpoint.LOCAL_CLOSED | Endpoint.REMOTE_CLOSED):
                self._forget(link)
                continue
            while link.credit > 0:
                receive_and_delete = link.snd_settle_mode == Link.SND_SETTLED
                stored = self.store.take_next(node, now) if receive_and_delete else self.store.lock_next(node, now)
                if stored is None:
                    return
                token = stored.lock_token or uuid.uuid4()
                delivery = link.delivery(codec.lock_token_tag(token))
                link.stream(codec.encode_for_delivery(stored, node))
                link.advance()
                if receive_and_delete:
                    delivery.settle()
                else:
                    setattr(delivery, "lock_token", token)  # noqa: B010

    # --- CBS and $management ----------------------------------------------------------------

    def _on_request(self, link: Link, node: str, request: Message) -> None:
        if node == CBS_NODE.lower():
            reply = self._put_token(request)
        else:
            reply = self._management(node.removesuffix(MANAGEMENT_SUFFIX), request)
        reply.correlation_id = request.id
        reply.address = request.reply_to
        self._send_reply(link, node, request.reply_to, reply)

    def _put_token(self, request: Message) -> Message:
        """Every key is accepted (the emulator's shared key is public anyway), but, as in Service Bus,
        a token for an entity that does not exist is refused with 404: the SDK's first sign of it."""
        audience = str(dict(request.properties or {}).get("name", ""))
        entity = normalise_address(audience).removesuffix(MANAGEMENT_SUFFIX)
        if entity:
            try:
                self.store.queue(entity)
            except EntityNotFound:
                return _cbs_status(404, _not_found(audience))
        return _cbs_status(202, "Accepted")

    def _management(self, queue: str, request: Message) -> Message:
        properties: dict[Any, Any] = dict(request.properties or {})
        operation = str(properties.get("operation", ""))
        raw_body: Any = request.body
        body: dict[str, Any] = {str(k): v for k, v in raw_body.items()} if isinstance(raw_body, dict) else {}
        now = utc_now()
        try:
            if operation == "com.microsoft:schedule-message":
                numbers = []
                for entry in _values(body.get("messages")):
                    numbers.append(self._enqueue(queue, bytes(dict(entry)["message"]), now) or 0)
                return _ok({"sequence-numbers": Array(Data.NULL, Data.LONG, *numbers)})
            if operation == "com.microsoft:cancel-scheduled-message":
                self.store.cancel_scheduled(queue, [int(n) for n in _values(body.get("sequence-numbers"))])
                return _ok({})
            if operation == "com.microsoft:renew-lock":
                expirations = [
                    codec.to_timestamp(self.store.renew_lock(_uuid(t), now)) for t in _values(body.get("lock-tokens"))
                ]
                return _ok({"expirations": Array(Data.NULL, Data.TIMESTAMP, *expirations)})
            if operation == "com.microsoft:update-disposition":
                self._update_disposition(body)
                return _ok({})
            if operation == "com.microsoft:receive-by-sequence-number":
                numbers = [int(n) for n in _values(body.get("sequence-numbers"))]
                # receiver-settle-mode 0 (first) is how the SDK spells receive-and-delete.
                delete = int(body.get("receiver-settle-mode", 1)) == 0
                deferred = self.store.receive_deferred(queue, numbers, now, delete=delete)
                if not deferred:
                    return _status(204, "No messages")
                return _ok({"messages": [_encoded_entry(m, queue) for m in deferred]})
            if operation == "com.microsoft:peek-message":
                start = int(body.get("from-sequence-number", 0))
                peeked = self.store.peek(queue, start, int(body.get("message-count", 1)))
                if not peeked:
                    return _status(204, "No messages")
                return _ok({"messages": [_encoded_entry(m, queue) for m in peeked]})
        except LockLost as error:
            return _status(410, f"The lock supplied is invalid or has expired: {error}", LOCK_LOST)
        except EntityNotFound as error:
            return _status(404, _not_found(str(error.args[0])), NOT_FOUND)  # str() of a KeyError adds quotes
        except (KeyError, TypeError, ValueError) as error:
            return _status(400, f"Malformed {operation} request: {error}", "amqp:invalid-field")
        return _status(501, f"Operation {operation!r} is not supported by this emulator.", "amqp:not-implemented")

    def _update_disposition(self, body: dict[str, Any]) -> None:
        status = str(body["disposition-status"])
        for token in map(_uuid, _values(body.get("lock-tokens"))):
            if status == "completed":
                self.store.complete(token)
            elif status == "abandoned":
                self.store.abandon(token)
            elif status == "defered":
                self.store.defer(token)
            elif status == "suspended":
                self.store.dead_letter(token, body.get("deadletter-reason"), body.get("deadletter-description"))
            else:
                raise ValueError(f"unknown disposition-status {status!r}")

    def _send_reply(self, request_link: Link, node: str, reply_to: str | None, reply: Message) -> None:
        candidates = [
            link
            for link in self._reply_links
            if link.connection == request_link.connection and getattr(link, "emulator_node", None) == node
        ]
        matching = [link for link in candidates if link.remote_target.address == reply_to] or candidates
        if not matching:
            logger.warning("no reply link for a request to %s", node)
            return
        link = matching[0]
        _pending_replies(link).append(reply)
        self._flush_replies(link)

    def _flush_replies(self, link: Link) -> None:
        pending = _pending_replies(link)
        while pending and link.credit > 0:
            delivery = pending.pop(0).send(link)
            delivery.settle()


class _StopFinisher(Handler):  # type: ignore[misc]
    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self._broker = broker

    def on_timer_task(self, event: Any) -> None:
        self._broker.finish_stop()


def _pending_replies(link: Link) -> list[Message]:
    """Replies waiting for credit; kept on the link itself (proton stores attributes in its record)."""
    pending: list[Message] | None = getattr(link, "pending_replies", None)
    if pending is None:
        pending = []
        setattr(link, "pending_replies", pending)  # noqa: B010
    return pending


def _encoded_entry(stored: StoredMessage, queue: str) -> dict[str, Any]:
    """One entry of a management reply's `messages` list; a locked message carries its lock token."""
    entry: dict[str, Any] = {"message": codec.encode_for_delivery(stored, queue)}
    if stored.lock_token is not None:
        entry["lock-token"] = stored.lock_token
    return entry


def _ok(body: dict[str, Any]) -> Message:
    message = _status(200, "OK")
    message.body = body
    return message


def _status(code: int, description: str, condition: str | None = None) -> Message:
    properties: dict[str, Any] = {"statusCode": code, "statusDescription": description}
    if condition:
        properties["errorCondition"] = condition
    return Message(properties=properties)


def _not_found(entity: str) -> str:
    return f"The messaging entity '{entity}' could not be found."


def _cbs_status(code: int, description: str) -> Message:
    # $cbs spells its status properties differently from $management.
    return Message(properties={"status-code": code, "status-description": description})


def _error(name: str, description: str) -> Condition:
    """An AMQP error with an info map, as Service Bus sends them: the SDK reads all three fields of
    an error (in a rejected outcome, a detach or a close) and fails on a shorter list."""
    return Condition(name, description, {symbol("com.microsoft:tracking-id"): str(uuid.uuid4())})


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _condition_info(condition: Condition | None) -> dict[str, str]:
    if condition is None or not condition.info:
        return {}
    return {str(k): str(v) for k, v in dict(condition.info).items()}
