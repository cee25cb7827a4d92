"""Stage 3: prove mail can flow both ways, fix what policy allows, and report.

Seeds, last paragraphs: if the external person cannot mail the group, the group probably only
accepts mail from authenticated (internal) senders, and external mail bounces with
550 5.7.133. Where policy allows, turn RequireSenderAuthenticationEnabled off and record the
change; otherwise finish with a warning that names the fix.

With a welcome sender configured, the stage then mails the person and re-runs itself on a
schedule (PassOn to itself, its own MessageIds) to read Get-MessageTraceV2 until the message is
Delivered, fails (DeliveryFailed), or the deadline passes (a warning). The membership and sender
checks are not repeated on those re-checks: their results travel in the message. Someone who was
already a member before this request (a re-run) gets no second welcome message.

A guest in a Microsoft 365 group gets the group's conversations by mail only as a subscriber.
Exchange subscribes guests when they are added, but an admin may have removed it, or the group
may not deliver to subscribers at all; the app cannot subscribe anyone itself (Add-UnifiedGroupLinks
refuses app-only callers), so the outcome warns and names the admin's command. Exchange learns of
a guest added through Graph only after a while: a guest this request added who is not a subscriber
yet is checked again later, within the retry budget, instead of being reported unsubscribed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from shared.contracts import (
    DeadLetterReason,
    GroupKind,
    Recipient,
    RecipientKind,
    ResolvedGroup,
    StageMessage,
    StageName,
    WelcomeCheck,
)
from shared.decisions import Decision, Finish, PassOn, RetryLater
from shared.directory.errors import DirectoryError
from shared.directory.ports import is_member
from shared.envelope import Delivery
from shared.failures import decide_on_directory_error, retry_or_give_up
from shared.mail_flow import (
    accept_unauthenticated_senders,
    is_recipient,
    not_subscribed_warning,
    sender_authentication_repaired,
    sender_authentication_warning,
    sender_problems,
)
from shared.outcomes import dead_letter, finish
from shared.powershell import quoted
from shared.progress import Progress, Turn
from shared.stages.admission import admitted
from shared.stages.dependencies import StageDependencies, WelcomeMail

STAGE = StageName.VERIFY_DELIVERY
WELCOME_TEXT = (
    "Hello {name},\n\nYou have been added to {group} ({group_mail}). You will receive its mail, and "
    "mail you send to {group_mail} reaches its members.\n"
)
UNDELIVERED = {"Failed", "FilteredAsSpam", "Quarantined"}
# Message trace may date a message a little before our clock did.
TRACE_SLACK = timedelta(minutes=5)


@dataclass(frozen=True)
class _Verification:
    turn: Turn
    progress: Progress
    message: StageMessage
    deps: StageDependencies


async def verify_delivery(message: StageMessage, delivery: Delivery, deps: StageDependencies) -> Decision:
    decision = await _verify(message, delivery, deps)
    if isinstance(decision, Finish) and deps.leases is not None:
        # The membership is proven: now its end, if it has one, is kept (docs/leases.md).
        decision = await deps.leases.finished(decision, message, delivery, deps.policy)
    if isinstance(decision, Finish) and deps.roster is not None:
        # ... and the drift watch re-checks it from now on (docs/drift.md).
        decision = await deps.roster.finished(decision, message, delivery)
    return decision


async def _verify(message: StageMessage, delivery: Delivery, deps: StageDependencies) -> Decision:
    checked = await admitted(STAGE, message, delivery, deps)
    if not isinstance(checked, StageMessage):
        return checked
    message = checked
    run = _Verification(Turn(STAGE, delivery, deps.clock()), Progress.of(message), message, deps)
    turn, progress = run.turn, run.progress
    member = _who_joined(message)
    try:
        if message.welcome is not None and deps.welcome is not None:
            return await _check_welcome(run, deps.welcome, member)
        if not await _is_member(run):
            cause = "the new membership is not visible yet (replication lag)"
            return retry_or_give_up(turn, progress, deps.retry, cause)
        guest_in_m365 = (
            message.group.kind is GroupKind.MICROSOFT_365 and message.recipient.kind is RecipientKind.GUEST_USER
        )
        if guest_in_m365 and (waiting := await _check_subscription(run)) is not None:
            return waiting
        if message.request.allow_external_senders:
            await _make_group_accept_external_mail(message.group, message.recipient, run)
        if deps.welcome is not None and message.newly_added:
            return await _send_welcome(run, deps.welcome)
    except DirectoryError as error:
        return decide_on_directory_error(turn, progress, deps.retry, error, not_found_is_lag=True)
    if deps.welcome is not None and not message.newly_added:
        member += " It was already a member before this request, so no second welcome message was sent."
    return finish(turn, progress, member)


def _who_joined(message: StageMessage) -> str:
    group, recipient = message.group, message.recipient
    if recipient.kind is RecipientKind.GUEST_USER and group.kind is not GroupKind.MICROSOFT_365:
        return (
            f"The existing guest user with this address is a member of {group.display_name!r}: a guest already "
            "held the address, so no mail contact was created."
        )
    return f"{recipient.kind} is a member of {group.display_name!r}."


async def _check_subscription(run: _Verification) -> RetryLater | None:
    """A re-check later while Exchange has not caught up with a guest this request added; else None."""
    group, recipient = run.message.group, run.message.recipient
    address = str(run.message.request.external_email)
    if await run.deps.exchange.is_unified_group_subscriber(group.mail, lambda m: is_recipient(m, recipient, address)):
        return None
    if run.message.newly_added:
        # Exchange subscribes a guest when it is added, but learns of Entra's changes later: not there yet.
        return _wait_for_exchange(run)
    run.progress.warnings.append(not_subscribed_warning(group, address))
    return None


def _wait_for_exchange(run: _Verification) -> RetryLater | None:
    """A re-check within the stage's retry budget; once it is spent, a warning that Exchange had not caught up."""
    delivery, group = run.turn.delivery, run.message.group
    delay = run.deps.retry.next_delay(
        attempt=delivery.attempt, first_attempt_at=delivery.first_attempt_at, now=run.turn.now, retry_after=None
    )
    if delay is not None:
        return RetryLater(delay, "Exchange does not list the new guest among the group's subscribers yet (sync lag)")
    run.progress.warnings.append(
        f"Exchange did not yet show the guest among the subscribers of {group.display_name!r} (it learns of "
        "Entra's changes later; guests are subscribed when added). Check later with "
        f"Get-UnifiedGroupLinks -Identity {quoted(group.mail)} -LinkType Subscribers; a guest still missing then "
        "does not get the group's conversations by mail until an Exchange administrator subscribes them."
    )
    return None


async def _send_welcome(run: _Verification, welcome: WelcomeMail) -> PassOn:
    """Send, then schedule the first trace check. A crash in between re-sends: at least once, not exactly."""
    message, group = run.message, run.message.group
    text = WELCOME_TEXT.format(name=message.request.display_name, group=group.display_name, group_mail=group.mail)
    subject = welcome.subject.replace("{group}", group.display_name)
    await run.deps.graph.send_mail(welcome.sender, str(message.request.external_email), subject, text)
    run.progress.welcome = WelcomeCheck(sent_at=run.deps.clock())
    return PassOn(STAGE, run.progress.stage_message(), welcome.check_interval)


async def _check_welcome(run: _Verification, welcome: WelcomeMail, member: str) -> Decision:
    message, progress, turn = run.message, run.progress, run.turn
    assert message.welcome is not None
    now = turn.now
    sent_at = message.welcome.sent_at
    address = str(message.request.external_email)
    trace = await run.deps.exchange.message_trace(welcome.sender, address, sent_at - TRACE_SLACK, now)
    statuses = {entry.status for entry in trace}
    if "Delivered" in statuses:
        return finish(turn, progress, f"{member} The welcome message was delivered (message trace).")
    if failed := sorted(statuses & UNDELIVERED):
        return dead_letter(
            turn,
            progress,
            DeadLetterReason.DELIVERY_FAILED,
            f"{member} But the welcome message was not delivered (message trace: {', '.join(failed)}), so mail "
            "to this person does not arrive. Check the address with the requester; correct it and resubmit, "
            "or remove the contact or guest.",
        )
    if now - sent_at >= welcome.deadline:
        seen = ", ".join(sorted(statuses)) or "no trace rows yet"
        progress.warnings.append(
            f"Delivery of the welcome message was not confirmed within {welcome.deadline} ({seen}); "
            "check Get-MessageTraceV2 for it later."
        )
        return finish(turn, progress, member)
    progress.welcome = message.welcome.model_copy(update={"checks": message.welcome.checks + 1})
    return PassOn(STAGE, progress.stage_message(), welcome.check_interval)


async def _is_member(run: _Verification) -> bool:
    """One call however large the group is (listing a 20,000-member group took 100+ pages), with the
    recipient's Entra object id as admission read it from the directory. False while Entra does not have
    the recipient: New-MailContact answers before Entra has the contact (an empty ExternalDirectoryObjectId),
    and an Exchange Guid is never sent to Graph in its place."""
    recipient = run.message.recipient
    if not recipient.directory_object_id:
        return False
    return await is_member(run.deps.graph, run.message.group.id, recipient.kind, recipient.directory_object_id)


async def _make_group_accept_external_mail(group: ResolvedGroup, recipient: Recipient, run: _Verification) -> None:
    exchange, progress = run.deps.exchange, run.progress
    restrictions = await exchange.get_sender_restrictions(group.mail, unified=group.kind is GroupKind.MICROSOFT_365)
    if restrictions.require_sender_authentication:
        if run.deps.policy.sender_authentication_fix_allowed_for(group.id, group.mail):
            progress.warnings.extend(await accept_unauthenticated_senders(exchange, group))
            progress.changes.append(sender_authentication_repaired(group))
        else:
            progress.warnings.append(sender_authentication_warning(group))
    address = str(run.message.request.external_email)
    progress.warnings.extend(
        problem.warning for problem in sender_problems(restrictions, group, recipient, address, who=address)
    )
