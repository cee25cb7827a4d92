"""What every stage checks before it writes: a message on a queue is outside input, whoever sent it.

Anyone with send rights on a stage queue (the operator, a replay, a mistake, an attacker with a
leaked role) can put a stage message there, so add-member and verify-delivery take nothing in it
on trust (docs/security.md):
- the policy allows the source, the address's domain and the group, as it reads now (a policy
  changed while a request was in flight is honoured);
- the group is resolved afresh from the directory by its id, and the stage acts on what the
  directory says (its address and kind), never on the message's copy;
- the recipient is the person of this request: the directory's contact or guest for the request's
  address has the id the message names, and a guest is a guest, not an internal user.
Anything else ends PolicyDenied, with nothing changed; a recipient not visible yet is replication lag.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.contracts import (
    DeadLetterReason,
    GroupKind,
    GroupRef,
    OnboardingRequest,
    Recipient,
    RecipientKind,
    RequestAction,
    ResolvedGroup,
    StageMessage,
    StageName,
)
from shared.decisions import Decision
from shared.directory.errors import DirectoryError
from shared.directory.ports import DirectoryGroup, GraphDirectory
from shared.envelope import Delivery
from shared.failures import decide_on_directory_error, retry_or_give_up
from shared.outcomes import dead_letter
from shared.progress import Progress, Turn
from shared.stages.dependencies import StageDependencies

INTERNAL_USER = "The address belongs to an internal user of this tenant; add that user to the group instead."
_FIX_HINT_KINDS = "distribution groups, mail-enabled security groups and Microsoft 365 groups"


@dataclass(frozen=True)
class Admitted:
    """The message may be acted on, with the group as the directory describes it now."""

    message: StageMessage


@dataclass(frozen=True)
class Refused:
    reason: DeadLetterReason
    description: str


@dataclass(frozen=True)
class NotVisibleYet:
    """The recipient the message names is not found yet: replication lag until the retry budget ends."""

    cause: str


Admission = Admitted | Refused | NotVisibleYet


def policy_refusal_before_lookup(request: OnboardingRequest, deps: StageDependencies) -> str | None:
    """The policy's answer that needs no directory call: is the source listed, is the domain blocked."""
    if not deps.policy.source_known(request.source_system):
        return f"Source system {request.source_system!r} is not listed in the policy: every source is denied unless listed."
    if deps.policy.domain_blocked(str(request.external_email)):
        return "The external address's domain is blocked by policy (blocked_domains)."
    return None


def unsupported_kind(group: DirectoryGroup) -> str | None:
    """Why the pipeline refuses this group (UnsupportedGroupKind), or None when it onboards into it."""
    if group.is_dynamic:
        return (
            f"Group {group.display_name!r} has dynamic membership: its members come from a rule, so no "
            "one can be added to it. Target a group with assigned membership."
        )
    if group.kind is GroupKind.SECURITY or not group.mail:
        return (
            f"Group {group.display_name!r} is a security group without mail; external people can only "
            f"be onboarded into {_FIX_HINT_KINDS}."
        )
    return None


def group_refusal(request: OnboardingRequest, group: DirectoryGroup, deps: StageDependencies) -> str | None:
    """Whether the policy lets this source add members to this group, as the directory names it."""
    if deps.policy.group_allowed(request.source_system, group.id, group.mail):
        return None
    return (
        f"Source system {request.source_system!r} may not manage the members of group {group.display_name!r}. "
        "Add the group to its allowed_groups in the policy file if this is intended."
    )


async def find_group(ref: GroupRef, graph: GraphDirectory) -> DirectoryGroup | None:
    """The target group by object id or by address (also read by the self-check, for the policy's groups)."""
    if ref.object_id is not None:
        return await graph.get_group(str(ref.object_id))
    return await graph.find_group_by_mail(str(ref.smtp_address))


async def intake_group(request: OnboardingRequest, deps: StageDependencies) -> ResolvedGroup | Refused:
    """The request's group as intake resolves it for any action: found, of a kind the app manages, and
    allowed to the request's source by the policy."""
    group = await find_group(request.group, deps.graph)
    if group is None:
        return Refused(
            DeadLetterReason.GROUP_NOT_FOUND,
            f"No group {request.group.describe()} exists in the tenant. Check the group's address or id.",
        )
    if unsupported := unsupported_kind(group):
        return Refused(DeadLetterReason.UNSUPPORTED_GROUP_KIND, unsupported)
    assert group.mail is not None  # every supported kind is mail-enabled
    if refusal := group_refusal(request, group, deps):
        return Refused(DeadLetterReason.POLICY_DENIED, refusal)
    return ResolvedGroup(id=group.id, display_name=group.display_name, mail=group.mail, kind=group.kind)


async def admitted(
    stage: StageName, message: StageMessage, delivery: Delivery, deps: StageDependencies
) -> StageMessage | Decision:
    """The message to act on (group and recipient as the directory has them), or the stage's decision."""
    try:
        admission = await admit(message, deps)
    except DirectoryError as error:
        return decide_on_directory_error(
            Turn(stage, delivery, deps.clock()), Progress.of(message), deps.retry, error, not_found_is_lag=True
        )
    if isinstance(admission, Admitted):
        return admission.message
    turn, progress = Turn(stage, delivery, deps.clock()), Progress.of(message)
    if isinstance(admission, NotVisibleYet):
        return retry_or_give_up(turn, progress, deps.retry, admission.cause)
    return dead_letter(turn, progress, admission.reason, admission.description)


async def admit(message: StageMessage, deps: StageDependencies) -> Admission:
    """Check a later stage's message against the policy and the directory before it is acted on."""
    request = message.request
    if request.dry_run:
        return _refused("The message is a dry run: a dry run ends at create-contact and never reaches this stage.")
    if request.action is not RequestAction.ONBOARD:
        return _refused(
            f"The message carries an {request.action}: an {request.action} ends at create-contact and never "
            "reaches this stage."
        )
    if refusal := policy_refusal_before_lookup(request, deps):
        return _refused(refusal)
    group = await deps.graph.get_group(message.group.id)
    if group is None or group.mail is None or unsupported_kind(group):
        return _refused(
            f"The message names group id {message.group.id!r}, which is not a supported group in the directory "
            "(it may have been deleted or changed since the request was accepted)."
        )
    if group.kind is not message.group.kind:
        return _refused(f"The message says the group is a {message.group.kind} group; the directory says {group.kind}.")
    if refusal := group_refusal(request, group, deps):
        return _refused(refusal)
    current = ResolvedGroup(id=group.id, display_name=group.display_name, mail=group.mail, kind=group.kind)
    recipient = await _recipient_check(request, current, message.recipient, deps)
    if not isinstance(recipient, Recipient):
        return recipient
    return Admitted(message.model_copy(update={"group": current, "recipient": recipient}))


async def _recipient_check(
    request: OnboardingRequest, group: ResolvedGroup, recipient: Recipient, deps: StageDependencies
) -> Recipient | Refused | NotVisibleYet:
    """The recipient as the directory has it for the request's address, if it is the one the message names."""
    address = str(request.external_email)
    if recipient.kind is RecipientKind.MAIL_CONTACT:
        if group.kind is GroupKind.MICROSOFT_365:
            return _refused("A mail contact cannot join a Microsoft 365 group; the message names one.")
        contact = await deps.exchange.find_mail_contact(address)
        if contact is None:
            return NotVisibleYet("the request's mail contact is not visible yet (replication lag)")
        entra_id = contact.external_directory_object_id
        if recipient.id.lower() != contact.identity.lower() or not _same(recipient.directory_object_id, entra_id):
            return _refused("The message names a recipient that is not the mail contact of the request's address.")
        return recipient.model_copy(update={"directory_object_id": entra_id})
    user = await deps.graph.find_user_for_invitation(address)  # as create-contact met it: otherMails and UPN too
    if user is None:
        return NotVisibleYet("the request's guest is not visible yet (replication lag)")
    if user.user_type != "Guest":
        return _refused("The request's address belongs to an internal user of this tenant, not to a guest.")
    if recipient.id.lower() != user.id.lower() or not _same(recipient.directory_object_id, user.id):
        return _refused("The message names a recipient that is not the guest of the request's address.")
    return recipient.model_copy(update={"directory_object_id": user.id})


def _same(named: str | None, found: str | None) -> bool:
    """An id the message names agrees with the directory's (either may be absent: older messages, lag)."""
    return named is None or found is None or named.lower() == found.lower()


def _refused(description: str) -> Refused:
    return Refused(DeadLetterReason.POLICY_DENIED, f"Refused before any change: {description}")
