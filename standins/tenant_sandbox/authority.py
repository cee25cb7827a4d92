"""Who may do what: the rights Microsoft checks before a Graph route or an Exchange cmdlet runs.

Graph decides from the access token alone: an app-only token's `roles` claim (the application
permissions granted to the calling service principal), or a delegated token's `scp` claim. Each
route accepts the permissions its API reference lists (least privileged and higher privileged),
per object type where the reference distinguishes them. Exchange's admin API first needs
`Exchange.ManageAsApp` in `roles`, then the caller's Exchange roles decide which cmdlets exist for
it: Entra directory roles (the token's `wids` claim) map to Exchange role groups, and role groups
the service principal was added to on the Exchange side add theirs. Every row's public source is
in docs/permissions.md; tests/standins/test_sandbox_authority.py holds the table to that page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

ObjectKind = Literal["user", "group", "orgContact", "servicePrincipal"]

INSUFFICIENT_PRIVILEGES = "Insufficient privileges to complete the operation."
MANAGE_AS_APP = "Exchange.ManageAsApp"
# A delegated token from the Azure CLI (how an administrator runs `onboard grant`) carries this scope:
# the signed-in user's own directory roles then decide.
ACCESS_AS_USER = "Directory.AccessAsUser.All"


@dataclass(frozen=True)
class Caller:
    """What an access token says about its caller."""

    app_only: bool
    roles: frozenset[str]  # application permissions (app-only tokens)
    scopes: frozenset[str]  # delegated permissions (scp)
    directory_roles: frozenset[str]  # Entra role template ids (wids)
    object_id: str  # the service principal's or user's object id (oid)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Caller:
        def strings(value: Any) -> frozenset[str]:
            return frozenset(v for v in value if isinstance(v, str)) if isinstance(value, list) else frozenset()

        scopes = claims.get("scp")
        return cls(
            app_only=claims.get("idtyp") == "app" or "scp" not in claims,
            roles=strings(claims.get("roles")),
            scopes=frozenset(scopes.split()) if isinstance(scopes, str) else frozenset(),
            directory_roles=strings(claims.get("wids")),
            object_id=str(claims.get("oid", "")),
        )


@dataclass(frozen=True)
class Rights:
    """What one Graph operation accepts: any one of `application`'s sets, each needed whole ("A and B")."""

    application: tuple[frozenset[str], ...]

    def allow(self, caller: Caller) -> bool:
        if caller.app_only:
            return any(needed <= caller.roles for needed in self.application)
        # Delegated (`onboard grant` as an administrator): Directory.AccessAsUser.All, then the user's roles decide.
        return ACCESS_AS_USER in caller.scopes and bool(caller.directory_roles & ADMIN_ROLES)

    @property
    def permissions(self) -> frozenset[str]:
        return frozenset(p for needed in self.application for p in needed)


def _rights(*alternatives: str) -> Rights:
    """_rights("A", "B and C"): A alone, or B with C (as the API reference writes its permission tables)."""
    return Rights(tuple(frozenset(part.strip() for part in one.split(" and ")) for one in alternatives))


# Entra role template ids (the `wids` claim), as Microsoft publishes them.
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
PRIVILEGED_ROLE_ADMINISTRATOR = "e8611ab8-c189-46e8-94e1-60213ab1f814"
EXCHANGE_ADMINISTRATOR = "29232cdf-9323-42fd-ade2-1d097af3e4de"
EXCHANGE_RECIPIENT_ADMINISTRATOR = "31392ffb-586c-42d1-9346-e59415a2cc4e"
GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"
# Who may grant app roles and directory roles to a service principal (delegated calls of `onboard grant`).
ADMIN_ROLES = frozenset({GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR})

_GROUP_READ = _rights(
    "GroupMember.Read.All", "Group.Read.All", "Directory.Read.All", "Group.ReadWrite.All", "Directory.ReadWrite.All"
)
_MEMBERS_READ = _rights(
    "GroupMember.Read.All", "Directory.Read.All", "Group.Read.All", "Group.ReadWrite.All", "GroupMember.ReadWrite.All"
)
_CONTACT_READ = _rights("OrgContact.Read.All", "Directory.Read.All", "Directory.ReadWrite.All")
_USER_READ = _rights("User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All")
_APPLICATION_READ = _rights(
    "Application.Read.All",
    "Application.ReadWrite.OwnedBy",
    "Application.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
_ROLE_READ = _rights(
    "RoleManagement.Read.Directory",
    "Directory.Read.All",
    "RoleManagement.ReadWrite.Directory",
    "Directory.ReadWrite.All",
)

# (method, route as the sandbox declares it) -> the rights it needs; a Mapping per object kind where the
# API reference has one row per kind. Sources, row by row: docs/permissions.md.
GRAPH_ROUTES: dict[tuple[str, str], Rights | Mapping[ObjectKind, Rights]] = {
    ("GET", "/v1.0/groups"): _GROUP_READ,
    ("GET", "/v1.0/groups/{id}"): _GROUP_READ,
    ("GET", "/v1.0/groups/{id}/members"): _MEMBERS_READ,
    # Per the kind of the member added; the sandbox adds users (guests) only, so the user row applies.
    ("POST", "/v1.0/groups/{id}/members/$ref"): _rights(
        "GroupMember.ReadWrite.All", "Group.ReadWrite.All", "Directory.ReadWrite.All"
    ),
    ("DELETE", "/v1.0/groups/{id}/members/{member}/$ref"): _rights(
        "GroupMember.ReadWrite.All", "Group.ReadWrite.All", "Directory.ReadWrite.All"
    ),
    ("GET", "/v1.0/contacts"): _CONTACT_READ,
    ("POST", "/v1.0/contacts"): _CONTACT_READ,  # answered 405 after the check: org contacts are read-only
    ("GET", "/v1.0/contacts/{id}"): _CONTACT_READ,
    ("PATCH", "/v1.0/contacts/{id}"): _CONTACT_READ,
    ("DELETE", "/v1.0/contacts/{id}"): _CONTACT_READ,
    ("GET", "/v1.0/contacts/{id}/memberOf"): _rights(
        "OrgContact.Read.All and Group.Read.All", "Directory.Read.All", "Directory.ReadWrite.All"
    ),
    ("POST", "/v1.0/directoryObjects/{id}/checkMemberGroups"): {
        "user": _rights(
            "User.Read.All and GroupMember.Read.All",
            "User.Read.All and Group.Read.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
        ),
        "group": _GROUP_READ,
        "orgContact": _rights("Directory.Read.All", "Directory.ReadWrite.All"),
        "servicePrincipal": _APPLICATION_READ,
    },
    ("GET", "/v1.0/users"): _USER_READ,
    ("GET", "/v1.0/users/{id}"): _USER_READ,
    ("POST", "/v1.0/users/{id}/sendMail"): _rights("Mail.Send"),
    ("GET", "/v1.0/users/{id}/sponsors"): _USER_READ,
    ("POST", "/v1.0/invitations"): _rights("User.Invite.All", "User.ReadWrite.All", "Directory.ReadWrite.All"),
    ("GET", "/v1.0/servicePrincipals"): _APPLICATION_READ,
    ("GET", "/v1.0/servicePrincipals/{id}"): _APPLICATION_READ,
    ("GET", "/v1.0/servicePrincipals/{id}/appRoleAssignments"): _APPLICATION_READ,
    ("POST", "/v1.0/servicePrincipals/{id}/appRoleAssignedTo"): _rights(
        "AppRoleAssignment.ReadWrite.All and Application.Read.All",
        "AppRoleAssignment.ReadWrite.All and Directory.Read.All",
    ),
    ("GET", "/v1.0/roleManagement/directory/roleDefinitions/{id}"): _ROLE_READ,
    ("GET", "/v1.0/roleManagement/directory/roleAssignments"): _ROLE_READ,
    ("POST", "/v1.0/roleManagement/directory/roleAssignments"): _rights("RoleManagement.ReadWrite.Directory"),
}


# Reading a user's properties: a directory-object list (group members) shows a user member whole only to a
# caller holding one of these; to others it gives the id and @odata.type alone ("limited information").
USER_PROPERTIES_READ = _USER_READ


def graph_rights(method: str, route: str, kind: ObjectKind | None) -> Rights | None:
    """The rights a Graph operation needs; None for one that needs none of its own ($batch: each inner
    request is checked by itself) or that the sandbox does not serve."""
    needed = GRAPH_ROUTES.get((method, route))
    if needed is None or isinstance(needed, Rights):
        return needed
    # An object of no listed kind (or none at all): the route's own 404 answers.
    return needed.get(kind) if kind is not None else None


def every_permission() -> frozenset[str]:
    """Every application permission some route accepts."""
    return frozenset(
        p
        for needed in GRAPH_ROUTES.values()
        for rights in (needed.values() if isinstance(needed, Mapping) else [needed])
        for p in rights.permissions
    )


# Exchange: management roles and the cmdlets of them the product (and the sandbox) knows.
ROLE_CMDLETS: dict[str, frozenset[str]] = {
    # Get-AcceptedDomain here is unconfirmed (docs/permissions.md): a recipient's creation reads the domains.
    "Mail Recipient Creation": frozenset(
        {"New-MailContact", "Remove-MailContact", "Get-MailContact", "Get-Recipient", "Get-AcceptedDomain"}
    ),
    "Mail Recipients": frozenset({"Get-MailContact", "Set-MailContact", "Set-Contact", "Get-Recipient"}),
    "Distribution Groups": frozenset(
        {
            "Get-DistributionGroup",
            "Set-DistributionGroup",
            "Get-DistributionGroupMember",
            "Add-DistributionGroupMember",
            "Remove-DistributionGroupMember",
            "Get-UnifiedGroup",
            "Set-UnifiedGroup",
            "Get-UnifiedGroupLinks",
            "Add-UnifiedGroupLinks",
            "Remove-UnifiedGroupLinks",
            "Get-Recipient",
        }
    ),
    "Security Group Creation and Membership": frozenset(
        {"Add-DistributionGroupMember", "Remove-DistributionGroupMember", "Get-DistributionGroupMember"}
    ),
    "Message Tracking": frozenset({"Get-MessageTrace", "Get-MessageTraceV2", "Get-MessageTraceDetailV2"}),
    "View-Only Recipients": frozenset(
        {
            "Get-MailContact",
            "Get-Recipient",
            "Get-DistributionGroup",
            "Get-DistributionGroupMember",
            "Get-UnifiedGroup",
            "Get-UnifiedGroupLinks",
        }
    ),
    "View-Only Configuration": frozenset({"Get-AcceptedDomain"}),
    "Remote and Accepted Domains": frozenset({"Get-AcceptedDomain"}),
}
ROLE_GROUPS: dict[str, frozenset[str]] = {
    "Organization Management": frozenset(ROLE_CMDLETS),
    # Exchange Server's Recipient Management also holds Message Tracking, but Exchange Online's message
    # trace page does not name this group among those that may trace (docs/permissions.md): the stricter reading.
    "Recipient Management": frozenset({"Mail Recipient Creation", "Mail Recipients", "Distribution Groups"}),
    "View-Only Organization Management": frozenset(
        {"View-Only Recipients", "View-Only Configuration", "Message Tracking"}
    ),
}
# Entra directory roles (wids) -> the Exchange role group each stands for inside Exchange Online.
DIRECTORY_ROLE_GROUPS: dict[str, str] = {
    GLOBAL_ADMINISTRATOR: "Organization Management",
    EXCHANGE_ADMINISTRATOR: "Organization Management",
    EXCHANGE_RECIPIENT_ADMINISTRATOR: "Recipient Management",
    GLOBAL_READER: "View-Only Organization Management",
}


def exchange_roles(caller: Caller, exchange_role_groups: frozenset[str]) -> frozenset[str]:
    """The management roles a caller holds: through its directory roles and its Exchange-side role groups.

    `exchange_role_groups`: role groups (or single roles) the service principal was added to in Exchange."""
    groups = {DIRECTORY_ROLE_GROUPS[w] for w in caller.directory_roles if w in DIRECTORY_ROLE_GROUPS}
    groups |= exchange_role_groups
    roles: set[str] = set()
    for name in groups:
        roles |= ROLE_GROUPS.get(name, {name} if name in ROLE_CMDLETS else set())
    return frozenset(roles)


def cmdlets_of(roles: frozenset[str]) -> frozenset[str]:
    return frozenset(cmdlet for role in roles for cmdlet in ROLE_CMDLETS.get(role, ()))
