"""The rights each directory call of the app needs: the one list `onboard grant` grants and outcomes name.

Decided from Microsoft's permission tables in docs/permissions.md ("The app's rights, decided"). A
call refused for a missing right ends PermissionDenied naming the right here, so the operator
knows what to grant; tests/test_rights.py holds the grant plan to this list.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.contracts import GroupKind

# Microsoft Graph application permissions
GROUP_READ = "Group.Read.All"
USER_READ = "User.Read.All"
ORG_CONTACT_READ = "OrgContact.Read.All"
USER_INVITE = "User.Invite.All"
GROUP_MEMBER_WRITE = "GroupMember.ReadWrite.All"
MAIL_SEND = "Mail.Send"  # tenant-wide: only when the operator chooses it over APPLICATION_MAIL_SEND
# Exchange Online: the application permission, the Entra role, and roles kept on the Exchange side
MANAGE_AS_APP = "Exchange.ManageAsApp"
RECIPIENT_ADMINISTRATOR = "Exchange Recipient Administrator"
SECURITY_GROUP_MEMBERSHIP = "Security Group Creation and Membership"
MESSAGE_TRACKING = "Message Tracking"
APPLICATION_MAIL_SEND = "Application Mail.Send"

# Entra directory roles' template ids, as a token's `wids` claim carries them.
ROLE_TEMPLATE_IDS: dict[str, str] = {RECIPIENT_ADMINISTRATOR: "31392ffb-586c-42d1-9346-e59415a2cc4e"}

# GraphDirectory's calls (shared/directory/ports.py) -> the Graph permission each needs.
GRAPH_CALLS: dict[str, str] = {
    "get_group": GROUP_READ,
    "find_group_by_mail": GROUP_READ,
    "find_user_by_mail": USER_READ,
    "find_user_for_invitation": USER_READ,
    "invite_guest": USER_INVITE,
    "add_group_member": GROUP_MEMBER_WRITE,
    "remove_group_member": GROUP_MEMBER_WRITE,
    "list_group_member_ids": GROUP_READ,
    "first_page_of_groups": GROUP_READ,
    "is_group_member": f"{USER_READ} and {GROUP_READ}",
    # Group.Read.All lists the members; a user member's accountEnabled is returned only with User.Read.All.
    "group_members_within": f"{GROUP_READ} and {USER_READ}",
    "user_account_enabled": USER_READ,
    "is_contact_member": ORG_CONTACT_READ,
    "contact_group_ids": ORG_CONTACT_READ,
    # RBAC for Applications, scoped to the welcome mailbox (or Mail.Send tenant-wide, if granted so)
    "send_mail": f"{APPLICATION_MAIL_SEND} for the welcome mailbox",
}
# Cmdlets whose role is not the Entra role's: every other cmdlet the app calls needs RECIPIENT_ADMINISTRATOR.
EXCHANGE_CMDLETS: dict[str, str] = {"Get-MessageTraceV2": MESSAGE_TRACKING}


def exchange_role_for(cmdlet: str) -> str:
    return EXCHANGE_CMDLETS.get(cmdlet, RECIPIENT_ADMINISTRATOR)


# The kinds the pipeline onboards into: a mail contact joins the first two through Exchange, a guest the third.
CONTACT_KINDS = frozenset({GroupKind.DISTRIBUTION, GroupKind.MAIL_ENABLED_SECURITY})
SUPPORTED_KINDS = CONTACT_KINDS | {GroupKind.MICROSOFT_365}


@dataclass(frozen=True)
class Features:
    """What a deployment uses; it decides the rights the app needs, and only those (docs/permissions.md).

    `onboard grant` grants them (cli/grant_plan.py) and the app's self-check holds its token to them."""

    group_kinds: frozenset[GroupKind]
    welcome: bool  # ONBOARDING_WELCOME_SENDER is set
    tenant_wide_mail_send: bool = False  # the operator chose Graph Mail.Send over the scoped Exchange role

    def app_roles(self) -> tuple[str, ...]:
        """Application permissions: Graph's, then Exchange's, in the order the grant lists them."""
        roles = [GROUP_READ, USER_READ]
        if self.group_kinds & CONTACT_KINDS:
            roles.append(ORG_CONTACT_READ)
        if GroupKind.MICROSOFT_365 in self.group_kinds:
            roles += [USER_INVITE, GROUP_MEMBER_WRITE]
        if self.welcome and self.tenant_wide_mail_send:
            roles.append(MAIL_SEND)
        return (*roles, MANAGE_AS_APP)

    def directory_roles(self) -> tuple[str, ...]:
        return (RECIPIENT_ADMINISTRATOR,)

    def exchange_side(self) -> tuple[str, ...]:
        """The Exchange roles no Entra role carries: only Exchange Online PowerShell gives them."""
        wanted: list[str] = []
        if GroupKind.MAIL_ENABLED_SECURITY in self.group_kinds:
            wanted.append(SECURITY_GROUP_MEMBERSHIP)
        if self.welcome and not self.tenant_wide_mail_send:
            wanted.append(APPLICATION_MAIL_SEND)
        if self.welcome:
            wanted.append(MESSAGE_TRACKING)
        return tuple(wanted)
