"""Hand-written in-memory directories for testing stage decisions (pure logic).

End-to-end behaviour is tested against the tenant sandbox through the real clients; these fakes
only let a test say "the directory answers X" in one line, including failures to inject.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.amqp import AmqpMessageBodyType

from shared.contracts import DriftFinding, GroupKind, ResolvedGroup
from shared.directory.errors import (
    AddressInUseError,
    AlreadyExistsError,
    DirectoryError,
    NameInUseError,
    NotAMemberError,
    NotFoundError,
)
from shared.directory.ports import (
    ContactDetails,
    DirectoryGroup,
    DirectoryUser,
    EntraMembers,
    ExchangeMembers,
    GroupMember,
    MailContact,
    SenderRestrictions,
    TraceEntry,
    Warnings,
)
from shared.drift.model import Membership
from shared.journal import RequestState, Transition
from shared.journal.ports import LATEST_FAILURES, Tally
from shared.outbox import UnknownQueueError


@dataclass
class FailureScript:
    """Errors to raise, per method name, in order; each is used once."""

    pending: dict[str, list[DirectoryError]] = field(default_factory=lambda: defaultdict(list))
    calls: list[str] = field(default_factory=list)

    def fail_next(self, method: str, *errors: DirectoryError) -> None:
        self.pending[method].extend(errors)

    def check(self, method: str) -> None:
        self.calls.append(method)
        if self.pending[method]:
            raise self.pending[method].pop(0)


class FakeGraph:
    def __init__(self, script: FailureScript) -> None:
        self.script = script
        self.groups: dict[str, DirectoryGroup] = {}
        self.users: dict[str, DirectoryUser] = {}
        self.other_addresses: dict[str, DirectoryUser] = {}  # a user's UPN or otherMails, lower-case: Entra's view
        self.invited_user_type: str = "Guest"  # what an invitation that creates a user answers (invitedUserType)
        self.invited_sponsors: dict[str, tuple[str, ...]] = {}  # address -> the sponsors its invitation named
        self.members: dict[str, set[str]] = defaultdict(set)
        self.sent: list[tuple[str, str, str]] = []  # (sender, recipient, subject)
        self.exchange: FakeExchange | None = None  # whose distribution-group members Graph also sees
        self.disabled: set[str] = set()  # users whose accountEnabled is false
        self.members_page: int = 999  # rows per page of group_members_within

    def add_group(self, kind: GroupKind, mail: str | None, *, dynamic: bool = False) -> DirectoryGroup:
        group = DirectoryGroup(str(uuid.uuid4()), f"Group {mail}", mail, kind, dynamic)
        self.groups[group.id] = group
        return group

    async def get_group(self, group_id: str) -> DirectoryGroup | None:
        self.script.check("get_group")
        return self.groups.get(group_id)

    async def find_group_by_mail(self, address: str) -> DirectoryGroup | None:
        self.script.check("find_group_by_mail")
        return next((g for g in self.groups.values() if (g.mail or "").lower() == address.lower()), None)

    async def find_user_by_mail(self, address: str) -> DirectoryUser | None:
        self.script.check("find_user_by_mail")
        return next((u for u in self.users.values() if (u.mail or "").lower() == address.lower()), None)

    async def find_user_for_invitation(self, address: str) -> DirectoryUser | None:
        self.script.check("find_user_for_invitation")
        return await self._find_claimed(address)

    async def _find_claimed(self, address: str) -> DirectoryUser | None:
        by_mail = next((u for u in self.users.values() if (u.mail or "").lower() == address.lower()), None)
        return by_mail or self.other_addresses.get(address.lower())

    async def invite_guest(
        self, address: str, display_name: str, redirect_url: str, sponsors: tuple[str, ...] = ()
    ) -> DirectoryUser:
        self.script.check("invite_guest")
        self.invited_sponsors[address.lower()] = sponsors
        existing = await self._find_claimed(address)
        if existing:
            return existing
        user = DirectoryUser(str(uuid.uuid4()), address, "Guest" if self.invited_user_type == "Guest" else "Member")
        self.users[user.id] = user
        return user

    async def add_group_member(self, group_id: str, object_id: str) -> None:
        self.script.check("add_group_member")
        if object_id in self.members[group_id]:
            raise AlreadyExistsError("already a member", face="graph", status=400)
        self.members[group_id].add(object_id)
        group = self.groups.get(group_id)
        if self.exchange is not None and group is not None and group.mail and group.kind is GroupKind.MICROSOFT_365:
            self.exchange.subscribers[group.mail].add(object_id)  # a guest is subscribed when added (no lag here)

    async def remove_group_member(self, group_id: str, object_id: str) -> None:
        self.script.check("remove_group_member")
        if object_id not in self.members[group_id]:
            raise NotFoundError("not a member", face="graph", status=404)
        self.members[group_id].discard(object_id)

    async def contact_group_ids(self, contact_id: str) -> frozenset[str]:
        self.script.check("contact_group_ids")
        return frozenset(group_id for group_id in self.groups if self._member(group_id, contact_id))

    async def list_group_member_ids(self, group_id: str) -> frozenset[str]:
        self.script.check("list_group_member_ids")
        return frozenset(self.members[group_id])

    async def group_members_within(self, group_id: str, max_pages: int) -> EntraMembers:
        self.script.check("group_members_within")
        ids = sorted(self.members[group_id])
        shown = ids[: self.members_page * max_pages]
        enabled = {i.lower(): (i not in self.disabled) if i in self.users else None for i in shown}
        return EntraMembers(enabled, complete=len(shown) == len(ids))

    async def user_account_enabled(self, user_id: str) -> bool | None:
        self.script.check("user_account_enabled")
        return None if user_id not in self.users else user_id not in self.disabled

    async def is_group_member(self, group_id: str, object_id: str) -> bool:
        self.script.check("is_group_member")
        return self._member(group_id, object_id)

    async def is_contact_member(self, group_id: str, contact_id: str) -> bool:
        self.script.check("is_contact_member")
        return self._member(group_id, contact_id)

    def _member(self, group_id: str, object_id: str) -> bool:
        """Graph sees every group's members, also those Exchange manages (via `self.exchange`)."""
        group = self.groups.get(group_id)
        if self.exchange is not None and group is not None and group.mail in self.exchange.members:
            contacts = self.exchange.contacts
            return any(
                contacts[m].external_directory_object_id == object_id
                for m in self.exchange.members[group.mail]
                if m in contacts
            )
        return object_id in self.members[group_id]

    async def send_mail(self, sender: str, recipient: str, subject: str, text: str) -> None:
        self.script.check("send_mail")
        self.sent.append((sender, recipient, subject))


class FakeExchange:
    def __init__(self, script: FailureScript) -> None:
        self.script = script
        self.accepted_domains = frozenset({"contoso.com"})
        self.contacts: dict[str, MailContact] = {}
        self.taken_names: set[str] = set()
        self.addresses_of_other_objects: set[str] = set()  # mailboxes, users: not mail contacts
        self.members: dict[str, set[str]] = defaultdict(set)
        self.subscribers: dict[str, set[str]] = defaultdict(set)  # Microsoft 365 groups, by mail
        self.warnings: Warnings = ()  # what every change answers with (@adminapi.warnings)
        self.restrictions: dict[str, SenderRestrictions] = {}
        self.traces: list[TraceEntry] = []
        self.renamed: dict[str, tuple[str, str | None, str | None]] = {}  # Set-Contact's names, by identity
        self.members_page: int = 1000  # rows per page of distribution_group_members_within

    async def get_accepted_domains(self) -> frozenset[str]:
        self.script.check("get_accepted_domains")
        return self.accepted_domains

    async def find_mail_contact(self, address: str) -> MailContact | None:
        self.script.check("find_mail_contact")
        return next((c for c in self.contacts.values() if c.external_email_address.lower() == address.lower()), None)

    async def get_mail_contact(self, identity: str) -> MailContact | None:
        self.script.check("get_mail_contact")
        return self.contacts.get(identity)

    async def new_mail_contact(
        self,
        *,
        name: str,
        external_email_address: str,
        display_name: str,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> MailContact:
        self.script.check("new_mail_contact")
        if name in self.taken_names:
            raise NameInUseError(f'The name "{name}" is already being used.', face="exchange", status=400)
        address = external_email_address.lower()
        if address in self.addresses_of_other_objects or any(
            c.external_email_address.lower() == address for c in self.contacts.values()
        ):
            raise AddressInUseError("proxy address already used", face="exchange", status=400)
        contact = MailContact(str(uuid.uuid4()), name, external_email_address, str(uuid.uuid4()))
        self.contacts[contact.identity] = contact
        self.taken_names.add(name)
        return contact

    async def stamp_mail_contact(self, identity: str, value: str) -> None:
        self.script.check("stamp_mail_contact")
        self.contacts[identity] = replace(self.contacts[identity], provenance=value)

    async def set_contact_names(
        self, identity: str, *, display_name: str, first_name: str | None, last_name: str | None
    ) -> None:
        self.script.check("set_contact_names")
        self.renamed[identity] = (display_name, first_name, last_name)

    async def remove_mail_contact(self, identity: str) -> None:
        self.script.check("remove_mail_contact")
        if self.contacts.pop(identity, None) is None:
            raise NotFoundError("no such contact", face="exchange", status=404)
        for members in self.members.values():
            members.discard(identity)

    async def remove_distribution_group_member(
        self, group: str, member: str, *, security_group: bool = False
    ) -> Warnings:
        self.script.check("remove_distribution_group_member")
        if member not in self.members[group]:
            raise NotAMemberError("not a member", face="exchange", status=400)
        self.members[group].discard(member)
        return self.warnings

    async def add_distribution_group_member(self, group: str, member: str, *, security_group: bool = False) -> Warnings:
        self.script.check("add_distribution_group_member")
        if member in self.members[group]:
            raise AlreadyExistsError("already a member", face="exchange", status=400)
        self.members[group].add(member)
        return self.warnings

    async def list_distribution_group_members(self, group: str) -> list[GroupMember]:
        self.script.check("list_distribution_group_members")
        return [GroupMember(m, None, None) for m in self.members[group]]

    async def distribution_group_members_within(self, group: str, max_pages: int) -> ExchangeMembers:
        self.script.check("distribution_group_members_within")
        ids = sorted(self.members[group])
        shown = ids[: self.members_page * max_pages]
        return ExchangeMembers(tuple(self._member_row(m) for m in shown), complete=len(shown) == len(ids))

    def _member_row(self, identity: str) -> GroupMember:
        """A contact's row carries its hidden flag and stamp, as Exchange's member rows do."""
        contact = self.contacts.get(identity)
        if contact is None:
            return GroupMember(identity, identity, None)
        details = ContactDetails(contact.hidden_from_address_lists, contact.provenance)
        return GroupMember(identity, contact.external_directory_object_id, contact.external_email_address, details)

    async def list_unified_group_subscribers(self, group: str) -> list[GroupMember]:
        self.script.check("list_unified_group_subscribers")
        return [GroupMember(m, m, None) for m in self.subscribers[group]]

    async def is_unified_group_subscriber(self, group: str, is_them: Callable[[GroupMember], bool]) -> bool:
        return any(is_them(member) for member in await self.list_unified_group_subscribers(group))

    async def get_sender_restrictions(self, group: str, *, unified: bool) -> SenderRestrictions:
        self.script.check("get_sender_restrictions")
        return self.restrictions.get(group, SenderRestrictions(True, (), (), False))

    async def set_require_sender_authentication(
        self, group: str, enabled: bool, *, unified: bool, security_group: bool = False
    ) -> Warnings:
        self.script.check("set_require_sender_authentication")
        current = self.restrictions.get(group, SenderRestrictions(True, (), (), False))
        self.restrictions[group] = SenderRestrictions(
            enabled, current.accept_messages_only_from, current.reject_messages_from, current.moderation_enabled
        )
        return self.warnings

    async def message_trace(
        self, sender: str, recipient: str | None, start: datetime, end: datetime
    ) -> list[TraceEntry]:
        self.script.check("message_trace")
        return [
            t
            for t in self.traces
            if (recipient is None or t.recipient.lower() == recipient.lower()) and start <= t.received <= end
        ]


# --- recording fakes for the runner (dramatiq's stub broker: record what a worker did) -------


@dataclass
class FakeReceivedMessage:
    """The fields of azure.servicebus' ServiceBusReceivedMessage that the pipeline reads."""

    body: Any = b"{}"
    message_id: str | None = "msg-1"
    sequence_number: int | None = 1
    correlation_id: str | None = None
    reply_to: str | None = None
    delivery_count: int | None = None  # what the Functions host hands over with extension 1.0.0b2
    application_properties: dict[str | bytes, Any] | None = None
    content_type: str | None = None
    body_type: AmqpMessageBodyType = AmqpMessageBodyType.DATA

    def __post_init__(self) -> None:
        if self.body_type is AmqpMessageBodyType.DATA and isinstance(self.body, bytes):
            self.body = [self.body]  # the SDK hands data sections over as a list of bytes


class Recorder:
    """One ordered log for every fake below, so a test can check what happened before what."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.sent: list[tuple[str, ServiceBusMessage, datetime | None]] = []
        self.failing: set[str] = set()  # names of operations that raise
        self.missing_queues: set[str] = set()  # sends to these raise UnknownQueueError

    def happen(self, *event: str) -> None:
        self.events.append(event)
        if event[0] in self.failing:
            raise RuntimeError(f"{event[0]} failed")

    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]


class RecordingOutbox:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def send(self, queue: str, message: ServiceBusMessage) -> None:
        self.recorder.happen("send", queue, str(message.message_id))
        if queue in self.recorder.missing_queues:
            raise UnknownQueueError(queue)
        self.recorder.sent.append((queue, message, None))

    async def schedule(self, queue: str, message: ServiceBusMessage, at: datetime) -> None:
        self.recorder.happen("schedule", queue, str(message.message_id))
        self.recorder.sent.append((queue, message, at))


class RecordingActions:
    """ServiceBusMessageActions' methods: blocking calls that raise at once when told to fail."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def complete(self, message: Any) -> None:
        self.recorder.happen("complete")

    def abandon(self, message: Any) -> None:
        self.recorder.happen("abandon")

    def defer(self, message: Any) -> None:
        self.recorder.happen("defer")

    def deadletter(
        self, message: Any, deadletter_reason: str | None = None, deadletter_error_description: str | None = None
    ) -> None:
        self.recorder.happen("deadletter", str(deadletter_reason))


class RecordingJournal:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.transitions: list[Transition] = []

    async def record(self, transition: Transition) -> None:
        self.recorder.happen("journal", transition.decision)
        self.transitions.append(transition)

    async def history(self, request_id: str) -> list[Transition]:
        return [t for t in self.transitions if t.request_id == request_id]

    async def summary(self, limit: int = 50) -> list[RequestState]:
        return []

    async def tally(self, since: datetime, *, failures: int = LATEST_FAILURES) -> Tally:
        return Tally(since, {}, [])

    async def close(self) -> None:
        return None


# --- the drift watch's group checker (shared/drift/model.py, GroupChecker) -----------------------


class ScriptedGroupChecker:
    """Finds what it is told for each person (by address, any spelling), nothing for the rest, and
    remembers each call: the group and the people asked about. Told to fail, it raises that error."""

    def __init__(self) -> None:
        self.findings: dict[str, tuple[DriftFinding, ...]] = {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []  # (group id, membership keys)
        self.failure: Exception | None = None

    def find(self, address: str, *findings: DriftFinding) -> None:
        self.findings[address.lower()] = findings

    async def __call__(
        self, group: ResolvedGroup, members: Sequence[Membership]
    ) -> Mapping[str, tuple[DriftFinding, ...]]:
        self.calls.append((group.id, tuple(member.key for member in members)))
        if self.failure is not None:
            raise self.failure
        return {member.key: self.findings.get(member.external_email.lower(), ()) for member in members}

    def checked(self) -> list[str]:
        """Every membership key asked about, in order, as often as it was."""
        return [key for _, keys in self.calls for key in keys]
