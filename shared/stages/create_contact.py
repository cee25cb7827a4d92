from __future__ import annotations

import hashlib

from shared import provenance
from shared.contracts import (
    NAME_PART_MAX,
    DeadLetterReason,
    GroupKind,
    OnboardingRequest,
    Recipient,
    RecipientKind,
    RequestAction,
    ResolvedGroup,
    StageName,
)
from shared.decisions import DeadLetter, Decision, Finish, PassOn
from shared.directory.errors import AddressInUseError, DirectoryError, NameInUseError
from shared.directory.ports import DirectoryUser, MailContact, is_member
from shared.envelope import Delivery
from shared.failures import decide_on_directory_error, retry_or_give_up
from shared.leases import NO_LEASE_BOOK, end_refusal, requested_end
from shared.outcomes import dead_letter, planned
from shared.progress import Progress, Turn
from shared.queues import next_stage
from shared.stages.admission import (
    INTERNAL_USER,
    Refused,
    intake_group,
    policy_refusal_before_lookup,
)
from shared.stages.dependencies import StageDependencies
from shared.stages.offboard import offboard
from shared.stages.update import update

STAGE = StageName.CREATE_CONTACT
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
    if request.action is RequestAction.OFFBOARD and isinstance(decision, Finish):
        if deps.leases is not None:
            decision = await deps.leases.offboarded(decision, request)  # an early offboard ends the lease
        if deps.roster is not None:
            decision = await deps.roster.offboarded(decision, request)  # and the drift watch stops checking it
    if request.action is RequestAction.UPDATE and isinstance(decision, Finish) and deps.roster is not None:
        decision = await deps.roster.updated(decision, request)  # its drift events name the person anew
    return decision


async def _decide(request: OnboardingRequest, turn: Turn, progress: Progress, deps: StageDependencies) -> Decision:
    denied = policy_refusal_before_lookup(request, deps) or deps.policy.intake_refusal(
        request.source_system, turn.delivery.queue or STAGE
    )
    if denied:
        return dead_letter(turn, progress, DeadLetterReason.POLICY_DENIED, denied)
    if refusal := end_refusal(request, turn.now):
        return dead_letter(turn, progress, DeadLetterReason.INVALID_REQUEST, refusal)
    try:
        if request.action is RequestAction.OFFBOARD:
            return await offboard(request, turn, progress, deps)
        if request.action is RequestAction.UPDATE:
            return await update(request, turn, progress, deps)
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
    group = await intake_group(request, deps)
    if isinstance(group, Refused):
        return run.dead_letter(group.reason, group.description)
    run.progress.group = group
    ends_at = requested_end(request, group, run.turn.now, deps.policy)
    if ends_at is not None and deps.leases is None:
        return run.dead_letter(DeadLetterReason.POLICY_DENIED, NO_LEASE_BOOK)
    address = str(request.external_email)
    if address.rsplit("@", 1)[1].lower() in await deps.exchange.get_accepted_domains():
        return run.dead_letter(
            DeadLetterReason.ADDRESS_IN_USE_INTERNALLY,
            "The address is in one of the tenant's own accepted domains: internal people are added "
            "as users, not as external contacts.",
        )
    if request.dry_run:
        return await _plan(request, address, group, run)
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
        return run.dead_letter(DeadLetterReason.ADDRESS_IN_USE_INTERNALLY, INTERNAL_USER)
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
    if (ends_at := requested_end(request, group, run.turn.now, deps.policy)) is not None:
        changes.append(f"End the membership at {ends_at:%Y-%m-%d %H:%M} UTC (a lease)")
    plan = "; ".join(changes)
    return planned(run.turn, run.progress, f"Dry run, nothing was changed. A real run would: {plan}.")


async def _ensure_mail_contact(request: OnboardingRequest, address: str, run: _ContactCreation) -> Decision:
    exchange = run.deps.exchange
    existing = await exchange.find_mail_contact(address)
    if existing is not None:
        return run.pass_on(_found_contact(existing, run))
    # Entra first: it knows a new guest before Exchange does, and Exchange gives a contact the address of a guest
    # it has not heard of yet, which takes the address away from the guest (docs/microsoft-365-facts.md §9).
    if (held := await _held_by_user(address, run)) is not None:
        return held
    for name in contact_name_candidates(request.required_display_name, address):
        try:
            contact = await exchange.new_mail_contact(
                name=name,
                external_email_address=address,
                display_name=request.required_display_name,
                first_name=request.first_name,
                last_name=request.last_name,
            )
        except NameInUseError:
            continue  # someone else's object has this name: try our next, address-derived name
        except AddressInUseError:
            return await _address_taken(address, run)
        # Stamped before anything else: a contact the app created is one it may delete when offboarding.
        await exchange.stamp_mail_contact(contact.identity, provenance.stamp(run.turn.delivery.request_id))
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
        return run.pass_on(_found_contact(contact, run))
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
        return run.dead_letter(DeadLetterReason.ADDRESS_IN_USE_INTERNALLY, INTERNAL_USER)
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
            INTERNAL_USER,
        )
    # A contact's address makes a guest without an email address, whether it is invited now or was before.
    contact = await run.deps.exchange.find_mail_contact(address)
    if contact is not None:
        return _held_by_mail_contact(contact, run)
    if user is not None:
        return run.pass_on(_guest_recipient(user, created=False))
    # An invitation for an address that is already a guest returns that guest: safe to repeat.
    group = run.progress.group
    assert group is not None  # resolved before any recipient is made
    sponsors = request.sponsors or run.deps.policy.group_rules(group.id, group.mail).sponsors
    guest = await graph.invite_guest(
        address, request.required_display_name, run.deps.guest_redirect_url, tuple(str(s) for s in sponsors)
    )
    if guest.user_type != "Guest":  # invitedUserType: an existing user of the tenant came back
        return run.dead_letter(DeadLetterReason.ADDRESS_IN_USE_INTERNALLY, INTERNAL_USER)
    return run.pass_on(_guest_recipient(guest, created=True))


def _guest_recipient(user: DirectoryUser, *, created: bool) -> Recipient:
    return Recipient(kind=RecipientKind.GUEST_USER, id=user.id, created=created, directory_object_id=user.id)


def _found_contact(contact: MailContact, run: _ContactCreation) -> Recipient:
    """A contact that exists already: created by an earlier run of this request (its stamp says so), else
    adopted: the app makes it a member, and never deletes it."""
    created = provenance.created_by(contact.provenance) == run.turn.delivery.request_id
    return _contact_recipient(contact, created=created)


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
