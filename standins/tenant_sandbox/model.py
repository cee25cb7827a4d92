"""One directory behind both faces: what Graph and Exchange see is the same users, contacts and groups.

The seed is a JSON file (format below, validated with pydantic). The objects live in memory for
speed and are written through to SQLite (store.py) on every change, so a sandbox started on the
same database file comes back with its state. One lock guards both, because the HTTP faces run on
uvicorn's thread while tests read the model.

Seed format (see demo_tenant.json):
    {"tenant": {"id": GUID, "name": str, "initial_domain": "x.onmicrosoft.com", "domains": [str]},
     "settings"?: {"allow_invites_from"?: "none"|"adminsAndGuestInviters"|"adminsGuestInvitersAndAllMembers"|"everyone",
                   "b2b_allowed_domains"?: [str] | "b2b_blocked_domains"?: [str], "allow_to_add_guests"?: bool},
     "users": [{"id", "display_name", "mail", "user_type": "Member"|"Guest", "user_principal_name"?,
                "other_mails"?: [str], "external"?: bool (default: guests are external, members internal),
                "account_enabled"?: bool (default true)}],
     "contacts"?: [{"guid", "external_directory_object_id", "name", "display_name"?, "external_email_address",
                    "first_name"?, "last_name"?, "custom_attributes"?: {"CustomAttributeN": str},
                    "hidden_from_address_lists"?: bool}],
     "groups": [{"id", "display_name", "mail"?, "secondary_addresses"?: [str], "kind": "Microsoft365"|"Distribution"|"MailEnabledSecurity"|"Security",
                 "dynamic"?, "require_sender_authentication"?, "accept_messages_only_from"?,
                 "reject_messages_from"?, "moderation_enabled"?, "managed_by"?: [str],
                 "manager_check"?: bool (default: mail-enabled security groups only),
                 "auto_subscribe_new_members"?, "subscribers"?: [object ids] (Microsoft 365 groups),
                 "allow_to_add_guests"?: bool (Group.Unified.Guest; absent: the tenant's setting),
                 "members"?: [object ids (users, contacts' external_directory_object_id, groups)]}]}

Entra and Exchange are two directories here as in Microsoft: users and groups have an Exchange
`Guid` of their own (never the Entra object id), and what Graph changes reaches Exchange only after
`exchange_lag_seconds` (docs/microsoft-365-facts.md, "Entra and Exchange are not one database").
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.contracts import GroupKind
from standins.tenant_sandbox.knobs import Knobs
from standins.tenant_sandbox.store import DocumentStore

P = ParamSpec("P")
R = TypeVar("R")

DEMO_SEED = Path(__file__).with_name("demo_tenant.json")


class _Seed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantInfo(_Seed):
    id: str = Field(pattern=r"^[0-9a-fA-F-]{36}$")
    name: str
    initial_domain: str
    domains: tuple[str, ...]


InvitesFrom = Literal["none", "adminsAndGuestInviters", "adminsGuestInvitersAndAllMembers", "everyone"]


class SeedSettings(_Seed):
    """The tenant's external collaboration settings (Entra) and its Microsoft 365 group guest setting."""

    allow_invites_from: InvitesFrom = "everyone"  # authorizationPolicy.allowInvitesFrom
    b2b_allowed_domains: tuple[str, ...] = ()  # the B2B allow list: only these domains may be invited
    b2b_blocked_domains: tuple[str, ...] = ()  # the B2B deny list
    allow_to_add_guests: bool = True  # the tenant-wide Group.Unified setting AllowToAddGuests

    @model_validator(mode="after")
    def _one_list(self) -> SeedSettings:
        if self.b2b_allowed_domains and self.b2b_blocked_domains:
            raise ValueError("a tenant has an allow list or a deny list of domains, not both")
        return self


class SeedUser(_Seed):
    id: str
    display_name: str
    mail: str
    user_type: Literal["Member", "Guest"] = "Member"
    user_principal_name: str | None = None  # default: the mail of an internal user, the #EXT# form of an external one
    other_mails: tuple[str, ...] = ()  # a guest's invited address is added here as Entra does
    external: bool | None = None  # a B2B user (from another organisation); default: guests are, members are not
    account_enabled: bool = True  # false: sign-in blocked (an administrator, an access review, a lifecycle policy)


CUSTOM_ATTRIBUTES = tuple(f"CustomAttribute{n}" for n in range(1, 16))  # Exchange's CustomAttribute1..15
CUSTOM_ATTRIBUTE_MAX = 1024  # characters a custom attribute holds (Set-MailContact refuses more)


class SeedContact(_Seed):
    """A mail contact as New-MailContact (then Set-MailContact) leaves it, already replicated to Entra: for
    tenants that start with contacts, such as the drift benchmark's thousands the app onboarded before."""

    guid: str = Field(pattern=r"^[0-9a-fA-F-]{36}$")  # Exchange's Guid
    external_directory_object_id: str = Field(pattern=r"^[0-9a-fA-F-]{36}$")  # the org contact's Entra id
    name: str = Field(min_length=1, max_length=64)
    display_name: str | None = Field(default=None, max_length=256)  # default: the name
    external_email_address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    first_name: str | None = None
    last_name: str | None = None
    custom_attributes: dict[str, str] = Field(default_factory=dict)  # CustomAttribute1..15 that hold a value
    hidden_from_address_lists: bool = False

    @model_validator(mode="after")
    def _exchange_attributes(self) -> SeedContact:
        for name, value in self.custom_attributes.items():
            if name not in CUSTOM_ATTRIBUTES:
                raise ValueError(f"{name} is not one of CustomAttribute1..15")
            if not 0 < len(value) <= CUSTOM_ATTRIBUTE_MAX:
                raise ValueError(f"{name} must hold 1 to {CUSTOM_ATTRIBUTE_MAX} characters (empty: leave it out)")
        return self


class SeedGroup(_Seed):
    id: str
    display_name: str
    mail: str | None = None
    secondary_addresses: tuple[str, ...] = ()  # the group's other SMTP addresses (proxyAddresses "smtp:")
    kind: GroupKind
    dynamic: bool = False
    require_sender_authentication: bool = True  # Exchange's default for new groups
    accept_messages_only_from: tuple[str, ...] = ()
    reject_messages_from: tuple[str, ...] = ()
    moderation_enabled: bool = False
    managed_by: tuple[str, ...] = ()
    # Whether changes need a manager or BypassSecurityGroupManagerCheck. None: by kind (mail-enabled
    # security groups); True models a distribution group restricted to its managers.
    manager_check: bool | None = None
    auto_subscribe_new_members: bool = False
    subscribers: tuple[str, ...] = ()  # who receives a Microsoft 365 group's conversations by mail
    allow_to_add_guests: bool | None = None  # the group's Group.Unified.Guest setting; None: the tenant's
    members: tuple[str, ...] = ()


class TenantSeed(_Seed):
    tenant: TenantInfo
    settings: SeedSettings = SeedSettings()
    users: tuple[SeedUser, ...] = ()
    contacts: tuple[SeedContact, ...] = ()
    groups: tuple[SeedGroup, ...] = ()

    @classmethod
    def load(cls, path: Path) -> TenantSeed:
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError as error:
            raise ValueError(f"seed file {path} does not exist") from error

    @classmethod
    def demo(cls) -> TenantSeed:
        return cls.load(DEMO_SEED)

    def with_staff_in(self, group_mail: str, count: int, *, subscribed: bool = False) -> TenantSeed:
        """This seed plus `count` member users (staff-N@ the first domain) in the group `group_mail`, and
        with `subscribed` among its subscribers too (a Microsoft 365 group's).

        For large-group tests and benchmarks: 50,000 members seed in a second or two.
        """
        domain = self.tenant.domains[0]
        staff = tuple(
            SeedUser.model_construct(
                id=str(uuid.UUID(int=index + 1)), display_name=f"Staff {index}", mail=f"staff-{index}@{domain}"
            )
            for index in range(count)
        )
        ids = tuple(user.id for user in staff)
        groups = tuple(
            g.model_copy(
                update={"members": g.members + ids} | ({"subscribers": g.subscribers + ids} if subscribed else {})
            )
            if (g.mail or "").lower() == group_mail.lower()
            else g
            for g in self.groups
        )
        if groups == self.groups:
            raise ValueError(f"the seed has no group {group_mail}")
        return self.model_copy(update={"users": self.users + staff, "groups": groups})


def external_upn(address: str, initial_domain: str) -> str:
    """A B2B user's user principal name: the address with "_" for "@", then #EXT# in the initial domain."""
    return f"{address.replace('@', '_')}#EXT#@{initial_domain}"


@dataclass
class User:
    id: str
    display_name: str
    mail: str
    user_type: str
    replicated_at: float = 0.0  # time.time() from which Graph sees a new guest
    user_principal_name: str = ""
    other_mails: list[str] = field(default_factory=list)
    external: bool = False  # a B2B user (its home is another organisation), whatever its userType
    exchange_guid: str = field(default_factory=lambda: str(uuid.uuid4()))  # Exchange's Guid, not the Entra id
    exchange_visible_at: float = 0.0  # time.time() from which Exchange knows a user made through Graph
    sponsors: list[str] = field(default_factory=list)  # object ids of users or groups (invitedUserSponsors)
    # Entra left the user's proxyAddresses empty because a contact holds its address, so Exchange's mail
    # user for it has no SMTP address: nothing is routed to it (docs/microsoft-365-facts.md §9).
    smtp_withheld: bool = False
    account_enabled: bool = True  # false: sign-in blocked (an admin, an access review, a lifecycle policy)

    def addresses(self) -> set[str]:
        """What Entra matches an invitation against, lower-case: UPN, mail, proxyAddresses, otherMails."""
        return {a.lower() for a in (self.user_principal_name, self.mail, *self.other_mails) if a}


@dataclass
class Contact:
    guid: str
    external_directory_object_id: str
    name: str
    display_name: str
    external_email_address: str
    first_name: str | None
    last_name: str | None
    replicated_at: float = 0.0  # time.time() from which Graph and Add-DistributionGroupMember see it
    # CustomAttribute1..15 that hold a value (Set-MailContact writes them; Get-MailContact lists all 15).
    custom_attributes: dict[str, str] = field(default_factory=dict)
    hidden_from_address_lists: bool = False  # HiddenFromAddressListsEnabled


@dataclass
class Group:
    id: str
    display_name: str
    mail: str | None
    kind: GroupKind
    dynamic: bool
    require_sender_authentication: bool
    accept_messages_only_from: list[str]
    reject_messages_from: list[str]
    moderation_enabled: bool
    managed_by: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)  # object ids, in the order added
    secondary_addresses: list[str] = field(default_factory=list)
    manager_check: bool = False
    auto_subscribe_new_members: bool = False
    subscribers: list[str] = field(default_factory=list)
    allow_to_add_guests: bool | None = None  # Group.Unified.Guest; None: the tenant's Group.Unified setting
    exchange_guid: str = field(default_factory=lambda: str(uuid.uuid4()))  # Exchange's Guid, not the Entra id
    # Memberships made through Graph, by object id: the time.time() from which Exchange lists them.
    exchange_visible_at: dict[str, float] = field(default_factory=dict)

    def proxy_addresses(self) -> list[str]:
        """Exchange's form: the primary address as "SMTP:", every other one as "smtp:"."""
        if not self.mail:
            return []
        return ["SMTP:" + self.mail] + ["smtp:" + address for address in self.secondary_addresses]


@dataclass
class TenantSettings:
    """SeedSettings as the directory holds them: changeable while the sandbox runs (change_settings)."""

    allow_invites_from: str = "everyone"
    b2b_allowed_domains: list[str] = field(default_factory=list)
    b2b_blocked_domains: list[str] = field(default_factory=list)
    allow_to_add_guests: bool = True

    @classmethod
    def of(cls, chosen: SeedSettings) -> TenantSettings:
        return cls(
            chosen.allow_invites_from,
            list(chosen.b2b_allowed_domains),
            list(chosen.b2b_blocked_domains),
            chosen.allow_to_add_guests,
        )

    def domain_blocked(self, address: str) -> bool:
        """The B2B allow/deny list: an allow list admits only its domains, a deny list refuses its own."""
        domain = address.rsplit("@", 1)[-1].lower()
        if self.b2b_allowed_domains:
            return domain not in {d.lower() for d in self.b2b_allowed_domains}
        return domain in {d.lower() for d in self.b2b_blocked_domains}


@dataclass
class TraceRow:
    """One Get-MessageTraceV2 row: a message to one recipient."""

    message_trace_id: str
    message_id: str  # the Internet message id, <...@tenant>
    sender: str
    recipient: str
    subject: str
    received: float  # time.time() of the send
    status: Literal["Delivered", "Failed"]
    visible_at: float  # message trace lags behind the send
    size: int


_KINDS: dict[str, type[User] | type[Contact] | type[Group] | type[TraceRow]] = {
    "user": User,
    "contact": Contact,
    "group": Group,
    "trace": TraceRow,
}


def _locked(method: Callable[Concatenate[Directory, P], R]) -> Callable[Concatenate[Directory, P], R]:
    """Every public read and write holds the directory's lock: the HTTP faces run on the server's
    threads while tests and the admin endpoint read from others (an RLock: the faces nest)."""

    def wrapper(self: Directory, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.lock:
            return method(self, *args, **kwargs)

    functools.update_wrapper(wrapper, method)
    return wrapper


class Directory:
    def __init__(self, seed: TenantSeed, store: DocumentStore | None = None, knobs: Knobs | None = None) -> None:
        self.lock = threading.RLock()
        self.knobs = knobs or Knobs()
        self.tenant = seed.tenant
        self.store = store or DocumentStore()
        self.users: dict[str, User] = {}
        self.contacts: dict[str, Contact] = {}  # by external directory object id
        self.groups: dict[str, Group] = {}
        self.traces: dict[str, TraceRow] = {}
        self.settings = TenantSettings()
        # Lookups by address and identity in constant time: a tenant the chaos run fills with 10,000
        # people made every scan the slowest part of every call. The first object holding a key wins.
        self._user_ids_by_mail: dict[str, str] = {}
        # Contacts by each kind of -Identity, in the order Exchange's -Identity is tried (contact_by_identity).
        self._contact_ids_by_kind: tuple[dict[str, str], ...] = ({}, {}, {})
        self._contact_names: Counter[str] = Counter()
        stored_tenant = self.store.get_meta("tenant_id")
        if stored_tenant is None:
            self._plant(seed)
        elif stored_tenant != seed.tenant.id:
            raise ValueError(f"the sandbox database holds tenant {stored_tenant}, not the seed's {seed.tenant.id}")
        else:
            self._load()

    def _plant(self, seed: TenantSeed) -> None:
        initial = seed.tenant.initial_domain
        for u in seed.users:
            external = u.user_type == "Guest" if u.external is None else u.external
            upn = u.user_principal_name or (external_upn(u.mail, initial) if external else u.mail)
            other_mails = list(u.other_mails) or ([u.mail] if external else [])
            user = User(u.id, u.display_name, u.mail, u.user_type, user_principal_name=upn, other_mails=other_mails)
            user.external = external
            user.account_enabled = u.account_enabled
            self._save(user)
        for c in seed.contacts:
            self._save(
                Contact(
                    c.guid.lower(),
                    c.external_directory_object_id.lower(),
                    c.name,
                    c.display_name or c.name,
                    c.external_email_address,
                    c.first_name,
                    c.last_name,
                    custom_attributes=dict(c.custom_attributes),
                    hidden_from_address_lists=c.hidden_from_address_lists,
                )
            )
        for g in seed.groups:
            self._save(
                Group(
                    g.id,
                    g.display_name,
                    g.mail,
                    g.kind,
                    g.dynamic,
                    g.require_sender_authentication,
                    list(g.accept_messages_only_from),
                    list(g.reject_messages_from),
                    g.moderation_enabled,
                    list(g.managed_by),
                    list(g.members),
                    list(g.secondary_addresses),
                    g.kind is GroupKind.MAIL_ENABLED_SECURITY if g.manager_check is None else g.manager_check,
                    g.auto_subscribe_new_members,
                    list(g.subscribers),
                    g.allow_to_add_guests,
                )
            )
        self._save_settings(TenantSettings.of(seed.settings))
        self.store.set_meta("tenant_id", seed.tenant.id)

    def _save_settings(self, settings: TenantSettings) -> None:
        self.settings = settings
        self.store.set_meta("settings", json.dumps(asdict(settings)))

    def _load(self) -> None:
        if (stored := self.store.get_meta("settings")) is not None:
            self.settings = TenantSettings(**json.loads(stored))
        for row in self.store.all("user"):
            self._keep_guid(User(**row), row)
        for row in self.store.all("contact"):
            self._remember(Contact(**row))
        for row in self.store.all("group"):
            self._keep_guid(Group(**{**row, "kind": GroupKind(row["kind"])}), row)
        for row in self.store.all("trace"):
            self._remember(TraceRow(**row))

    def _keep_guid(self, obj: User | Group, row: dict[str, Any]) -> None:
        """A database from before Exchange Guids were modelled: the Guid given now is kept from now on."""
        if "exchange_guid" in row:
            self._remember(obj)
        else:
            self._save(obj)

    def _remember(self, obj: User | Contact | Group | TraceRow) -> None:
        match obj:
            case User():
                self.users[obj.id] = obj
                self._user_ids_by_mail.setdefault(obj.mail.lower(), obj.id)
            case Contact():
                known = obj.external_directory_object_id in self.contacts
                self.contacts[obj.external_directory_object_id] = obj
                if known:  # a changed name or address: its old keys go
                    self._index_contacts()
                else:
                    self._index_contact(obj)
            case Group():
                self.groups[obj.id] = obj
            case TraceRow():
                self.traces[obj.message_trace_id] = obj

    def _index_contact(self, contact: Contact) -> None:
        keys = (contact.guid, contact.external_email_address, contact.name)
        for ids, key in zip(self._contact_ids_by_kind, keys, strict=True):
            ids.setdefault(key.lower(), contact.external_directory_object_id)
        self._contact_names[contact.name.lower()] += 1

    def _index_contacts(self) -> None:
        for ids in self._contact_ids_by_kind:
            ids.clear()
        self._contact_names.clear()
        for contact in self.contacts.values():
            self._index_contact(contact)

    def _save(self, obj: User | Contact | Group | TraceRow) -> None:
        """Write-through: the in-memory object and its SQLite row change together."""
        self._remember(obj)
        kind = next(k for k, cls in _KINDS.items() if isinstance(obj, cls))
        body: dict[str, Any] = asdict(obj)
        self.store.put(kind, _key(obj), body)

    # Reads

    @_locked
    def accepted_domains(self) -> list[str]:
        return list(self.tenant.domains)

    @_locked
    def user_by_mail(self, address: str) -> User | None:
        user_id = self._user_ids_by_mail.get(address.lower())
        return self.users[user_id] if user_id is not None else None

    @_locked
    def users_claiming(self, address: str) -> list[User]:
        """The users an invitation for `address` meets: its UPN, mail, proxy address or one of its otherMails."""
        key = address.lower()
        return [u for u in self.users.values() if key in u.addresses()]

    @_locked
    def guests_allowed_in(self, group: Group) -> bool:
        """Group.Unified.Guest AllowToAddGuests, within the tenant's Group.Unified setting: a tenant that
        forbids guests is not overridden by a group that allows them (the stricter reading)."""
        return self.settings.allow_to_add_guests and group.allow_to_add_guests is not False

    @_locked
    def known_to_exchange(self, user: User) -> bool:
        """A user made through Graph (a new guest) reaches Exchange only after the Entra-to-Exchange lag."""
        return time.time() >= user.exchange_visible_at

    @_locked
    def link_known_to_exchange(self, group: Group, object_id: str) -> bool:
        """A membership made through Graph is listed by Exchange only after the Entra-to-Exchange lag."""
        return time.time() >= group.exchange_visible_at.get(object_id, 0.0)

    @_locked
    def exchange_user(self, identity: str) -> User | None:
        """Exchange's -Identity for a user: its Exchange Guid or address (never the Entra object id), once Exchange knows it."""
        key = identity.lower()
        user = next(
            (
                u
                for u in self.users.values()
                if key == u.exchange_guid or (key == u.mail.lower() and not u.smtp_withheld)
            ),
            None,
        )
        return user if user is not None and self.known_to_exchange(user) else None

    @_locked
    def exchange_group(self, identity: str) -> Group | None:
        """Exchange's -Identity for a group: its Exchange Guid, address or name (never the Entra object id)."""
        key = identity.lower()
        return next(
            (
                g
                for g in self.groups.values()
                if key in {g.exchange_guid, (g.mail or "").lower(), g.display_name.lower()}
            ),
            None,
        )

    @_locked
    def group_by_mail(self, address: str) -> Group | None:
        """The group whose primary address this is (Graph's `mail`)."""
        return next((g for g in self.groups.values() if (g.mail or "").lower() == address.lower()), None)

    @_locked
    def group_with_address(self, address: str) -> Group | None:
        """The group that has this address as its primary or as a secondary SMTP address."""
        proxy = "smtp:" + address.lower()
        return next((g for g in self.groups.values() if proxy in map(str.lower, g.proxy_addresses())), None)

    @_locked
    def group_by_identity(self, identity: str) -> Group | None:
        """A group by its Entra id, address or name: for tests and tools (the Exchange face uses exchange_group)."""
        key = identity.lower()
        return self.groups.get(identity) or next(
            (g for g in self.groups.values() if key in {(g.mail or "").lower(), g.display_name.lower()}), None
        )

    @_locked
    def contact_by_identity(self, identity: str) -> Contact | None:
        """Exchange -Identity: the Guid (never the Entra object id), else the address, else the Name (the first
        kind that finds a contact wins; Exchange's own order is not documented, docs/stand-in-differences.md)."""
        key = identity.lower()
        for ids in self._contact_ids_by_kind:
            if (contact_id := ids.get(key)) is not None:
                return self.contacts[contact_id]
        return None

    @_locked
    def contact_holding(self, address: str) -> Contact | None:
        """The mail contact whose external address this is (its proxy address in Entra and Exchange)."""
        key = address.lower()
        return next((c for c in self.contacts.values() if c.external_email_address.lower() == key), None)

    @_locked
    def address_owner(self, address: str) -> str | None:
        """The name of the object Exchange knows to have this address already, if any: a user made through
        Graph only once Exchange has it, and never one whose SMTP address Entra withheld."""
        contact = self.contact_holding(address)
        if contact is not None:
            return contact.name
        user = self.user_by_mail(address)
        if user and self.known_to_exchange(user) and not user.smtp_withheld:
            return user.display_name
        group = self.group_with_address(address)
        return group.display_name if group else None

    @_locked
    def name_taken(self, name: str) -> bool:
        lowered = name.lower()
        return self._contact_names[lowered] > 0 or any(g.display_name.lower() == lowered for g in self.groups.values())

    @_locked
    def replicated(self, obj: User | Contact) -> bool:
        """Entra replication lag: a new object is not yet visible to the other face and to lookups."""
        return time.time() >= obj.replicated_at

    @_locked
    def object_exists(self, object_id: str) -> bool:
        return object_id in self.users or object_id in self.contacts or object_id in self.groups

    @_locked
    def has_member(self, group_id: str, object_id: str) -> bool:
        """Transitive membership, as checkMemberGroups evaluates it (nested groups count)."""
        seen: set[str] = set()
        pending = [group_id]
        while pending:
            group = self.groups.get(pending.pop())
            if group is None or group.id in seen:
                continue
            seen.add(group.id)
            if object_id in group.members:
                return True
            pending.extend(member for member in group.members if member in self.groups)
        return False

    @_locked
    def groups_with_member(self, object_id: str) -> list[Group]:
        return [g for g in self.groups.values() if object_id in g.members]

    @_locked
    def trace_rows(self, sender: str | None, recipient: str | None, start: float, end: float) -> list[TraceRow]:
        """Rows Get-MessageTraceV2 would show now: only those past the trace lag, newest first."""
        now = time.time()
        rows = [
            row
            for row in self.traces.values()
            if row.visible_at <= now
            and start <= row.received <= end
            and (sender is None or row.sender.lower() == sender.lower())
            and (recipient is None or row.recipient.lower() == recipient.lower())
        ]
        return sorted(rows, key=lambda row: row.received, reverse=True)

    # Writes: each is committed to the store before the face answers.

    @_locked
    def add_contact(
        self, name: str, display_name: str, address: str, first_name: str | None, last_name: str | None
    ) -> Contact:
        contact = Contact(
            str(uuid.uuid4()),
            str(uuid.uuid4()),
            name,
            display_name,
            address,
            first_name,
            last_name,
            self._replicated_at(),
        )
        self._save(contact)
        # Only reached for a guest Exchange did not know yet (else New-MailContact refused the address): Entra
        # keeps the contact's proxy address and removes the guest's, as it does for a synchronised contact.
        guest = self.user_by_mail(address)
        if guest is not None and guest.user_type == "Guest":
            guest.smtp_withheld = True
            self._save(guest)
        return contact

    @_locked
    def update_contact(self, contact: Contact) -> None:
        self._save(contact)

    @_locked
    def remove_contact(self, contact: Contact) -> None:
        object_id = contact.external_directory_object_id
        for group in self.groups_with_member(object_id):
            self.remove_member(group, object_id)
        del self.contacts[object_id]
        self._index_contacts()
        self.store.delete("contact", object_id)

    @_locked
    def add_guest(self, address: str, display_name: str, sponsors: tuple[str, ...] = ()) -> User:
        """What an invitation creates: a B2B guest, seen by Graph after the replication lag and by Exchange
        after the Entra-to-Exchange lag, with the invitation's sponsors (user or group object ids). For an address a
        mail contact holds, Entra creates the guest without proxyAddresses (Troubleshooting B2B collaboration): its
        mail user in Exchange has no SMTP address."""
        guest = User(
            str(uuid.uuid4()),
            display_name,
            address,
            "Guest",
            self._replicated_at(),
            user_principal_name=external_upn(address, self.tenant.initial_domain),
            other_mails=[address],
            external=True,
            exchange_visible_at=time.time() + self.knobs.exchange_lag_seconds,
            sponsors=list(sponsors),
            smtp_withheld=self.contact_holding(address) is not None,
        )
        self._save(guest)
        return guest

    @_locked
    def show_to_exchange(self, user: User) -> None:
        """End the Entra-to-Exchange lag for this user now (a test that needs Exchange to catch up at one step)."""
        user.exchange_visible_at = time.time()
        self._save(user)

    @_locked
    def change_settings(self, /, **changes: Any) -> TenantSettings:
        """Change the tenant's settings while running (an administrator in the Entra admin center)."""
        current = asdict(self.settings)
        self._save_settings(TenantSettings.of(SeedSettings.model_validate({**current, **changes})))
        return self.settings

    @_locked
    def add_member(self, group: Group, object_id: str, *, through_graph: bool = False) -> None:
        """`through_graph`: made in Entra (POST members/$ref), so Exchange lists it only after the lag."""
        group.members.append(object_id)
        if through_graph:
            group.exchange_visible_at[object_id] = time.time() + self.knobs.exchange_lag_seconds
        guest = object_id in self.users and self.users[object_id].user_type == "Guest"
        # Set-UnifiedGroup docs: AutoSubscribeNewMembers applies to internal members only; "Guest user
        # accounts are always subscribed when added as a member."
        if group.kind is GroupKind.MICROSOFT_365 and (guest or group.auto_subscribe_new_members):
            group.subscribers.append(object_id)
        self._save(group)

    @_locked
    def remove_member(self, group: Group, object_id: str) -> None:
        group.members.remove(object_id)
        group.exchange_visible_at.pop(object_id, None)
        if object_id in group.subscribers:
            group.subscribers.remove(object_id)
        self._save(group)

    @_locked
    def unsubscribe(self, group: Group, object_id: str) -> None:
        """What an admin's Remove-UnifiedGroupLinks -LinkType Subscribers does (not possible app-only)."""
        group.subscribers.remove(object_id)
        self._save(group)

    @_locked
    def update_group(self, group: Group) -> None:
        self._save(group)

    # What administrators (and policies) change after an onboarding: the drift watch's conditions.

    @_locked
    def change_sender_rules(self, group: Group, /, **changes: Any) -> None:
        """Set-DistributionGroup / Set-UnifiedGroup as an administrator runs them: require_sender_authentication,
        accept_messages_only_from, reject_messages_from (identities as in the seed), moderation_enabled."""
        allowed = {"require_sender_authentication", "accept_messages_only_from", "reject_messages_from"}
        for name, value in changes.items():
            if name not in allowed | {"moderation_enabled"}:
                raise ValueError(f"{name} is not a sender rule")
            setattr(group, name, list(value) if name in allowed - {"require_sender_authentication"} else value)
        self._save(group)

    @_locked
    def set_account_enabled(self, user: User, enabled: bool) -> None:
        """Block or allow a user's sign-in (Entra admin center, Update-MgUser -AccountEnabled)."""
        user.account_enabled = enabled
        self._save(user)

    @_locked
    def hide_contact(self, contact: Contact, hidden: bool = True) -> None:
        """Set-MailContact -HiddenFromAddressListsEnabled."""
        contact.hidden_from_address_lists = hidden
        self._save(contact)

    @_locked
    def remove_user(self, user: User) -> None:
        """Delete a user (Remove-MgUser): out of every group, its subscriptions with it."""
        for group in self.groups_with_member(user.id):
            self.remove_member(group, user.id)
        for group in self.groups.values():
            if user.id in group.subscribers:
                self.unsubscribe(group, user.id)
        del self.users[user.id]
        self._user_ids_by_mail = {}
        for remaining in self.users.values():
            self._user_ids_by_mail.setdefault(remaining.mail.lower(), remaining.id)
        self.store.delete("user", user.id)

    @_locked
    def send_mail(self, sender: User, recipients: list[str], subject: str, size: int) -> str:
        """Accept a message for delivery; its trace rows say Delivered or Failed (bounce_domains) after a lag."""
        sent = time.time()
        message_id = f"<{uuid.uuid4().hex}@{self.tenant.initial_domain}>"
        for recipient in recipients:
            status: Literal["Delivered", "Failed"] = "Failed" if self.knobs.bounces(recipient) else "Delivered"
            row = TraceRow(
                str(uuid.uuid4()),
                message_id,
                sender.mail,
                recipient,
                subject,
                sent,
                status,
                sent + self.knobs.trace_lag_seconds,
                size,
            )
            self._save(row)
        return message_id

    def _replicated_at(self) -> float:
        return time.time() + self.knobs.replication_lag_seconds


def _key(obj: User | Contact | Group | TraceRow) -> str:
    match obj:
        case Contact():
            return obj.external_directory_object_id
        case TraceRow():
            return obj.message_trace_id
        case _:
            return obj.id
