"""Whether a group's mail reaches a person and the person's mail reaches the group: the checks and fix texts
verify-delivery makes once and the drift watch (shared/drift/checks.py) repeats, kept in one place.

Fix commands name the recipient by `who`: verify-delivery names the person by address (its outcome carries
it anyway); the drift watch names a mail contact by its Exchange Guid, so its findings carry no address.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.contracts import DriftKind, GroupKind, Recipient, ResolvedGroup
from shared.directory.ports import ExchangeDirectory, GroupMember, SenderRestrictions, Warnings
from shared.powershell import quoted


@dataclass(frozen=True)
class SenderProblem:
    """One way the group refuses or holds this person's mail, other than sender authentication."""

    kind: DriftKind
    warning: str  # verify-delivery's warning (the remedy in words)
    fix: str  # the administrator's command


def set_group_cmdlet(group: ResolvedGroup) -> str:
    return "Set-UnifiedGroup" if group.kind is GroupKind.MICROSOFT_365 else "Set-DistributionGroup"


def is_recipient(member: GroupMember, recipient: Recipient, address: str) -> bool:
    """Exchange lists a member by Guid, ExternalDirectoryObjectId and address; any of them identifies ours."""
    ours = {recipient.id.lower(), (recipient.directory_object_id or "").lower()} - {""}
    return bool(
        {member.identity.lower(), (member.external_directory_object_id or "").lower()} & ours
        or (member.email_address or "").lower() == address.lower()
    )


async def accept_unauthenticated_senders(exchange: ExchangeDirectory, group: ResolvedGroup) -> list[str]:
    """The 5.7.133 fix: RequireSenderAuthenticationEnabled off; Exchange's warnings, worded for an outcome."""
    unified = group.kind is GroupKind.MICROSOFT_365
    warnings: Warnings = await exchange.set_require_sender_authentication(
        group.mail, False, unified=unified, security_group=group.kind is GroupKind.MAIL_ENABLED_SECURITY
    )
    return [f"{set_group_cmdlet(group)} warned: {warning}" for warning in warnings]


def sender_authentication_fix(group: ResolvedGroup) -> str:
    return f"{set_group_cmdlet(group)} -Identity {quoted(group.mail)} -RequireSenderAuthenticationEnabled $false"


def sender_authentication_warning(group: ResolvedGroup) -> str:
    return (
        f"Group {group.display_name!r} accepts mail only from authenticated senders: mail from this "
        f"person bounces with 550 5.7.133. Fix, if intended: {sender_authentication_fix(group)} "
        "(or allow the fix for this group in the policy)."
    )


def sender_authentication_repaired(group: ResolvedGroup) -> str:
    return (
        f"RequireSenderAuthenticationEnabled on {group.display_name!r} changed from True to False "
        "so external senders are accepted (5.7.133 fix)."
    )


def subscribe_fix(group: ResolvedGroup, who: str) -> str:
    return f"Add-UnifiedGroupLinks -Identity {quoted(group.mail)} -LinkType Subscribers -Links {quoted(who)}"


def not_subscribed(group: ResolvedGroup) -> str:
    return (
        f"The guest is a member of {group.display_name!r} but not subscribed to it, so the group's "
        "conversations do not reach them by mail."
    )


def not_subscribed_warning(group: ResolvedGroup, who: str) -> str:
    return (
        f"{not_subscribed(group)} The app cannot subscribe anyone (Add-UnifiedGroupLinks "
        f"refuses app-only callers); an Exchange administrator can: {subscribe_fix(group, who)}"
    )


def sender_problems(
    restrictions: SenderRestrictions, group: ResolvedGroup, recipient: Recipient, address: str, who: str
) -> list[SenderProblem]:
    """Sender lists come back as object GUIDs since May 2025 (earlier: names); match every form of ours."""
    found: list[SenderProblem] = []
    ours = {recipient.id.lower(), (recipient.directory_object_id or "").lower(), address.lower()} - {""}
    set_group = f"{set_group_cmdlet(group)} -Identity {quoted(group.mail)}"

    def listed(entries: tuple[str, ...]) -> bool:
        return any(entry.lower().removeprefix("smtp:") in ours for entry in entries)

    if restrictions.accept_messages_only_from and not listed(restrictions.accept_messages_only_from):
        found.append(
            SenderProblem(
                DriftKind.SENDERS_RESTRICTED,
                "The group accepts mail only from listed senders (AcceptMessagesOnlyFromSendersOrMembers) "
                "and this person is not listed: add them there if they must be able to send.",
                f"{set_group} -AcceptMessagesOnlyFromSendersOrMembers @{{Add={quoted(who)}}}",
            )
        )
    if listed(restrictions.reject_messages_from):
        found.append(
            SenderProblem(
                DriftKind.SENDER_REJECTED,
                "This person is on the group's RejectMessagesFromSendersOrMembers list.",
                f"{set_group} -RejectMessagesFromSendersOrMembers @{{Remove={quoted(who)}}}",
            )
        )
    if restrictions.moderation_enabled:
        everyone = f"{set_group} -ModerationEnabled $false"
        # Set-DistributionGroup can let one sender bypass moderation; Set-UnifiedGroup documents no such list.
        fix = (
            everyone
            if group.kind is GroupKind.MICROSOFT_365
            else f"{set_group} -BypassModerationFromSendersOrMembers @{{Add={quoted(who)}}} (or, for everyone: {everyone})"
        )
        found.append(
            SenderProblem(
                DriftKind.MODERATED, "The group is moderated: this person's mail waits for a moderator's approval.", fix
            )
        )
    return found
