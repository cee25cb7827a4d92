"""Carries out one stage's decision for one received message, and nothing else.

`Carrier` is the one place that says what a decision sends, sends it (an outcome whose ReplyTo
queue does not exist goes to the outcome queue, saying so) and journals it; the dead-letter
sweep (shared/dead_letters.py) publishes its outcomes through it too.

Order matters: the next message (or the scheduled retry, or the outcome) is sent first and the
received message is settled second. A crash in between leaves a duplicate, which the stable
MessageIds and idempotent stages make harmless; the other order could lose the request.

Three failures are kept apart, because each means something different:
- the stage raised, or sending its result failed: nothing was settled, so the message is
  abandoned and comes back (on its last delivery: dead-lettered as ProcessingFailed, with an outcome);
- settling failed (lock lost, host shutting down): the work is done and the message comes back
  by itself; that is a log line, never a crash with a contradicting outcome;
- the journal failed: it is a record, never a reason to redo work; a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, Protocol

from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusError

from shared import envelope
from shared.contracts import DeadLetterReason, OnboardingRequest, OutcomeStatus, StageMessage, StageName
from shared.decisions import DeadLetter, Decision, Ended, Finish, PassOn, RetryLater
from shared.envelope import Delivery
from shared.journal.model import CAUSE_MAX, Transition, TransitionKind
from shared.journal.ports import Journal
from shared.logs import mask_emails, request_context
from shared.outbox import Outbox, UnknownQueueError
from shared.outcomes import dead_letter, with_warning
from shared.progress import Progress, Turn, group_addresses
from shared.reasons import REASONS
from shared.stages import Stage, StageDependencies

logger = logging.getLogger("onboarding.runner")


class MessageActions(Protocol):
    """The settlement half of azurefunctions-extensions-bindings-servicebus' ServiceBusMessageActions.

    On the Functions host each call is a blocking gRPC call that raises at once when it fails.
    """

    def complete(self, message: Any) -> None: ...

    def abandon(self, message: Any) -> None: ...

    def deadletter(
        self,
        message: Any,
        deadletter_reason: str | None = None,
        deadletter_error_description: str | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class Effect:
    """What carrying out one decision means: one message to send, one settlement, one journal row."""

    decision: Decision
    delivery: Delivery
    queue: str
    message: ServiceBusMessage
    send_at: datetime | None  # None: at once
    settlement: Literal["complete", "deadletter"]
    transition: TransitionKind
    cause: str
    outcome_status: OutcomeStatus | None = None
    dead_letter_reason: DeadLetterReason | None = None
    dead_letter_description: str | None = None


@dataclass(frozen=True)
class Carrier:
    """Carries out one stage's decisions, for its runner and the dead-letter sweep alike: what each
    decision sends, sending it (an outcome to its ReplyTo, else the outcome queue), and its journal row."""

    stage: StageName
    outbox: Outbox
    outcome_queue: str
    clock: Callable[[], datetime]
    journal: Journal | None = None

    def effect_of(self, decision: Decision, delivery: Delivery, body: bytes = b"") -> Effect:
        """The one place that says what each decision sends, how it settles, and what it records."""
        now = self.clock()
        match decision:
            case PassOn(next_stage, stage_message, delay):
                outgoing = envelope.next_stage_message(next_stage, stage_message, delivery)
                cause = f"to {next_stage}"
                if delay is not None:
                    when = f"in {delay.total_seconds():.1f} s"
                    cause = f"check again {when}" if next_stage == self.stage else f"{cause} {when}"
                send_at = None if delay is None else now + delay
                return Effect(
                    decision, delivery, next_stage, outgoing, send_at, "complete", TransitionKind.PASSED_ON, cause
                )
            case RetryLater(delay, cause, throttled):
                retry = envelope.retry_message(self.stage, body, delivery, throttled=throttled)
                when = f"in {delay.total_seconds():.1f} s: {cause}"
                queue = delivery.queue or self.stage  # back to the intake queue it came through
                return Effect(
                    decision, delivery, queue, retry, now + delay, "complete", TransitionKind.RETRY_SCHEDULED, when
                )
            case DeadLetter(reason, description):
                cause = f"{reason}: {description}"
                return self._outcome(decision, delivery, "deadletter", TransitionKind.DEAD_LETTERED, cause)
            case Finish(outcome):
                cause = "; ".join((outcome.status, *outcome.warnings))
                return self._outcome(decision, delivery, "complete", TransitionKind.FINISHED, cause)

    def _outcome(
        self,
        decision: DeadLetter | Finish,
        delivery: Delivery,
        settlement: Literal["complete", "deadletter"],
        transition: TransitionKind,
        cause: str,
    ) -> Effect:
        """The outcome event, to the request's ReplyTo, else the outcome queue."""
        outcome = decision.outcome
        message = envelope.outcome_message(outcome, delivery)
        queue = delivery.reply_to or self.outcome_queue
        reason, description = (
            (decision.reason, decision.description) if isinstance(decision, DeadLetter) else (None, None)
        )
        return Effect(
            decision, delivery, queue, message, None, settlement, transition, cause, outcome.status, reason, description
        )

    async def send(self, effect: Effect) -> Effect:
        """Send (or schedule) the effect's message and return the effect carried out: an outcome whose
        ReplyTo queue does not exist goes to the outcome queue instead, with a warning that says so."""
        try:
            await self._send(effect)
        except UnknownQueueError as unknown:
            decision, delivery = effect.decision, effect.delivery
            if effect.queue != delivery.reply_to or not isinstance(decision, DeadLetter | Finish):
                raise
            effect = self.effect_of(*without_reply_to(decision, delivery, unknown.queue))
            await self._send(effect)
        return effect

    async def _send(self, effect: Effect) -> None:
        if effect.send_at is None:
            await self.outbox.send(effect.queue, effect.message)
        else:
            await self.outbox.schedule(effect.queue, effect.message, effect.send_at)

    async def record(
        self,
        delivery: Delivery,
        kind: TransitionKind,
        cause: str,
        outcome_status: OutcomeStatus | None = None,
        at: datetime | None = None,
    ) -> None:
        """One journal row, once the decision is carried out: the journal is a record, never a reason to
        redo work, so a journal that is down costs a log line."""
        if self.journal is None:
            return
        try:
            transition = Transition(
                request_id=delivery.request_id,
                stage=self.stage,
                decision=kind,
                attempt=delivery.attempt,
                cause=mask_emails(cause)[:CAUSE_MAX],  # masked first: a cut could leave half an address
                outcome_status=outcome_status,
                at=at or self.clock(),
            )
            await self.journal.record(transition)
        except Exception as error:
            logger.warning("could not journal %s of stage %s: %s", kind, self.stage, type(error).__name__)

    async def record_effect(self, effect: Effect, at: datetime | None = None) -> None:
        await self.record(effect.delivery, effect.transition, effect.cause, effect.outcome_status, at)


@dataclass(frozen=True)
class StageRunner:
    stage: Stage[Any]
    dependencies: StageDependencies
    outbox: Outbox
    outcome_queue: str
    max_delivery_count: int = 10  # the queues' MaxDeliveryCount (infra); the last delivery reports a crash
    journal: Journal | None = None
    queue: str = ""  # an intake queue of its own (ONBOARDING_INTAKE_QUEUES); "": the stage's queue

    @property
    def stage_name(self) -> StageName:
        return self.stage.name

    @property
    def carrier(self) -> Carrier:
        return Carrier(self.stage_name, self.outbox, self.outcome_queue, self.dependencies.clock, self.journal)

    async def run(self, message: envelope.ReceivedMessage, actions: MessageActions) -> Decision | Ended:
        now = self.dependencies.clock()
        try:
            inbound = envelope.decode_from(self.stage_name, message, now)
        except envelope.UnreadableMessage as unreadable:
            refusal = dead_letter(
                Turn(self.stage_name, unreadable.delivery, now),
                Progress(warnings=list(unreadable.delivery.warnings)),
                DeadLetterReason.INVALID_REQUEST,
                unreadable.description,
            )
            with request_context(unreadable.delivery.request_id, unreadable.delivery.correlation_id):
                return await self._carry_out(refusal, unreadable.delivery, b"", message, actions)
        delivery = replace(inbound.delivery, queue=self.queue)
        with request_context(delivery.request_id, delivery.correlation_id, group_addresses(inbound.payload)):
            if (ended := await self._ended_already(delivery, inbound.payload, now)) is not None:
                logger.info(
                    "%s attempt %d: nothing done, this run of the request ended at %s (%s) at %s",
                    self.stage_name,
                    delivery.attempt,
                    ended.stage,
                    ended.status,
                    ended.at.isoformat(),
                )
                await self._settle(actions.complete, message)
                return ended
            try:
                decision = await self.stage.handle(inbound.payload, delivery, self.dependencies)
            except Exception as error:
                return await self._after_crash(error, delivery, message, actions)
            return await self._carry_out(decision, delivery, inbound.body, message, actions)

    async def _ended_already(
        self, delivery: Delivery, payload: OnboardingRequest | StageMessage, now: datetime
    ) -> Ended | None:
        """The outcome this message's run of the request already has, per the journal; None: go on.

        A run can leave a branch behind: a delivery schedules a retry, loses its lock before it settles,
        and the redelivery decides otherwise (the guest is subscribed now) and ends the request. The
        retry still comes, possibly after the outcome's MessageId has left the duplicate-detection
        window, and would act and publish a second outcome. A run began at its stage's first attempt
        (a retry carries it) or, for a stage message of the first run, when create-contact accepted it;
        a new run (a request sent again later, an operator's replay) begins after any earlier outcome.
        When in doubt (no journal, or one that cannot be read) the message is handled: the window then
        still drops a second outcome within 10 minutes.
        """
        if self.journal is None:
            return None
        began = delivery.first_attempt_at
        if isinstance(payload, StageMessage) and delivery.replay == 0:
            began = min(began, payload.accepted_at)
        if began >= now:
            return None  # a run that begins with this delivery (an upstream request's first): nothing to read
        try:
            history = await self.journal.history(delivery.request_id)
        except Exception as error:
            logger.warning("could not read the journal before stage %s: %s", self.stage_name, type(error).__name__)
            return None
        for transition in history:
            if transition.outcome_status is not None and transition.at >= began:
                return Ended(transition.stage, transition.outcome_status, transition.at)
        return None

    async def _carry_out(
        self,
        decision: Decision,
        delivery: Delivery,
        body: bytes,
        message: envelope.ReceivedMessage,
        actions: MessageActions,
        *,
        reporting_a_crash: bool = False,
    ) -> Decision:
        carrier = self.carrier
        # Dated before the send: the next stage can run, and journal, before this one has settled.
        decided_at = self.dependencies.clock()
        try:
            effect = await carrier.send(carrier.effect_of(decision, delivery, body))
        except Exception as error:
            if not reporting_a_crash:
                # Nothing is settled yet: the same as a crash of the stage.
                return await self._after_crash(error, delivery, message, actions)
            # Cannot even report (Service Bus unreachable): abandon, and Service Bus dead-letters it.
            logger.exception("could not report the failure of stage %s", self.stage_name)
            await self._settle(actions.abandon, message)
            raise
        log = logger.info
        if effect.dead_letter_reason is not None:
            # ERROR is for what needs a person on our side; a request refused for what it asked is a WARNING.
            log = logger.warning if REASONS[effect.dead_letter_reason].refuses_the_request else logger.error
        log("%s attempt %d %s: %s", self.stage_name, effect.delivery.attempt, effect.transition, effect.cause)
        if effect.settlement == "complete":
            await self._settle(actions.complete, message)
        else:
            await self._settle(
                actions.deadletter,
                message,
                deadletter_reason=effect.dead_letter_reason,
                deadletter_error_description=effect.dead_letter_description,
            )
        await carrier.record_effect(effect, decided_at)
        return effect.decision

    async def _after_crash(
        self, error: Exception, delivery: Delivery, message: envelope.ReceivedMessage, actions: MessageActions
    ) -> Decision:
        if not self._is_last_delivery(message):
            # A bug or a passing outage: let Service Bus redeliver the message.
            if isinstance(error, ServiceBusError):  # Service Bus itself away (a broker restart): ordinary trouble
                logger.warning(
                    "stage %s could not reach Service Bus (%s); abandoning for redelivery",
                    self.stage_name,
                    (str(error).splitlines() or [type(error).__name__])[0],
                )
            else:
                logger.exception("stage %s failed unexpectedly; abandoning for redelivery", self.stage_name)
            await self._settle(actions.abandon, message)
            await self.carrier.record(delivery, TransitionKind.CRASHED, f"{type(error).__name__}; redelivery follows")
            raise error
        # Service Bus would dead-letter silently after this delivery: do it ourselves, with an outcome.
        logger.exception("stage %s failed on its last delivery; dead-lettering with an outcome", self.stage_name)
        give_up = dead_letter(
            Turn(self.stage_name, delivery, self.dependencies.clock()),
            Progress(),
            DeadLetterReason.PROCESSING_FAILED,
            f"Stage {self.stage_name} failed unexpectedly on each of its {self.max_delivery_count} deliveries "
            f"(last error: {type(error).__name__}). Find the request id in the logs, fix the cause, then "
            "replay it from this dead-letter queue (onboard dlq replay).",
        )
        return await self._carry_out(give_up, delivery, b"", message, actions, reporting_a_crash=True)

    def _is_last_delivery(self, message: envelope.ReceivedMessage) -> bool:
        # The Functions host counts this delivery too (1 on the first: the .NET SDK adds 1 to AMQP's
        # count), and extension 1.0.0b2 hands over None. Unknown is never "last": guessing early would
        # dead-letter a request that could still succeed; Service Bus dead-letters after the last anyway.
        count = message.delivery_count
        return count is not None and count >= self.max_delivery_count

    async def _settle(self, settle: Callable[..., None], message: envelope.ReceivedMessage, **arguments: Any) -> bool:
        return await settle_off_loop(settle, message, who=str(self.stage_name), **arguments)


async def refuse(actions: MessageActions, message: Any, *, who: str, description: str) -> None:
    """A message that is not the queue's kind of work: kept in the dead-letter queue for an operator
    (InvalidRequest, `description` saying why without quoting it), never guessed at."""
    await settle_off_loop(
        actions.deadletter,
        message,
        who=who,
        deadletter_reason="InvalidRequest",
        deadletter_error_description=description,
    )


async def settle_off_loop(settle: Callable[..., None], message: Any, *, who: str, **arguments: Any) -> bool:
    """Settle off the event loop (the host's calls block); a failure is logged, never a crash."""
    try:
        await asyncio.to_thread(settle, message, **arguments)
    except Exception as error:
        logger.warning(
            "%s could not settle the message (%s): Service Bus delivers it again once its lock expires; "
            "the work is idempotent, so nothing is done twice",
            who,
            type(error).__name__,
        )
        return False
    return True


def without_reply_to(
    decision: DeadLetter | Finish, delivery: Delivery, queue: str
) -> tuple[DeadLetter | Finish, Delivery]:
    """The same decision for the outcome queue, with a warning that ReplyTo `queue` does not exist."""
    outcome = decision.outcome
    warning = f"ReplyTo queue {queue!r} does not exist, so the outcome went to the outcome queue."
    return replace(decision, outcome=with_warning(outcome, warning)), replace(delivery, reply_to=None)
