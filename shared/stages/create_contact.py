"""Stage 1: validate the request, resolve the group, apply policy, make sure the recipient exists.

Seeds, step 1: "create a mail contact for the external user" (distribution and mail-enabled
security groups, through Exchange); a Microsoft 365 group takes the person as a B2B guest
instead (through Graph). Safe to run twice: an existing contact or guest for the same address is
reused, never duplicated, and never someone else's object.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from pydantic import ValidationError

from shared.contracts import (
    NAME_PART_MAX,
    GroupRef,
    OnboardingRequest,
    Recipient,
    RecipientKind,
    ResolvedGroup,
    StageName,
)
from shared.decisions import DeadLetterReason, Decision, Delivery, PassOn
from shared.directory.errors import AddressInUseError, DirectoryError, NameInUseError
from shared.directory.ports import DirectoryGroup, GroupKind
from shared.stages.common import Progress, StageDependencies, describe_validation_error

STAGE = StageName.CREATE_CONTACT
_FIX_HINT_KINDS = "distribution groups, mail-enabled security groups and Microsoft 365 groups"


async def create_contact(body: bytes, delivery: Delivery, deps: StageDependencies) -> Decision:
    progress = Progress(STAGE, delivery, deps, accepted_at=deps.clock())
    try:
        request = OnboardingRequest.model_validate_json(body)
    except ValidationError as error:
        return progress.dead_letter(
            DeadLetterReason.INVALID_REQUEST,
            f"The request is not a valid contract v1 OnboardingRequest: {describe_validation_error(error)}",
        )
    if request.request_id and request.request_id != delivery.request_id:
        # The body's id wins over the envelope's; later messages carry it in their envelope.
        progress.delivery = delivery = _with_request_id(delivery, request.request_id)
    progress.request = request.model_copy(update={"request_id": delivery.request_id})

    denied = _policy_refusal_before_lookup(request, deps)
    if denied:
        return progress.dead_letter(DeadLetterReason.POLICY_DENIED, denied)
    try:
        return await _create(request, progress)
    except DirectoryError as error:
        return progress.on_directory_error(error)


async def _create(request: OnboardingRequest, progress: Progress) -> Decision:
    deps = progress.deps
    group = await _find_group(request.group, deps)
    if group is None:
        return progress.dead_letter(
            DeadLetterReason.GROUP_NOT_FOUND,
            f"No group {request.group.describe()} exists in the tenant. Check the group's address or id.",
        )
    unsupported = _unsupported_kind(group)
    if unsupported:
        return progress.dead_letter(DeadLetterReason.UNSUPPORTED_GROUP_KIND, unsupported)
    assert group.mail is not None  # every supported kind is mail-enabled
    progress.group = ResolvedGroup(id=group.id, display_name=group.display_name, mail=group.mail, kind=group.kind)
    if not deps.policy.group_allowed(request.source_system, group.id, group.mail):
        return progress.dead_letter(
            DeadLetterReason.POLICY_DENIED,
            f"Source system {request.source_system!r} may not add members to group {group.display_name!r}. "
            "Add the group to its allowed_groups in the policy file if this is intended.",
        )
    address = str(request.external_email)
    if address.rsplit("@", 1)[1].lower() in await deps.exchange.get_accepted_domains():
        return progress.dead_letter(
            DeadLetterReason.ADDRESS_IN_USE_INTERNALLY,
            "The address is in one of the tenant's own accepted domains: internal people are added "
            "as users, not as external contacts.",
        )
    if group.kind is GroupKind.MICROSOFT_365:
        return await _ensure_guest(request, address, progress)
    return await _ensure_mail_contact(request, address, progress)


async def _find_group(ref: GroupRef, deps: StageDependencies) -> DirectoryGroup | None:
    if ref.object_id is not None:
        return await deps.graph.get_group(str(ref.object_id))
    return await deps.graph.find_group_by_mail(str(ref.smtp_address))


def _unsupported_kind(group: DirectoryGroup) -> str | None:
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


def _policy_refusal_before_lookup(request: OnboardingRequest, deps: StageDependencies) -> str | None:
    if not deps.policy.source_known(request.source_system):
        return f"Source system {request.source_system!r} is not listed in the policy: every source is denied unless listed."
    if deps.policy.domain_blocked(str(request.external_email)):
        return "The external address's domain is blocked by policy (blocked_domains)."
    return None


async def _ensure_mail_contact(request: OnboardingRequest, address: str, progress: Progress) -> Decision:
    exchange = progress.deps.exchange
    existing = await exchange.find_mail_contact(address)
    if existing is not None:
        return _pass_on(progress, Recipient(kind=RecipientKind.MAIL_CONTACT, id=existing.identity, created=False))
    for name in contact_name_candidates(request.display_name, address):
        try:
            contact = await exchange.new_mail_contact(
                name=name,
                external_email_address=address,
                display_name=request.display_name,
                first_name=request.first_name,
                last_name=request.last_name,
            )
        except NameInUseError:
            continue  # someone else's object has this name: try our next, address-derived name
        except AddressInUseError:
            return await _address_taken(address, progress)
        return _pass_on(progress, Recipient(kind=RecipientKind.MAIL_CONTACT, id=contact.identity, created=True))
    return progress.dead_letter(
        DeadLetterReason.DIRECTORY_REJECTED,
        "Every candidate contact name is already used by other objects. Rename or remove the clashing "
        "contacts, or send a more specific display name.",
    )


async def _address_taken(address: str, progress: Progress) -> Decision:
    """The address exists already: ours from an earlier run (not yet visible), or someone else's."""
    exchange = progress.deps.exchange
    contact = await exchange.find_mail_contact(address)
    if contact is not None:
        return _pass_on(progress, Recipient(kind=RecipientKind.MAIL_CONTACT, id=contact.identity, created=False))
    user = await progress.deps.graph.find_user_by_mail(address)
    if user is not None and user.user_type == "Member":
        return progress.dead_letter(
            DeadLetterReason.ADDRESS_IN_USE_INTERNALLY,
            "The address belongs to an internal user of this tenant; add that user to the group instead.",
        )
    return progress.retry_or_give_up("the address is in use but its mail contact is not visible yet")


async def _ensure_guest(request: OnboardingRequest, address: str, progress: Progress) -> Decision:
    graph = progress.deps.graph
    user = await graph.find_user_by_mail(address)
    if user is not None and user.user_type == "Member":
        return progress.dead_letter(
            DeadLetterReason.ADDRESS_IN_USE_INTERNALLY,
            "The address belongs to an internal user of this tenant; add that user to the group instead.",
        )
    if user is not None:
        return _pass_on(progress, Recipient(kind=RecipientKind.GUEST_USER, id=user.id, created=False))
    # An invitation for an address that is already a guest returns that guest: safe to repeat.
    guest = await graph.invite_guest(address, request.display_name, progress.deps.guest_redirect_url)
    return _pass_on(progress, Recipient(kind=RecipientKind.GUEST_USER, id=guest.id, created=True))


def _pass_on(progress: Progress, recipient: Recipient) -> PassOn:
    progress.recipient = recipient
    return PassOn(StageName.ADD_MEMBER, progress.stage_message())


def contact_name_candidates(display_name: str, address: str) -> list[str]:
    """Exchange Names are unique and at most 64 characters: the display name, then address-derived variants.

    The suffix comes from the address, so a rerun for the same person picks the same name.
    """
    digest = hashlib.sha256(address.lower().encode()).hexdigest()
    candidates = [display_name[:NAME_PART_MAX].strip()]
    for width in (6, 12):
        suffix = f" ({digest[:width]})"
        candidates.append(display_name[: NAME_PART_MAX - len(suffix)].strip() + suffix)
    return candidates


def _with_request_id(delivery: Delivery, request_id: str) -> Delivery:
    # The correlation id defaults to the request id, so it follows the body's id unless upstream set one.
    defaulted = delivery.correlation_id == delivery.request_id
    return replace(delivery, request_id=request_id, correlation_id=request_id if defaulted else delivery.correlation_id)
