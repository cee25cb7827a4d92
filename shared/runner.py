"""Runs one stage for one received message and carries out its decision.

Order matters: the next message (or the scheduled retry, or the outcome) is sent first and the
received message is settled second. A crash in between leaves a duplicate, which the stable
MessageIds and idempotent stages make harmless; the other order could lose the request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from azure.servicebus import ServiceBusReceivedMessage

from shared import envelope
from shared.contracts import OutcomeStatus, StageName
from shared.decisions import DeadLetter, DeadLetterReason, Decision, Delivery, Finish, PassOn, RetryLater
from shared.journal import Journal, Transition, TransitionKind
from shared.journal.model import CAUSE_MAX
from shared.logs import request_context
from shared.outbox import ServiceBusOutbox
from shared.stages import StageDependencies
from shared.stages.common import Progress

logger = logging.getLogger("onboarding.runner")

Stage = Callable[[bytes, Delivery, StageDependencies], Awaitable[Decision]]


class MessageActions(Protocol):
    """The settlement half of azurefunctions-extensions-bindings-servicebus' ServiceBusMessageActions."""

    def complete(self, message: Any) -> None: ...

    def abandon(self, message: Any) -> None: ...

    def deadletter(
        self,
        message: Any,
        deadletter_reason: str | None = None,
        deadletter_error_description: str | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class StageRunner:
    stage_name: StageName
    stage: Stage
    dependencies: StageDependencies
    outbox: ServiceBusOutbox
    outcome_queue: str
    max_delivery_count: int = 10  # the queues' MaxDeliveryCount (infra); the last delivery reports a crash
    journal: Journal | None = None

    async def run(self, message: ServiceBusReceivedMessage, actions: MessageActions) -> Decision:
        now = self.dependencies.clock()
        try:
            delivery = envelope.read_delivery(message, now)
            body = envelope.read_body(message)
        except envelope.EnvelopeError as error:
            return await self._refuse_envelope(message, actions, str(error))
        with request_context(delivery.request_id, delivery.correlation_id):
            try:
                decision = await self.stage(body, delivery, self.dependencies)
                await self._carry_out(decision, body, delivery, message, actions)
            except Exception as error:
                if not self._is_last_delivery(message):
                    # A bug or a passing outage: let Service Bus redeliver the message.
                    logger.exception("stage %s failed unexpectedly; abandoning for redelivery", self.stage_name)
                    actions.abandon(message)
                    await self._journal(delivery, TransitionKind.CRASHED, f"{type(error).__name__}; redelivery follows")
                    raise
                decision = await self._give_up_after_crashes(error, delivery, message, actions)
            await self._journal_decision(delivery, decision)
            return decision

    def _is_last_delivery(self, message: ServiceBusReceivedMessage) -> bool:
        # The SDK hands over AMQP's delivery-count: earlier deliveries, 0 on the first.
        return (message.delivery_count or 0) + 1 >= self.max_delivery_count

    async def _give_up_after_crashes(
        self, error: Exception, delivery: Delivery, message: ServiceBusReceivedMessage, actions: MessageActions
    ) -> Decision:
        """Service Bus would dead-letter silently after this delivery: do it ourselves, with an outcome."""
        logger.exception("stage %s failed on its last delivery; dead-lettering with an outcome", self.stage_name)
        decision = Progress(self.stage_name, delivery, self.dependencies).dead_letter(
            DeadLetterReason.PROCESSING_FAILED,
            f"Stage {self.stage_name} failed unexpectedly on each of its {self.max_delivery_count} deliveries "
            f"(last error: {type(error).__name__}). Find the request id in the logs, fix the cause, then "
            "resubmit the message from this dead-letter queue.",
        )
        try:
            await self._carry_out(decision, b"", delivery, message, actions)
        except Exception:
            # Cannot even report (Service Bus unreachable): abandon, and Service Bus dead-letters it.
            logger.exception("could not report the failure of stage %s", self.stage_name)
            actions.abandon(message)
            raise
        return decision

    async def _carry_out(
        self,
        decision: Decision,
        body: bytes,
        delivery: Delivery,
        message: ServiceBusReceivedMessage,
        actions: MessageActions,
    ) -> None:
        stage_name, outbox = self.stage_name, self.outbox
        match decision:
            case PassOn(next_stage, stage_message, delay):
                outgoing = envelope.next_stage_message(next_stage, stage_message, delivery)
                if delay is None:
                    await outbox.send(next_stage, outgoing)
                    logger.info("%s done (attempt %d); passed on to %s", stage_name, delivery.attempt, next_stage)
                else:
                    await outbox.schedule(next_stage, outgoing, self.dependencies.clock() + delay)
                    logger.info("%s will run %s again in %.1f s", stage_name, next_stage, delay.total_seconds())
                actions.complete(message)
            case RetryLater(delay, cause):
                at = self.dependencies.clock() + delay
                await outbox.schedule(stage_name, envelope.retry_message(stage_name, body, delivery), at)
                logger.warning(
                    "%s attempt %d will retry in %.1f s: %s", stage_name, delivery.attempt, delay.total_seconds(), cause
                )
                actions.complete(message)
            case DeadLetter(reason, description, outcome):
                await outbox.send(self._outcome_queue(delivery), envelope.outcome_message(outcome, delivery))
                logger.error("%s dead-lettered %s: %s", stage_name, reason, description)
                actions.deadletter(message, deadletter_reason=reason, deadletter_error_description=description)
            case Finish(outcome):
                await outbox.send(self._outcome_queue(delivery), envelope.outcome_message(outcome, delivery))
                logger.info("%s finished: %s", stage_name, outcome.status)
                actions.complete(message)

    def _outcome_queue(self, delivery: Delivery) -> str:
        return delivery.reply_to or self.outcome_queue

    async def _refuse_envelope(
        self, message: ServiceBusReceivedMessage, actions: MessageActions, problem: str
    ) -> Decision:
        """An envelope we cannot even read: keep the message intact in the DLQ and say why."""
        message_id = message.message_id or f"seq-{message.sequence_number}"
        now = self.dependencies.clock()
        delivery = Delivery(message_id, message_id, message.correlation_id or message_id, message.reply_to, 1, now)
        decision = Progress(self.stage_name, delivery, self.dependencies).dead_letter(
            DeadLetterReason.INVALID_REQUEST, f"The message envelope is unusable: {problem}."
        )
        with request_context(delivery.request_id, delivery.correlation_id):
            await self._carry_out(decision, b"", delivery, message, actions)
            await self._journal_decision(delivery, decision)
        return decision

    async def _journal_decision(self, delivery: Delivery, decision: Decision) -> None:
        match decision:
            case PassOn(next_stage, _, None):
                await self._journal(delivery, TransitionKind.PASSED_ON, f"to {next_stage}")
            case PassOn(next_stage, _, timedelta() as delay):
                when = f"in {delay.total_seconds():.1f} s"
                cause = f"check again {when}" if next_stage == self.stage_name else f"to {next_stage} {when}"
                await self._journal(delivery, TransitionKind.PASSED_ON, cause)
            case RetryLater(delay, cause):
                seconds = delay.total_seconds()
                await self._journal(delivery, TransitionKind.RETRY_SCHEDULED, f"in {seconds:.1f} s: {cause}")
            case DeadLetter(reason, description, outcome):
                await self._journal(delivery, TransitionKind.DEAD_LETTERED, f"{reason}: {description}", outcome.status)
            case Finish(outcome):
                summary = "; ".join((outcome.status, *outcome.warnings))
                await self._journal(delivery, TransitionKind.FINISHED, summary, outcome.status)

    async def _journal(
        self, delivery: Delivery, kind: TransitionKind, cause: str | None, outcome_status: OutcomeStatus | None = None
    ) -> None:
        """Written once the decision is carried out (next message sent, settlement asked for): the
        journal is a record, never a reason to redo work, so a journal that is down costs a log line."""
        if self.journal is None:
            return
        try:
            transition = Transition(
                request_id=delivery.request_id,
                stage=self.stage_name,
                decision=kind,
                attempt=delivery.attempt,
                cause=None if cause is None else cause[:CAUSE_MAX],
                outcome_status=outcome_status,
                at=self.dependencies.clock(),
            )
            await self.journal.record(transition)
        except Exception as error:
            logger.warning("could not journal %s of stage %s: %s", kind, self.stage_name, type(error).__name__)
