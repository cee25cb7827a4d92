"""Stage 3: prove mail can flow both ways, fix what policy allows, and report.

Seeds, last paragraphs: if the external person cannot mail the group, the group probably only
accepts mail from authenticated (internal) senders, and external mail bounces with
550 5.7.133. Where policy allows, turn RequireSenderAuthenticationEnabled off and record the
change; otherwise finish with a warning that names the fix.
"""

from __future__ import annotations

from shared.contracts import Recipient, ResolvedGroup, StageName
from shared.decisions import DeadLetter, Decision, Delivery
from shared.directory.errors import DirectoryError
from shared.directory.ports import GroupKind, SenderRestrictions
from shared.stages.common import Progress, StageDependencies, resume_from

STAGE = StageName.VERIFY_DELIVERY


async def verify_delivery(body: bytes, delivery: Delivery, deps: StageDependencies) -> Decision:
    resumed = resume_from(STAGE, body, delivery, deps)
    if isinstance(resumed, DeadLetter):
        return resumed
    progress, message = resumed
    try:
        if not await _is_member(message.group, message.recipient, str(message.request.external_email), deps):
            return progress.retry_or_give_up("the new membership is not visible yet (replication lag)")
        if message.request.allow_external_senders:
            await _make_group_accept_external_mail(message.group, message.recipient, progress)
    except DirectoryError as error:
        return progress.on_directory_error(error, not_found_is_lag=True)
    return progress.finish(f"{message.recipient.kind} is a member of {message.group.display_name!r}.")


async def _is_member(group: ResolvedGroup, recipient: Recipient, address: str, deps: StageDependencies) -> bool:
    if group.kind is GroupKind.MICROSOFT_365:
        return recipient.id in await deps.graph.list_group_member_ids(group.id)
    members = await deps.exchange.list_distribution_group_members(group.mail)
    return any(
        member.identity == recipient.id or (member.email_address or "").lower() == address.lower() for member in members
    )


async def _make_group_accept_external_mail(group: ResolvedGroup, recipient: Recipient, progress: Progress) -> None:
    exchange = progress.deps.exchange
    unified = group.kind is GroupKind.MICROSOFT_365
    restrictions = await exchange.get_sender_restrictions(group.mail, unified=unified)
    if restrictions.require_sender_authentication:
        if progress.deps.policy.sender_authentication_fix_allowed_for(group.id, group.mail):
            await exchange.set_require_sender_authentication(group.mail, False, unified=unified)
            progress.changes.append(
                f"RequireSenderAuthenticationEnabled on {group.display_name!r} changed from True to False "
                "so external senders are accepted (5.7.133 fix)."
            )
        else:
            cmdlet = "Set-UnifiedGroup" if unified else "Set-DistributionGroup"
            progress.warnings.append(
                f"Group {group.display_name!r} accepts mail only from authenticated senders: mail from this "
                "person bounces with 550 5.7.133. Fix, if intended: "
                f"{cmdlet} -Identity '{group.mail}' -RequireSenderAuthenticationEnabled $false "
                "(or allow the fix for this group in the policy)."
            )
    progress.warnings.extend(_other_restrictions(restrictions, recipient))


def _other_restrictions(restrictions: SenderRestrictions, recipient: Recipient) -> list[str]:
    found: list[str] = []
    ours = recipient.id.lower()
    if restrictions.accept_messages_only_from and ours not in {
        s.lower() for s in restrictions.accept_messages_only_from
    }:
        found.append(
            "The group accepts mail only from listed senders (AcceptMessagesOnlyFromSendersOrMembers) "
            "and this person is not listed: add them there if they must be able to send."
        )
    if ours in {s.lower() for s in restrictions.reject_messages_from}:
        found.append("This person is on the group's RejectMessagesFromSendersOrMembers list.")
    if restrictions.moderation_enabled:
        found.append("The group is moderated: this person's mail waits for a moderator's approval.")
    return found
