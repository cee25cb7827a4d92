"""The drift watch's checks: one group's members re-verified as verify-delivery verified them, without the
welcome mail (docs/drift.md, "What each finding means and what to do").

Reads are shared by the group's members: Graph's group (it still exists, and its address now), its sender
settings, its member list while reading it costs no more pages than one call per person would, and a
Microsoft 365 group's subscribers. A person costs calls of their own only where no shared read answered:
someone missing from the list (removed, or deleted?), a contact whose member row lacks its fields, a guest
in a distribution group (its accountEnabled is Graph's), or everyone of a group too large to list for them.

A person's NotFound is a finding; throttling and other directory errors raise, and the caller's message
is delivered again. The one repair is the policy's 5.7.133 fix, made once per group however many people
it concerns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.contracts import DriftFinding, DriftKind, GroupKind, RecipientKind, ResolvedGroup
from shared.directory.errors import NotFoundError
from shared.directory.ports import ExchangeDirectory, GraphDirectory, GroupMember, SenderRestrictions
from shared.drift.model import Membership
from shared.mail_flow import (
    accept_unauthenticated_senders,
    is_recipient,
    not_subscribed,
    sender_authentication_fix,
    sender_authentication_warning,
    sender_problems,
    subscribe_fix,
)
from shared.policy import OnboardingPolicy
from shared.powershell import quoted
from shared.provenance import CONTACT_ATTRIBUTE, created_by, stamp
from shared.stages.dependencies import StageDependencies

RESUBMIT = "Submit the person's onboarding request again: the pipeline adds what is missing and verifies it."


@dataclass(frozen=True)
class _Seen:
    """One person as the directory shows them now."""

    exists: bool
    member: bool = False
    hidden: bool = False  # a mail contact's HiddenFromAddressListsEnabled
    provenance: str | None = None  # a mail contact's stamp
    enabled: bool | None = None  # a guest's accountEnabled
    subscribed: bool = True  # a guest of a Microsoft 365 group: among its subscribers


MISSING = _Seen(exists=False)


@dataclass(frozen=True)
class DirectoryGroupChecker:
    """A GroupChecker over the directory ports, with the policy that decides the 5.7.133 repair."""

    graph: GraphDirectory
    exchange: ExchangeDirectory
    policy: OnboardingPolicy

    async def __call__(
        self, group: ResolvedGroup, members: Sequence[Membership]
    ) -> dict[str, tuple[DriftFinding, ...]]:
        if not members:
            return {}
        found = await self.graph.get_group(group.id)
        if found is None or not found.mail:
            gone = _group_missing(group, deleted=found is None)
            return {member.key: (gone,) for member in members}
        group = group.model_copy(update={"mail": found.mail, "display_name": found.display_name or group.display_name})
        unified = group.kind is GroupKind.MICROSOFT_365
        restrictions = await self.exchange.get_sender_restrictions(group.mail, unified=unified)
        seen = await (self._guests_of(group, members) if unified else self._contacts_of(group, members))
        senders = {m.key for m in members if m.allow_external_senders and seen[m.key].exists}
        authentication = await self._sender_authentication(group, restrictions) if senders else None
        return {
            m.key: tuple(_findings(group, m, seen[m.key], restrictions if m.key in senders else None))
            + ((authentication,) if authentication is not None and m.key in senders else ())
            for m in members
        }

    async def _contacts_of(self, group: ResolvedGroup, members: Sequence[Membership]) -> dict[str, _Seen]:
        """A distribution or mail-enabled security group: Exchange's member rows carry a contact's fields."""
        # Listing pays while it costs no more pages (of 1,000) than one call per person would.
        listing = await self.exchange.distribution_group_members_within(group.mail, max_pages=len(members))
        rows = _by_every_name(listing.members)
        seen: dict[str, _Seen] = {}
        for member in members:
            row = _row_of(rows, member)
            if row is None:
                seen[member.key] = await self._not_listed(group, member, listing_complete=listing.complete)
            elif member.recipient.kind is RecipientKind.MAIL_CONTACT:
                seen[member.key] = await self._listed_contact(member, row)
            else:  # a guest the onboarding adopted: Exchange lists it, Graph knows whether it may sign in
                enabled = await self.graph.user_account_enabled(_entra_id(member))
                seen[member.key] = MISSING if enabled is None else _Seen(exists=True, member=True, enabled=enabled)
        return seen

    async def _listed_contact(self, member: Membership, row: GroupMember) -> _Seen:
        if row.contact is not None:
            return _Seen(True, True, row.contact.hidden_from_address_lists, row.contact.provenance)
        contact = await self.exchange.get_mail_contact(member.recipient.id)
        if contact is None:
            return MISSING
        return _Seen(True, True, contact.hidden_from_address_lists, contact.provenance)

    async def _guests_of(self, group: ResolvedGroup, members: Sequence[Membership]) -> dict[str, _Seen]:
        """A Microsoft 365 group: Entra's member list carries each guest's accountEnabled; Exchange's
        subscriber list says who gets its conversations by mail."""
        listing = await self.graph.group_members_within(group.id, max_pages=len(members))
        subscribers = _by_every_name(await self.exchange.list_unified_group_subscribers(group.mail))
        seen: dict[str, _Seen] = {}
        for member in members:
            object_id = _entra_id(member).lower()
            if object_id in listing.account_enabled:
                enabled = listing.account_enabled[object_id]
                if enabled is None and member.recipient.kind is RecipientKind.GUEST_USER:
                    enabled = await self.graph.user_account_enabled(object_id)  # Graph withheld it on the list
                person = _Seen(exists=True, member=True, enabled=enabled)
            else:
                person = await self._not_listed(group, member, listing_complete=listing.complete)
            seen[member.key] = _subscribed(person, _row_of(subscribers, member) is not None)
        return seen

    async def _not_listed(self, group: ResolvedGroup, member: Membership, *, listing_complete: bool) -> _Seen:
        """Someone the shared list did not show: removed from the group, deleted, or beyond the pages read."""
        if member.recipient.kind is RecipientKind.MAIL_CONTACT:
            contact = await self.exchange.get_mail_contact(member.recipient.id)
            if contact is None:
                return MISSING
            entra_id = contact.external_directory_object_id or member.recipient.directory_object_id
            is_member = not listing_complete and entra_id is not None and await self._contact_in(group, entra_id)
            return _Seen(True, is_member, contact.hidden_from_address_lists, contact.provenance)
        object_id = _entra_id(member)
        enabled = await self.graph.user_account_enabled(object_id)
        if enabled is None:
            return MISSING
        is_member = not listing_complete and await self.graph.is_group_member(group.id, object_id)
        return _Seen(exists=True, member=is_member, enabled=enabled)

    async def _contact_in(self, group: ResolvedGroup, entra_id: str) -> bool:
        try:
            return await self.graph.is_contact_member(group.id, entra_id)
        except NotFoundError:  # Exchange has the contact, Graph does not (yet): not a member Graph can show
            return False

    async def _sender_authentication(
        self, group: ResolvedGroup, restrictions: SenderRestrictions
    ) -> DriftFinding | None:
        """RequireSenderAuthenticationEnabled back on: repaired once for the group where the policy allows."""
        if not restrictions.require_sender_authentication:
            return None
        fix = sender_authentication_fix(group)
        if not self.policy.sender_authentication_fix_allowed_for(group.id, group.mail):
            return DriftFinding(
                kind=DriftKind.SENDER_AUTHENTICATION_REQUIRED,
                description=sender_authentication_warning(group),
                fix=f"{fix} (or allow the fix for this group in the policy)",
            )
        warnings = await accept_unauthenticated_senders(self.exchange, group)
        description = (
            f"Group {group.display_name!r} had been set to accept mail only from authenticated senders again "
            "(550 5.7.133 for external senders); the watch turned RequireSenderAuthenticationEnabled off, "
            "as the policy allows for this group."
        )
        return DriftFinding(
            kind=DriftKind.SENDER_AUTHENTICATION_REQUIRED,
            description=" ".join([description, *warnings])[:2000],
            fix=f"Nothing to do. To stop it recurring, find who turns it back on (the admin audit log: {fix} undoes "
            "theirs).",
            repaired=True,
        )


def group_checker(dependencies: StageDependencies) -> DirectoryGroupChecker:
    """The app's checker: the stages' own directory clients (their throttle gates) and policy."""
    return DirectoryGroupChecker(dependencies.graph, dependencies.exchange, dependencies.policy)


def _entra_id(member: Membership) -> str:
    """A guest's id is its Entra object id; a contact's Entra id is directory_object_id."""
    return member.recipient.directory_object_id or member.recipient.id


def _by_every_name(rows: Sequence[GroupMember]) -> dict[str, GroupMember]:
    """Rows by Guid, Entra id and address, lower-case: one look-up per person, however large the group."""
    index: dict[str, GroupMember] = {}
    for row in rows:
        for name in (row.identity, row.external_directory_object_id, row.email_address):
            if name:
                index.setdefault(name.lower(), row)
    return index


def _row_of(rows: dict[str, GroupMember], member: Membership) -> GroupMember | None:
    names = (member.recipient.id, member.recipient.directory_object_id, member.external_email)
    for name in names:
        row = rows.get(name.lower()) if name else None
        if row is not None and is_recipient(row, member.recipient, member.external_email):
            return row
    return None


def _subscribed(person: _Seen, listed: bool) -> _Seen:
    return _Seen(person.exists, person.member, person.hidden, person.provenance, person.enabled, listed)


def _findings(
    group: ResolvedGroup, member: Membership, seen: _Seen, restrictions: SenderRestrictions | None
) -> list[DriftFinding]:
    """What is wrong with one person; `restrictions` only when the onboarding let them mail the group."""
    recipient = member.recipient
    contact = recipient.kind is RecipientKind.MAIL_CONTACT
    if not seen.exists:
        what = "mail contact" if contact else "guest user"
        return [
            DriftFinding(
                kind=DriftKind.RECIPIENT_MISSING,
                description=f"The person's {what} no longer exists, so {group.display_name!r} cannot reach them.",
                fix=RESUBMIT,
            )
        ]
    # Exchange names a contact by its Guid; a guest's mail user only by its address (no Exchange Guid is kept).
    who = recipient.id if contact else member.external_email
    found: list[DriftFinding] = []
    if not seen.member:
        found.append(
            DriftFinding(
                kind=DriftKind.NOT_A_MEMBER,
                description=f"The person is no longer a member of {group.display_name!r}.",
                fix=f"{RESUBMIT} Or: Add-DistributionGroupMember -Identity {quoted(group.mail)} -Member {quoted(who)}"
                + (" -BypassSecurityGroupManagerCheck" if group.kind is GroupKind.MAIL_ENABLED_SECURITY else "")
                if contact
                else RESUBMIT,
            )
        )
    if contact and seen.hidden:
        found.append(
            DriftFinding(
                kind=DriftKind.RECIPIENT_HIDDEN,
                description="The person's mail contact is hidden from address lists: people in the tenant no "
                "longer find them in the address book.",
                fix=f"Set-MailContact -Identity {quoted(who)} -HiddenFromAddressListsEnabled $false",
            )
        )
    if contact and recipient.created and created_by(seen.provenance) is None:
        found.append(
            DriftFinding(
                kind=DriftKind.RECIPIENT_NOT_OURS,
                description=f"The mail contact the app created no longer carries the app's stamp in "
                f"{CONTACT_ATTRIBUTE}: an offboard would keep it, as one the app did not create.",
                fix=f"If it is still the app's: Set-MailContact -Identity {quoted(who)} -{CONTACT_ATTRIBUTE} "
                f"{quoted(stamp(member.request_id))}",
            )
        )
    if not contact and seen.enabled is False:
        found.append(
            DriftFinding(
                kind=DriftKind.GUEST_DISABLED,
                description="The person's guest account is blocked from signing in (accountEnabled false), by "
                "an administrator, an access review or a guest lifecycle policy.",
                fix=f"If the block is not intended: Update-MgUser -UserId {quoted(recipient.id)} -AccountEnabled:$true",
            )
        )
    if group.kind is GroupKind.MICROSOFT_365 and not contact and seen.member and not seen.subscribed:
        found.append(
            DriftFinding(
                kind=DriftKind.NOT_SUBSCRIBED,
                description=not_subscribed(group),
                fix=subscribe_fix(group, who),
            )
        )
    if restrictions is not None:
        found.extend(
            DriftFinding(kind=problem.kind, description=problem.warning, fix=problem.fix)
            for problem in sender_problems(restrictions, group, recipient, member.external_email, who)
        )
    return found


def _group_missing(group: ResolvedGroup, *, deleted: bool) -> DriftFinding:
    what = "was deleted" if deleted else "is no longer mail-enabled"
    return DriftFinding(
        kind=DriftKind.GROUP_MISSING,
        description=f"The group {group.display_name!r} {what}: its members get none of its mail.",
        fix="Restore the group if that was a mistake (a deleted Microsoft 365 group can be restored for 30 days: "
        "Entra admin center, Groups, Deleted groups), then submit the onboarding request again; otherwise offboard "
        "the person from it (onboard offboard).",
    )
