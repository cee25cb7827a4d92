"""One directory behind both faces: what Graph and Exchange see is the same users, contacts and groups.

The seed is a JSON file (format below, validated with pydantic). The model is in memory, one per
sandbox, guarded by one lock because the HTTP faces run on uvicorn's thread while tests read it.

Seed format (see demo_tenant.json):
    {"tenant": {"id": GUID, "name": str, "initial_domain": "x.onmicrosoft.com", "domains": [str]},
     "users": [{"id", "display_name", "mail", "user_type": "Member"|"Guest"}],
     "groups": [{"id", "display_name", "mail"?, "kind": "Microsoft365"|"Distribution"|"MailEnabledSecurity"|"Security",
                 "dynamic"?, "require_sender_authentication"?, "accept_messages_only_from"?,
                 "reject_messages_from"?, "moderation_enabled"?, "members"?: [object ids]}]}
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.directory.ports import GroupKind

DEMO_SEED = Path(__file__).with_name("demo_tenant.json")


class _Seed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantInfo(_Seed):
    id: str = Field(pattern=r"^[0-9a-fA-F-]{36}$")
    name: str
    initial_domain: str
    domains: tuple[str, ...]


class SeedUser(_Seed):
    id: str
    display_name: str
    mail: str
    user_type: Literal["Member", "Guest"] = "Member"


class SeedGroup(_Seed):
    id: str
    display_name: str
    mail: str | None = None
    kind: GroupKind
    dynamic: bool = False
    require_sender_authentication: bool = True  # Exchange's default for new groups
    accept_messages_only_from: tuple[str, ...] = ()
    reject_messages_from: tuple[str, ...] = ()
    moderation_enabled: bool = False
    members: tuple[str, ...] = ()


class TenantSeed(_Seed):
    tenant: TenantInfo
    users: tuple[SeedUser, ...] = ()
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


@dataclass
class User:
    id: str
    display_name: str
    mail: str
    user_type: str
    replicated_at: float = 0.0  # time.monotonic() from which Graph sees a new guest


@dataclass
class Contact:
    guid: str
    external_directory_object_id: str
    name: str
    display_name: str
    external_email_address: str
    first_name: str | None
    last_name: str | None
    replicated_at: float = 0.0  # time.monotonic() from which Graph and Add-DistributionGroupMember see it


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
    members: list[str] = field(default_factory=list)  # object ids, in the order added


class Directory:
    def __init__(self, seed: TenantSeed) -> None:
        self.lock = threading.RLock()
        # Seconds a new contact or guest stays invisible to Graph and to Add-DistributionGroupMember.
        self.replication_lag_seconds = 0.0
        self.tenant = seed.tenant
        self.users = {u.id: User(u.id, u.display_name, u.mail, u.user_type) for u in seed.users}
        self.contacts: dict[str, Contact] = {}  # by external directory object id
        self.groups = {
            g.id: Group(
                g.id,
                g.display_name,
                g.mail,
                g.kind,
                g.dynamic,
                g.require_sender_authentication,
                list(g.accept_messages_only_from),
                list(g.reject_messages_from),
                g.moderation_enabled,
                list(g.members),
            )
            for g in seed.groups
        }

    def accepted_domains(self) -> list[str]:
        return list(self.tenant.domains)

    def user_by_mail(self, address: str) -> User | None:
        return next((u for u in self.users.values() if u.mail.lower() == address.lower()), None)

    def group_by_mail(self, address: str) -> Group | None:
        return next((g for g in self.groups.values() if (g.mail or "").lower() == address.lower()), None)

    def group_by_identity(self, identity: str) -> Group | None:
        """Exchange -Identity: address, name, or id."""
        key = identity.lower()
        return self.groups.get(identity) or next(
            (g for g in self.groups.values() if key in {(g.mail or "").lower(), g.display_name.lower()}), None
        )

    def contact_by_identity(self, identity: str) -> Contact | None:
        key = identity.lower()
        return next(
            (
                c
                for c in self.contacts.values()
                if key in {c.guid, c.external_directory_object_id, c.name.lower(), c.external_email_address.lower()}
            ),
            None,
        )

    def address_owner(self, address: str) -> str | None:
        """The name of the object that already has this address, if any."""
        contact = self.contact_by_identity(address)
        if contact and contact.external_email_address.lower() == address.lower():
            return contact.name
        user = self.user_by_mail(address)
        return user.display_name if user else None

    def name_taken(self, name: str) -> bool:
        lowered = name.lower()
        return any(c.name.lower() == lowered for c in self.contacts.values()) or any(
            g.display_name.lower() == lowered for g in self.groups.values()
        )

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
        self.contacts[contact.external_directory_object_id] = contact
        return contact

    def add_guest(self, address: str, display_name: str) -> User:
        guest = User(str(uuid.uuid4()), display_name, address, "Guest", self._replicated_at())
        self.users[guest.id] = guest
        return guest

    def _replicated_at(self) -> float:
        return time.monotonic() + self.replication_lag_seconds

    def replicated(self, obj: User | Contact) -> bool:
        """Entra replication lag: a new object is not yet visible to the other face and to lookups."""
        return time.monotonic() >= obj.replicated_at

    def object_exists(self, object_id: str) -> bool:
        return object_id in self.users or object_id in self.contacts or object_id in self.groups
