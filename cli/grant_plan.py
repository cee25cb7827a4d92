"""What `onboard grant` gives the function app's managed identity: the plan, derived from the features
in use (infra/README.md, "Rights of the function app's managed identity"), and the Exchange Online
PowerShell steps for what Graph cannot grant. Pure data: cli.grant_graph carries a plan out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.contracts import GroupKind
from shared.directory.rights import (
    APPLICATION_MAIL_SEND,
    GROUP_MEMBER_WRITE,
    GROUP_READ,
    MAIL_SEND,
    MANAGE_AS_APP,
    MESSAGE_TRACKING,
    ORG_CONTACT_READ,
    RECIPIENT_ADMINISTRATOR,
    ROLE_TEMPLATE_IDS,
    SECURITY_GROUP_MEMBERSHIP,
    USER_INVITE,
    USER_READ,
    Features,
)
from shared.powershell import quoted

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
PUBLIC_GRAPH = "https://graph.microsoft.com/v1.0"
# The Exchange-side objects the printed steps create (the app's self-check names the first in its manual check).
SECURITY_GROUP_ROLE_GROUP = "Onboarding security group membership"
MESSAGE_TRACE_ROLE_GROUP = "Onboarding message trace"
WELCOME_SENDER_SCOPE = "Onboarding welcome sender"


class GroupKindInUse(StrEnum):
    DISTRIBUTION = "distribution"
    MAIL_ENABLED_SECURITY = "mail-enabled-security"
    M365 = "m365"


@dataclass(frozen=True)
class AppRoleGrant:
    resource_app_id: str
    resource: str
    value: str
    documented_id: str  # Microsoft's published id: a cross-check, the tenant's resource is the authority
    why: str


@dataclass(frozen=True)
class DirectoryRoleGrant:
    template_id: str
    name: str
    why: str


@dataclass(frozen=True)
class Identity:
    object_id: str
    app_id: str
    display_name: str


@dataclass(frozen=True)
class ManualStep:
    title: str
    commands: tuple[str, ...]


def _graph(value: str, documented_id: str, why: str) -> AppRoleGrant:
    return AppRoleGrant(GRAPH_APP_ID, "Microsoft Graph", value, documented_id, why)


EXCHANGE_MANAGE_AS_APP = AppRoleGrant(
    EXCHANGE_APP_ID,
    "Office 365 Exchange Online",
    MANAGE_AS_APP,
    "dc50a0fb-09a3-484d-be87-e023b12c6440",
    "call the Exchange admin endpoint (every group kind: accepted domains, contacts, sender settings)",
)
EXCHANGE_RECIPIENT_ADMINISTRATOR = DirectoryRoleGrant(
    ROLE_TEMPLATE_IDS[RECIPIENT_ADMINISTRATOR],
    RECIPIENT_ADMINISTRATOR,
    "New-MailContact, Get-MailContact, Get-AcceptedDomain, Add-DistributionGroupMember, Get-/Set-DistributionGroup, "
    "Get-/Set-UnifiedGroup, Get-UnifiedGroupLinks",
)


@dataclass(frozen=True)
class ExchangeAssignment:
    """A right kept on the Exchange side, which only Exchange Online PowerShell can give (printed as steps):
    an Exchange role for the service principal, or an RBAC for Applications role limited to one mailbox."""

    role: str
    recipient_scope: str | None
    why: str


@dataclass(frozen=True)
class GrantPlan:
    app_roles: tuple[AppRoleGrant, ...]
    directory_roles: tuple[DirectoryRoleGrant, ...]
    group_kinds: frozenset[GroupKindInUse]
    welcome_sender: str | None
    tenant_wide_mail_send: bool
    exchange_side: tuple[ExchangeAssignment, ...] = ()  # what the printed Exchange steps give

    def manual_steps(self, identity: Identity) -> list[ManualStep]:
        """Exchange Online PowerShell for what Graph cannot grant; empty when nothing is needed.

        Every value is a single-quoted literal (shared/powershell.py): the identity's display name
        and the sender come from the tenant and the settings, and must paste as data, never as code."""
        object_id, app_id = quoted(identity.object_id), quoted(identity.app_id)
        role_group_member = f"(Get-ServicePrincipal -Identity {object_id}).Identity"
        roles = {assignment.role for assignment in self.exchange_side}
        steps: list[ManualStep] = []
        if roles:
            steps.append(
                ManualStep(
                    "Connect to Exchange Online PowerShell as an Exchange administrator and register the identity "
                    "(skip New-ServicePrincipal if Get-ServicePrincipal already finds it)",
                    (
                        "Connect-ExchangeOnline",
                        f"New-ServicePrincipal -AppId {app_id} -ObjectId {object_id} "
                        f"-DisplayName {quoted(identity.display_name)}",
                    ),
                )
            )
        if SECURITY_GROUP_MEMBERSHIP in roles:
            role_group = quoted(SECURITY_GROUP_ROLE_GROUP)
            steps.append(
                ManualStep(
                    f"Mail-enabled security groups: {RECIPIENT_ADMINISTRATOR} cannot change their membership; "
                    f'a role group with only "{SECURITY_GROUP_MEMBERSHIP}" can',
                    (
                        f"New-RoleGroup -Name {role_group} -Roles {quoted(SECURITY_GROUP_MEMBERSHIP)}",
                        f"Add-RoleGroupMember -Identity {role_group} -Member {role_group_member}",
                    ),
                )
            )
        if APPLICATION_MAIL_SEND in roles and self.welcome_sender is not None:
            scope = quoted(WELCOME_SENDER_SCOPE)
            # The OPATH filter is a string holding a string: the sender is quoted inside it, then the whole.
            sender_filter = quoted(f"PrimarySmtpAddress -eq {quoted(self.welcome_sender)}")
            steps.append(
                ManualStep(
                    "Welcome message: Mail.Send for the welcome mailbox only (RBAC for Applications)",
                    (
                        f"New-ManagementScope -Name {scope} -RecipientRestrictionFilter {sender_filter}",
                        f"New-ManagementRoleAssignment -App {object_id} -Role {quoted(APPLICATION_MAIL_SEND)} "
                        f"-CustomResourceScope {scope}",
                        f"Test-ServicePrincipalAuthorization -Identity {object_id} "
                        f"-Resource {quoted(self.welcome_sender)}",
                    ),
                )
            )
        if MESSAGE_TRACKING in roles:
            role_group = quoted(MESSAGE_TRACE_ROLE_GROUP)
            steps.append(
                ManualStep(
                    "Welcome message: read the message trace (Get-MessageTraceV2) to confirm delivery",
                    (
                        f"New-RoleGroup -Name {role_group} -Roles {quoted(MESSAGE_TRACKING)}",
                        f"Add-RoleGroupMember -Identity {role_group} -Member {role_group_member}",
                    ),
                )
            )
        return steps


# Every app role a plan may hold, with Microsoft's id and why the product needs it.
_APP_ROLES = {
    grant.value: grant
    for grant in (
        _graph(GROUP_READ, "5b567255-7703-4780-807c-7be8301ae99b", "resolve the target group and its kind"),
        _graph(USER_READ, "df021288-bdef-4463-88db-98f22de89214", "find existing guests and internal users"),
        _graph(
            ORG_CONTACT_READ,
            "e1a88a34-94c4-4418-be12-c87b00e26bea",
            "check a mail contact's membership (GET /contacts/{id}/memberOf; checkMemberGroups would need "
            "Directory.Read.All)",
        ),
        _graph(USER_INVITE, "09850681-111b-4a89-9bed-3f2cae46d706", "invite the guest (Microsoft 365 groups)"),
        _graph(GROUP_MEMBER_WRITE, "dbaae8cf-10b5-4b86-a4a1-f871c94c6695", "add the guest to a Microsoft 365 group"),
        _graph(MAIL_SEND, "b633e1c5-b582-4048-a93e-9f11b44c7e96", "send the welcome message (from ANY mailbox)"),
        EXCHANGE_MANAGE_AS_APP,
    )
}
_DIRECTORY_ROLES = {role.name: role for role in (EXCHANGE_RECIPIENT_ADMINISTRATOR,)}
_EXCHANGE_SIDE_WHY = {
    SECURITY_GROUP_MEMBERSHIP: "membership of mail-enabled security groups",
    APPLICATION_MAIL_SEND: "send the welcome message",
    MESSAGE_TRACKING: "confirm the welcome message's delivery",
}
KIND_IN_USE = {
    GroupKindInUse.DISTRIBUTION: GroupKind.DISTRIBUTION,
    GroupKindInUse.MAIL_ENABLED_SECURITY: GroupKind.MAIL_ENABLED_SECURITY,
    GroupKindInUse.M365: GroupKind.MICROSOFT_365,
}


def plan_for(
    group_kinds: frozenset[GroupKindInUse], welcome_sender: str | None, *, tenant_wide_mail_send: bool = False
) -> GrantPlan:
    """The rights the configured features use, and only those (shared/directory/rights.py, Features)."""
    features = Features(
        frozenset(KIND_IN_USE[kind] for kind in group_kinds), welcome_sender is not None, tenant_wide_mail_send
    )
    return GrantPlan(
        tuple(_APP_ROLES[value] for value in features.app_roles()),
        tuple(_DIRECTORY_ROLES[name] for name in features.directory_roles()),
        group_kinds,
        welcome_sender,
        tenant_wide_mail_send,
        tuple(
            ExchangeAssignment(
                role, welcome_sender if role == APPLICATION_MAIL_SEND else None, _EXCHANGE_SIDE_WHY[role]
            )
            for role in features.exchange_side()
        ),
    )


class GrantError(Exception):
    """One line for the operator; no traceback."""
