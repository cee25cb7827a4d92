"""Nothing ends silently: an outcome for what Service Bus dead-lettered by itself.

The pipeline publishes an outcome before it dead-letters a message. Service Bus also
dead-letters on its own: after MaxDeliveryCount deliveries (a worker that crashed or was killed
each time; on the Functions host the app cannot even see the delivery count) and, with
dead-lettering on expiration, when a message's time to live runs out. A timer-triggered sweep
(`DeadLetterSweep`) peeks every dead-letter sub-queue (`<queue>/$deadletterqueue`) and publishes
the missing Failed outcome, with the request's usual outcome MessageId.

It only peeks: every dead letter stays in its queue, active, for operators (`onboard dlq`). Not a
trigger on the sub-queue, nor a deferral: the Functions scaler sizes a Service Bus trigger by its
queue's message counts, and deferred dead letters still count, or hide new ones from it
(docs/service-bus-facts.md, "Scaling a trigger on a dead-letter sub-queue"). What was reported is
remembered by the journal (a request that ended after its message was enqueued needs no second
outcome) and, within a process, by the sweep itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from shared import envelope
from shared.contracts import DeadLetterReason, OnboardingRequest, StageName
from shared.decisions import DeadLetter
from shared.envelope import Delivery
from shared.journal.ports import Journal
from shared.logs import request_context
from shared.outbox import Outbox
from shared.outcomes import dead_letter
from shared.progress import Progress, Turn, group_addresses
from shared.queues import PIPELINE
from shared.reasons import facts_of
from shared.runner import Carrier

logger = logging.getLogger("onboarding.dead_letters")


class DeadLetteredMessage(envelope.ReceivedMessage, Protocol):
    @property
    def dead_letter_reason(self) -> str | None: ...
    @property
    def dead_letter_error_description(self) -> str | None: ...
    @property
    def enqueued_time_utc(self) -> datetime | None: ...


class DeadLetterQueues(Protocol):
    """The sweep's one view of Service Bus: a queue's dead-letter sub-queue, peeked (nothing locked or settled)."""

    def dead_letters(self, queue: str) -> AsyncIterator[DeadLetteredMessage]:
        """Every message in `queue`'s dead-letter sub-queue, oldest first."""
        ...


@dataclass(frozen=True)
class DeadLetterReporter:
    stage: StageName  # whose dead-letter sub-queue this is
    outbox: Outbox
    outcome_queue: str
    clock: Callable[[], datetime]
    journal: Journal | None = None

    @property
    def carrier(self) -> Carrier:
        return Carrier(self.stage, self.outbox, self.outcome_queue, self.clock, self.journal)

    async def report(self, message: DeadLetteredMessage) -> DeadLetter | None:
        """The outcome published for this dead letter, or None when it needs none (the pipeline's own,
        or a request the journal shows ended or went on); raises when the outcome could not be sent."""
        reason = message.dead_letter_reason or ""
        facts = facts_of(reason)
        if facts is not None and not facts.set_by_service_bus:  # the pipeline's own: it published the outcome
            return None
        turn, progress = self._what_is_known(message)
        with request_context(turn.delivery.request_id, turn.delivery.correlation_id, group_addresses(progress)):
            if settled_elsewhere := await self._settled_elsewhere(turn.delivery.request_id, message.enqueued_time_utc):
                logger.info("%s: a dead letter (%s) needs no outcome: %s", self.stage, reason, settled_elsewhere)
                return None
            decision = dead_letter(turn, progress, *self._explain(reason, message.dead_letter_error_description))
            carrier = self.carrier
            effect = await carrier.send(carrier.effect_of(decision, turn.delivery))
            logger.warning("%s: Service Bus dead-lettered the message (%s); outcome published", self.stage, reason)
            await carrier.record_effect(effect)
            return decision

    async def _settled_elsewhere(self, request_id: str, enqueued: datetime | None) -> str | None:
        """Why this request needs no outcome from here, as far as the journal knows; None: publish.

        A message Service Bus dead-lettered may belong to a request that went on: the stage sent the
        next message, then could not settle this one on any delivery. The later stage publishes the
        outcome; a Failed one from here first would win the duplicate detection and contradict it.
        Only what happened since the message was enqueued counts, so a replayed request gets its own
        outcome; when in doubt (clocks apart, no journal, a journal that cannot be read) the outcome
        is published, since a second one is at worst a duplicate its MessageId lets Service Bus drop,
        while a missing one is silence.
        """
        if self.journal is None:
            return None
        try:
            history = await self.journal.history(request_id)
        except Exception as error:
            logger.warning("could not read the journal of a dead-lettered message: %s", type(error).__name__)
            return None
        if enqueued is not None:
            history = [t for t in history if t.at >= enqueued]  # no margin: an old record must not silence
        ended = next((t for t in history if t.outcome_status is not None), None)
        if ended is not None:
            return f"the request already ended at {ended.stage} ({ended.outcome_status}): no second outcome"
        later = [t.stage for t in history if PIPELINE.index(t.stage) > PIPELINE.index(self.stage)]
        if later:
            return f"the request went on to {later[-1]}, which publishes its outcome"
        return None

    def _what_is_known(self, message: DeadLetteredMessage) -> tuple[Turn, Progress]:
        """The request's identity and progress, read as leniently as the message allows."""
        now = self.clock()
        try:
            inbound = envelope.decode_from(self.stage, message, now)
            turn = Turn(self.stage, inbound.delivery, now)
            if isinstance(inbound.payload, OnboardingRequest):
                return turn, Progress(request=inbound.payload)
            return turn, Progress.of(inbound.payload)
        except envelope.UnreadableMessage as unreadable:
            return Turn(self.stage, unreadable.delivery, now), Progress(warnings=list(unreadable.delivery.warnings))
        except Exception as error:  # this function is the last one that can report: never crash on a message
            logger.warning("could not read a dead-lettered message of %s: %s", self.stage, type(error).__name__)
            return Turn(self.stage, _bare_delivery(message, now), now), Progress()

    def _explain(self, reason: str, description: str | None) -> tuple[DeadLetterReason, str]:
        fix = "Find the request id in the logs, fix the cause, then replay the message (onboard dlq replay)."
        if reason == DeadLetterReason.MAX_DELIVERY_COUNT_EXCEEDED:
            return DeadLetterReason.MAX_DELIVERY_COUNT_EXCEEDED, (
                f"Stage {self.stage} failed on every delivery of this message, and Service Bus dead-lettered it "
                f"after its maximum delivery count (MaxDeliveryCountExceeded). {fix}"
            )
        if reason == DeadLetterReason.TTL_EXPIRED:
            return DeadLetterReason.TTL_EXPIRED, (
                f"The message expired before stage {self.stage} handled it (TTLExpiredException): the "
                "pipeline was stopped or far behind for longer than the queue's time to live. Replay it once the pipeline runs (onboard dlq replay)."
            )
        said = f" ({description[:200]})" if description else ""
        return DeadLetterReason.PROCESSING_FAILED, (
            f"The message of stage {self.stage} was dead-lettered outside the pipeline with reason "
            f"{reason[:100]!r}{said}. {fix}"
        )


def _bare_delivery(message: DeadLetteredMessage, now: datetime) -> Delivery:
    """The least a message says about its request: which request it claims to be, and its correlation id."""
    request_id = envelope.claimed_request_id(message)
    correlation_id = message.correlation_id if isinstance(message.correlation_id, str) else None
    return Delivery(envelope.message_id_of(message), request_id, correlation_id or request_id, None, 1, now)


DeadLetterKey = tuple[int | None, str | None]  # sequence number and MessageId: one dead letter of a queue


@dataclass
class DeadLetterSweep:
    """Reports every dead letter of `queues` that needs an outcome, once; run by the timer function.

    `queues`: each queue whose dead-letter sub-queue is swept, and the stage that reads that queue (a
    source's own intake queue is read by create-contact). A dead letter is handled once it needed no
    outcome or its outcome was sent; the sweep remembers those while its process lives, so a later
    sweep asks the journal only about what is new. One that could not be reported is tried again by
    the next sweep; one queue that cannot be read does not stop the others.
    """

    source: DeadLetterQueues
    queues: Mapping[str, StageName]
    reporter: Callable[[StageName], DeadLetterReporter]
    handled: dict[str, set[DeadLetterKey]] = field(default_factory=dict)

    async def run(self) -> list[DeadLetter]:
        """The outcomes this sweep published."""
        published: list[DeadLetter] = []
        for queue, stage in self.queues.items():
            try:
                published += await self._sweep(queue, self.reporter(stage))
            except Exception as error:
                logger.error("could not sweep the dead letters of %s: %s", queue, type(error).__name__)
        return published

    async def _sweep(self, queue: str, reporter: DeadLetterReporter) -> list[DeadLetter]:
        before = self.handled.get(queue, set())
        handled: set[DeadLetterKey] = set()  # only what is still there: a purged dead letter is forgotten
        published: list[DeadLetter] = []
        async for message in self.source.dead_letters(queue):
            key = (message.sequence_number, message.message_id)
            if key not in before:
                try:
                    if decision := await reporter.report(message):
                        published.append(decision)
                except Exception:
                    logger.exception(
                        "could not publish the outcome of a dead letter of %s; the next sweep tries again", queue
                    )
                    continue
            handled.add(key)
        self.handled[queue] = handled
        return published
