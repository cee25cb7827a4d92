"""Offboarding: the person stops being a member of the group, in the intake stage alone.

Every step is idempotent, so one stage does them all and a retry runs them again from the top:
the removal (Exchange's Remove-DistributionGroupMember for distribution and mail-enabled security
groups, Graph's DELETE members/{id}/$ref for Microsoft 365 groups; "not a member" is success),
then the clean-up. The recipient itself goes only when this app created it (its provenance stamp,
shared/provenance.py) and it is in no other group at all, managed by the app or not: a group the
app does not manage may rely on it. An adopted recipient is never deleted, nor is a guest (the app
holds no right to delete users). A later stage never sees an offboard: admission refuses one.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import provenance
from shared.contracts import (
    DeadLetterReason,
    GroupKind,
    OnboardingRequest,
    Recipient,
    RecipientKind,
    ResolvedGroup,
)
from shared.decisions import Decision
from shared.directory.errors import NotAMemberError, NotFoundError
from shared.directory.ports import MailContact, is_member
from shared.outcomes import dead_letter, finish, planned
from shared.progress import Progress, Turn
from shared.stages.admission import Refused, intake_group
from shared.stages.dependencies import StageDependencies

_INTERNAL = (
    "The address belongs to an internal user of this tenant: the app offboards only the external people it "
    "manages. Remove the user from the group directly."
)


@dataclass(frozen=True)
class _Found:
    recipient: Recipient
    member: str  # how Exchange's -Member names it: a contact's Guid, a guest's address
    contact: MailContact | None  # the mail contact, with its provenance stamp


async def offboard(request: OnboardingRequest, turn: Turn, progress: Progress, deps: StageDependencies) -> Decision:
    group = await intake_group(request, deps)
    if isinstance(group, Refused):
        return dead_letter(turn, progress, group.reason, group.description)
    progress.group = group
    found = await _recipient(str(request.external_email), group, deps)
    if isinstance(found, Refused):
        return dead_letter(turn, progress, found.reason, found.description)
    if found is None:
        nothing = f"No contact or guest has this address, so it is not a member of {group.display_name!r}"
        if request.dry_run:
            return planned(turn, progress, f"Dry run, nothing was changed. {nothing}: a real run would change nothing.")
        return finish(turn, progress, f"{nothing}: nothing to remove.")
    progress.recipient = found.recipient
    if request.dry_run:
        return planned(turn, progress, await _plan(found, group, deps, progress))
    was_member = await _remove_membership(found, group, deps)
    if was_member:
        progress.changes.append(f"Removed from {group.display_name}")
    kept = await _clean_up(found, group, deps, progress)
    membership = (
        f"{found.recipient.kind} is no longer a member of {group.display_name!r}."
        if was_member
        else f"{found.recipient.kind} was not a member of {group.display_name!r}: nothing to remove."
    )
    return finish(turn, progress, f"{membership} {kept}".strip())


async def _recipient(address: str, group: ResolvedGroup, deps: StageDependencies) -> _Found | Refused | None:
    """The person's recipient as onboarding would have used it: a mail contact for a distribution or
    mail-enabled security group (else a guest who held the address), a guest for a Microsoft 365 group."""
    if group.kind is not GroupKind.MICROSOFT_365:
        contact = await deps.exchange.find_mail_contact(address)
        if contact is not None:
            recipient = Recipient(
                kind=RecipientKind.MAIL_CONTACT,
                id=contact.identity,
                created=provenance.created_by(contact.provenance) is not None,
                directory_object_id=contact.external_directory_object_id,
            )
            return _Found(recipient, contact.identity, contact)
    user = await deps.graph.find_user_by_mail(address)
    if user is None:
        return None
    if user.user_type != "Guest":
        return Refused(DeadLetterReason.ADDRESS_IN_USE_INTERNALLY, _INTERNAL)
    recipient = Recipient(kind=RecipientKind.GUEST_USER, id=user.id, created=False, directory_object_id=user.id)
    return _Found(recipient, address, None)


async def _remove_membership(found: _Found, group: ResolvedGroup, deps: StageDependencies) -> bool:
    """Whether the recipient was a member (and is not any more)."""
    try:
        if group.kind is GroupKind.MICROSOFT_365:
            await deps.graph.remove_group_member(group.id, found.recipient.id)
        else:
            security_group = group.kind is GroupKind.MAIL_ENABLED_SECURITY
            await deps.exchange.remove_distribution_group_member(
                group.mail, found.member, security_group=security_group
            )
    except (NotAMemberError, NotFoundError):
        # Not a member (Graph answers a reference it cannot find with 404; Exchange with MemberNotFound,
        # or NotFound for a contact Entra does not have yet, which no group can hold).
        return False
    return True


async def _clean_up(found: _Found, group: ResolvedGroup, deps: StageDependencies, progress: Progress) -> str:
    """Delete the recipient when it is the app's own and in no other group; what was kept, and why."""
    contact = found.contact
    if contact is None:
        return "The guest account is kept: the app never deletes users."
    creator = provenance.created_by(contact.provenance)
    if creator is None:
        return "The mail contact is kept: it was there before this app (adopted), so the app never deletes it."
    others = await _other_groups(contact, group, deps)
    if others:
        return f"The mail contact is kept: it is still a member of {others} other group(s)."
    try:
        await deps.exchange.remove_mail_contact(contact.identity)
    except NotFoundError:
        return "The mail contact this app created is gone already."
    progress.changes.append(f"Deleted the mail contact this app created (request {creator})")
    return "The mail contact this app created was deleted: it is in no other group."


async def _other_groups(contact: MailContact, group: ResolvedGroup, deps: StageDependencies) -> int:
    """How many groups besides this one hold the contact; Graph may still list this one for a while."""
    if contact.external_directory_object_id is None:
        return 0  # Entra does not have the contact yet, so no group can hold it
    try:
        held = await deps.graph.contact_group_ids(contact.external_directory_object_id)
    except NotFoundError:
        return 0
    return len(held - {group.id.lower()})


async def _plan(found: _Found, group: ResolvedGroup, deps: StageDependencies, progress: Progress) -> str:
    """A dry run's answer, from reads only: what a real run would remove and delete."""
    recipient = found.recipient
    member = recipient.directory_object_id is not None and await is_member(
        deps.graph, group.id, recipient.kind, recipient.directory_object_id
    )
    if member:
        progress.changes.append(f"Remove from {group.display_name}")
    contact = found.contact
    deletes = (
        contact is not None
        and provenance.created_by(contact.provenance) is not None
        and await _other_groups(contact, group, deps) == 0
    )
    if deletes:
        progress.changes.append("Delete the mail contact this app created")
    plan = "; ".join(progress.changes) or "nothing: the recipient is not a member, and is kept"
    return f"Dry run, nothing was changed. A real run would: {plan}."
