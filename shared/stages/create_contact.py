from __future__ import annotations

import hashlib

from shared.contracts import (
    NAME_PART_MAX,
    DeadLetterReason,
    GroupKind,
    GroupRef,
    OnboardingRequest,
    Recipient,
    RecipientKind,
    ResolvedGroup,
    StageName,
)
from shared.decisions import DeadLetter, Decision, Finish, PassOn
from shared.directory.errors import AddressInUseError, DirectoryError, NameInUseError
from shared.directory.ports import DirectoryGroup, DirectoryUser, GraphDirectory, MailContact, is_member
from shared.envelope import Delivery
from shared.failures import decide_on_directory_error, retry_or_give_up
from shared.outcomes import dead_letter, planned
from shared.progress import Progress, Turn
from shared.queues import next_stage
from shared.stages.admission import group_refusal, policy_refusal_before_lookup, unsupported_kind
from shared.stages.dependencies import StageDependencies

STAGE = StageName.CREATE_CONTACT
_INTERNAL_USER = "The address belongs to an internal user of this tenant; add that user to the group instead."
_HELD_BY_MAIL_CONTACT = (
    "A mail contact of this tenant holds the address (one made for distribution groups). Entra would invite a "
    "guest for it without proxy addresses, so the guest would have no email address in Exchange and the "
    "Microsoft 365 group's mail would not reach them. Remove the contact (Remove-MailContact -Identity {identity}; "
    "it leaves its distribution groups), replay, then onboard the person into those distribution groups again "
    "(the guest joins them itself); or onboard them into a distribution group instead."
)


async def create_contact(request: OnboardingRequest, delivery: Delivery, deps: StageDependencies) -> Decision:
    """`delivery.request_id` is already the request's identity (the body's request_id, else the MessageId)."""
    turn = Turn(STAGE, delivery, deps.clock())
    progress = Progress(
        request=request.model_copy(update={"request_id": delivery.request_id}),
        accepted_at=turn.now,
        warnings=list(delivery.warnings),  # what intake noticed, e.g. an unusable ReplyTo
    )
    decision = await _decide(request, turn, progress, deps)
    if request.dry_run and isinstance(decision, DeadLetter):
        return Finish(decision.outcome)  # the Failed outcome, and nothing left in the dead-letter queue
    return decision


async def _decide(request: OnboardingRequest, turn: Turn, progress: Progress, deps: StageDependencies) -> Decision:
    denied = policy_refusal_before_lookup(request, deps) or deps.policy.intake_refusal(
        request.source_system, turn.delivery.queue or STAGE
    )
    if denied:
        return dead_letter(turn, progress, DeadLetterReason.POLICY_DENIED, denied)
    try:
        return await _create(request, _ContactCreation(turn, progress, deps))
    except DirectoryError as error:
        return decide_on_directory_error(turn, progress, deps.retry, error)


class _ContactCreation:
    """This delivery's turn, what it has gathered and its dependencies, so helpers take one argument."""

    def __init__(self, turn: Turn, progress: Progress, deps: StageDependencies) -> None:
        self.turn, self.progress, self.deps = turn, progress, deps

    def dead_letter(self, reason: DeadLetterReason, description: str) -> Decision:
        return dead_letter(self.turn, self.progress, reason, description)

    def pass_on(self, recipient: Recipient) -> PassOn:
        self.progress.recipient = recipient
        return PassOn(next_stage(STAGE), self.progress.stage_message())


async def _create(request: OnboardingRequest, run: _ContactCreation) -> Decision:
    deps = run.deps
    group = await find_group(request.group, deps.graph)
    if group is None:
        return run.dead_letter(
            DeadLetterReason.GROUP_NOT_FOUND,
            f"No group {request.group.describe()} exists in the tenant. Check the group's address or id.",
        )
    unsupported = unsupported_kind(group)
    if unsupported:
        return run.dead_letter(DeadLetterReason.UNSUPPORTED_GROUP_KIND, unsupported)
    assert group.mail is not None  # every supported kind is mail-enabled
    run.progress.group = ResolvedGroup(id=group.id, display_name=group.display_name, mail=group.mail, kind=group.kind)
    if refusal := group_refusal(request, group, deps):
        return run.dead_letter(DeadLetterReason.POLICY_DENIED, refusal)
    address = str(request.external_email)
    if address.rsplit("@", 1)[1].lower() in await deps.exchange.get_accepted_domains():
        return run.dead_letter(
            DeadLetterReason.ADDRESS_IN_USE_INTERNALLY,
            "The address is in one of the tenant's own accepted domains: internal people are added "
            "as users, not as external contacts.",
        )
    if request.dry_run:
        return await _plan(request, address, run.progress.group, run)
    if group.kind is GroupKind.MICROSOFT_365:
        return await _ensure_guest(request, address, run)
    return await _ensure_mail_contact(request, address, run)


async def _plan(request: OnboardingRequest, address: str, group: ResolvedGroup, run: _ContactCreation) -> Decision:
    """A dry run: what a real run would change, found with reads only; the request ends here."""
    deps, changes, name = run.deps, run.progress.changes, request.display_name
    if group.kind is GroupKind.MICROSOFT_365:
        user = await deps.graph.find_user_for_invitation(address)
    else:
        user = await deps.graph.find_user_by_mail(address)
    if user is not None and user.user_type == "Member":
        return run.dead_letter(DeadLetterReason.ADDRESS_IN_USE_INTERNALLY, _INTERNAL_USER)
    contact = await deps.exchange.find_mail_contact(address)
    if contact is not None and group.kind is GroupKind.MICROSOFT_365:
        return _held_by_mail_contact(contact, run)
    if contact is not None:
        run.progress.recipient = _contact_recipient(contact, created=False)
    elif user is not None:
        run.progress.recipient = _guest_recipient(user, created=False)
    else:
        changes.append(
            f"Invite {name} as a guest"
            if group.kind is GroupKind.MICROSOFT_365
            else f"Create a mail contact for {name}"
        )
    known = run.progress.recipient
    if (
        known is None
        or known.directory_object_id is None
        or not await is_member(deps.graph, group.id, known.kind, known.directory_object_id)
    ):
        changes.append(f"Add {name} to {group.display_name}")
    if request.allow_external_senders:
        changes.append(f"Let {name} mail {group.display_name}, if it accepts only internal senders now")
    plan = "; ".join(changes)
    return planned(run.turn, run.progress, f"Dry run, nothing was changed. A real run would: {plan}.")


async def find_group(ref: GroupRef, graph: GraphDirectory) -> DirectoryGroup | None:
    """The target group by object id or by address (also read by the self-check, for the policy's groups)."""
    if ref.object_id is not None:
        return await graph.get_group(str(ref.object_id))
    return await graph.find_group_by_mail(str(ref.smtp_address))


async def _ensure_mail_contact(request: OnboardingRequest, address: str, run: _ContactCreation) -> Decision:
    exchange = run.deps.exchange
    existing = await exchange.find_mail_contact(address)
    if existing is not None:
        return run.pass_on(_contact_recipient(existing, created=False))
    # Entra first: it knows a new guest before Exchange does, and Exchange gives a contact the address of a guest
    # it has not heard of yet, which takes the address away from the guest (docs/microsoft-365-facts.md §9).
    if (held := await _held_by_user(address, run)) is not None:
        return held
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
            return await _address_taken(address, run)
        return run.pass_on(_contact_recipient(contact, created=True))
    return run.dead_letter(
        DeadLetterReason.DIRECTORY_REJECTED,
        "Every candidate contact name is already used by other objects. Rename or remove the clashing "
        "contacts, or send a more specific display name.",
    )


async def _address_taken(address: str, run: _ContactCreation) -> Decision:
    """The address exists already: ours from an earlier run (not yet visible), or someone else's."""
    contact = await run.deps.exchange.find_mail_contact(address)
    if contact is not None:
        return run.pass_on(_contact_recipient(contact, created=False))
    if (held := await _held_by_user(address, run)) is not None:
        return held  # a user Entra had not shown us a moment ago
    cause = "the address is in use but its mail contact is not visible yet"
    return retry_or_give_up(run.turn, run.progress, run.deps.retry, cause)


async def _held_by_user(address: str, run: _ContactCreation) -> Decision | None:
    """A user who holds the address, for a distribution or mail-enabled security group: an internal one is
    refused; a guest (a mail user to Exchange, so no contact can have its address) joins the group itself
    (Add-DistributionGroupMember takes any mail-enabled recipient). None when no user holds it."""
    user = await run.deps.graph.find_user_by_mail(address)
    if user is None:
        return None
    if user.user_type == "Member":
        return run.dead_letter(DeadLetterReason.ADDRESS_IN_USE_INTERNALLY, _INTERNAL_USER)
    return run.pass_on(_guest_recipient(user, created=False))


def _held_by_mail_contact(contact: MailContact, run: _ContactCreation) -> Decision:
    return run.dead_letter(
        DeadLetterReason.ADDRESS_HELD_BY_MAIL_CONTACT, _HELD_BY_MAIL_CONTACT.format(identity=contact.identity)
    )


async def _ensure_guest(request: OnboardingRequest, address: str, run: _ContactCreation) -> Decision:
    graph = run.deps.graph
    # Looked up as Entra matches an invitation (UPN, mail, proxy addresses, otherMails), not by mail alone.
    user = await graph.find_user_for_invitation(address)
    if user is not None and user.user_type == "Member":
        return run.dead_letter(
            DeadLetterReason.ADDRESS_IN_USE_INTERNALLY,
            _INTERNAL_USER,
        )
    # A contact's address makes a guest without an email address, whether it is invited now or was before.
    contact = await run.deps.exchange.find_mail_contact(address)
    if contact is not None:
        return _held_by_mail_contact(contact, run)
    if user is not None:
        return run.pass_on(_guest_recipient(user, created=False))
    # An invitation for an address that is already a guest returns that guest: safe to repeat.
    guest = await graph.invite_guest(address, request.display_name, run.deps.guest_redirect_url)
    if guest.user_type != "Guest":  # invitedUserType: an existing user of the tenant came back
        return run.dead_letter(DeadLetterReason.ADDRESS_IN_USE_INTERNALLY, _INTERNAL_USER)
    return run.pass_on(_guest_recipient(guest, created=True))


def _guest_recipient(user: DirectoryUser, *, created: bool) -> Recipient:
    return Recipient(kind=RecipientKind.GUEST_USER, id=user.id, created=created, directory_object_id=user.id)


def _contact_recipient(contact: MailContact, *, created: bool) -> Recipient:
    return Recipient(
        kind=RecipientKind.MAIL_CONTACT,
        id=contact.identity,
        created=created,
        directory_object_id=contact.external_directory_object_id,
    )


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
