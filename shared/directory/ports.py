"""The two directory faces the stages talk to, as small interfaces.

Graph cannot create mail contacts nor change distribution-group membership, so those calls go
through Exchange Online. Stages depend only on these protocols; the adapters (graph.py,
exchange.py) and the tests' fakes implement them. Every method raises a DirectoryError subclass
(errors.py) on failure, never an SDK or HTTP exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from shared.contracts import GroupKind, RecipientKind

# `@adminapi.warnings` that came with a successful Exchange change, for the outcome.
Warnings = tuple[str, ...]


@dataclass(frozen=True)
class DirectoryGroup:
    id: str
    display_name: str
    mail: str | None
    kind: GroupKind
    is_dynamic: bool


@dataclass(frozen=True)
class DirectoryUser:
    id: str
    mail: str | None
    user_type: Literal["Member", "Guest"]


@dataclass(frozen=True)
class MailContact:
    """An Exchange mail contact. `identity` is what Exchange accepts as -Identity / -Member (its Guid)."""

    identity: str
    name: str
    external_email_address: str  # bare address, without the "SMTP:" prefix
    external_directory_object_id: str | None  # the Entra object id; None until Entra has the contact
    provenance: str | None = None  # the app's stamp (shared/provenance.py) when the app created it
    hidden_from_address_lists: bool = False  # HiddenFromAddressListsEnabled


@dataclass(frozen=True)
class ContactDetails:
    """What a member row tells of a mail contact, when it carries the fields (the drift watch's shared read)."""

    hidden_from_address_lists: bool
    provenance: str | None


@dataclass(frozen=True)
class GroupMember:
    """A member as Exchange lists it: enough to match our contact by identity or address."""

    identity: str
    external_directory_object_id: str | None
    email_address: str | None
    contact: ContactDetails | None = None  # a mail contact's row with HiddenFromAddressListsEnabled and the stamp


@dataclass(frozen=True)
class ExchangeMembers:
    """A distribution group's members as far as the pages read went; `complete`: every page was read."""

    members: tuple[GroupMember, ...]
    complete: bool


@dataclass(frozen=True)
class EntraMembers:
    """A group's direct members in Entra as far as the pages read went: each object id (lower-case) with a
    user's accountEnabled (None for other kinds, or when Graph withheld it); `complete`: every page was read."""

    account_enabled: Mapping[str, bool | None]
    complete: bool


@dataclass(frozen=True)
class SenderRestrictions:
    """Who may mail a group (Get-DistributionGroup / Get-UnifiedGroup fields)."""

    require_sender_authentication: bool
    accept_messages_only_from: tuple[str, ...]
    reject_messages_from: tuple[str, ...]
    moderation_enabled: bool


@dataclass(frozen=True)
class TraceEntry:
    """One Get-MessageTraceV2 row: what happened to a message for one recipient."""

    message_id: str
    recipient: str
    status: str  # Delivered, Failed, Pending, GettingStatus, Expanded, FilteredAsSpam, Quarantined, None
    received: datetime


class GraphDirectory(Protocol):
    async def get_group(self, group_id: str) -> DirectoryGroup | None: ...

    async def find_group_by_mail(self, address: str) -> DirectoryGroup | None:
        """The group with this address as its primary or any secondary SMTP address."""
        ...

    async def find_user_by_mail(self, address: str) -> DirectoryUser | None:
        """The user, member or guest, with this address as its primary or any secondary SMTP address."""
        ...

    async def find_user_for_invitation(self, address: str) -> DirectoryUser | None:
        """The user an invitation for this address meets in Entra: by user principal name, mail, any SMTP
        address or otherMails. A Member among them wins."""
        ...

    async def invite_guest(
        self, address: str, display_name: str, redirect_url: str, sponsors: tuple[str, ...] = ()
    ) -> DirectoryUser:
        """POST /invitations without an invitation mail, naming `sponsors` (user or group object ids) as the
        invitation's invitedUserSponsors when there are any; an existing user is returned as is, its user_type
        read from the answer's invitedUserType. Raises AddressHeldInternallyError, InvitationRefusedError."""
        ...

    async def add_group_member(self, group_id: str, object_id: str) -> None:
        """POST /groups/{id}/members/$ref. Raises AlreadyExistsError when already a member, GuestsNotAllowedError
        when the group does not accept guests."""
        ...

    async def remove_group_member(self, group_id: str, object_id: str) -> None:
        """DELETE /groups/{id}/members/{id}/$ref. Raises NotFoundError when the object is not a member."""
        ...

    async def list_group_member_ids(self, group_id: str) -> frozenset[str]:
        """Every member's object id, following @odata.nextLink."""
        ...

    async def contact_group_ids(self, contact_id: str) -> frozenset[str]:
        """The groups an org contact is a direct member of: GET /contacts/{id}/memberOf (few: a contact
        is in few groups). Raises NotFoundError when the contact is not (yet) visible to Graph."""
        ...

    async def group_members_within(self, group_id: str, max_pages: int) -> EntraMembers:
        """GET /groups/{id}/members?$select=id,accountEnabled&$top=999, at most `max_pages` pages: one read
        for many people of the group, cheaper than one check each while the group is not much larger."""
        ...

    async def user_account_enabled(self, user_id: str) -> bool | None:
        """GET /users/{id}?$select=id,accountEnabled: whether the user may sign in; None when there is no such user."""
        ...

    async def is_group_member(self, group_id: str, object_id: str) -> bool:
        """For a user (a guest), one call whatever the group's size: POST /directoryObjects/{id}/checkMemberGroups.

        Any group kind in Entra (Microsoft 365, distribution, mail-enabled security); transitive.
        Raises NotFoundError when the object is not (yet) visible to Graph.
        """
        ...

    async def is_contact_member(self, group_id: str, contact_id: str) -> bool:
        """For an org contact: GET /contacts/{id}/memberOf (a contact is in few groups: one page).

        Raises NotFoundError when the contact is not (yet) visible to Graph.
        """
        ...

    async def send_mail(self, sender: str, recipient: str, subject: str, text: str) -> None:
        """POST /users/{sender}/sendMail (202); the message is accepted, not yet delivered."""
        ...


class ExchangeDirectory(Protocol):
    async def get_accepted_domains(self) -> frozenset[str]:
        """The tenant's own domains, lower-case."""
        ...

    async def find_mail_contact(self, address: str) -> MailContact | None:
        """The mail contact whose external address is `address` (never one that only has it as its name)."""
        ...

    async def get_mail_contact(self, identity: str) -> MailContact | None:
        """Get-MailContact -Identity <its Guid>: the contact as it is now; None when it is gone."""
        ...

    async def new_mail_contact(
        self,
        *,
        name: str,
        external_email_address: str,
        display_name: str,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> MailContact:
        """New-MailContact. Raises NameInUseError or AddressInUseError on a clash."""
        ...

    async def stamp_mail_contact(self, identity: str, value: str) -> None:
        """Set-MailContact -CustomAttributeN: the app's provenance stamp (shared/provenance.py)."""
        ...

    async def set_contact_names(
        self, identity: str, *, display_name: str, first_name: str | None, last_name: str | None
    ) -> None:
        """Set-Contact -DisplayName, and -FirstName / -LastName when given (Set-MailContact has neither)."""
        ...

    async def remove_mail_contact(self, identity: str) -> None:
        """Remove-MailContact. Raises NotFoundError when it is gone already."""
        ...

    async def remove_distribution_group_member(
        self, group: str, member: str, *, security_group: bool = False
    ) -> Warnings:
        """Remove-DistributionGroupMember, with the manager check as for adding. Raises NotAMemberError when
        the recipient is not a member."""
        ...

    async def add_distribution_group_member(self, group: str, member: str, *, security_group: bool = False) -> Warnings:
        """Add-DistributionGroupMember, bypassing the group-manager check where Exchange demands it.

        Raises AlreadyExistsError when already a member; PermissionDeniedError when the app may not
        bypass the manager check (it lacks "Security Group Creation and Membership").
        """
        ...

    async def list_distribution_group_members(self, group: str) -> list[GroupMember]: ...

    async def distribution_group_members_within(self, group: str, max_pages: int) -> ExchangeMembers:
        """Get-DistributionGroupMember, at most `max_pages` pages of 1,000 (see group_members_within)."""
        ...

    async def list_unified_group_subscribers(self, group: str) -> list[GroupMember]:
        """Get-UnifiedGroupLinks -LinkType Subscribers: who receives a Microsoft 365 group's mail."""
        ...

    async def is_unified_group_subscriber(self, group: str, is_them: Callable[[GroupMember], bool]) -> bool:
        """Whether a subscriber `is_them`, from a Get-UnifiedGroupLinks read begun after this call (the cmdlet
        has no filter: the read lists the whole group, so a caching directory shares it between checks)."""
        ...

    async def get_sender_restrictions(self, group: str, *, unified: bool) -> SenderRestrictions:
        """Get-UnifiedGroup when `unified`, else Get-DistributionGroup."""
        ...

    async def set_require_sender_authentication(
        self, group: str, enabled: bool, *, unified: bool, security_group: bool = False
    ) -> Warnings:
        """Set-UnifiedGroup / Set-DistributionGroup -RequireSenderAuthenticationEnabled (manager check as above)."""
        ...

    async def message_trace(
        self, sender: str, recipient: str | None, start: datetime, end: datetime
    ) -> list[TraceEntry]:
        """Get-MessageTraceV2 for one sender and one recipient (None: every recipient, up to TRACE_MAX_ROWS rows),
        newest first; at most 10 days per query."""
        ...


async def is_member(graph: GraphDirectory, group_id: str, kind: RecipientKind, object_id: str) -> bool:
    """Whether the recipient is in the group, asked the way its kind needs the fewest rights."""
    if kind is RecipientKind.MAIL_CONTACT:
        return await graph.is_contact_member(group_id, object_id)
    return await graph.is_group_member(group_id, object_id)
