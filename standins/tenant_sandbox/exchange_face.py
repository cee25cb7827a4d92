"""The Exchange face: the InvokeCommand endpoint the ExchangeOnlineManagement module calls.

Answers are {"value": [...]} with @odata.nextLink paging; failures carry Exchange's envelope
(error.message "Invalid Operation", "ErrorId|ExceptionType|text" in error.details[0].message,
innererror.internalexception, and the X-ExceptionType header) with Microsoft's exception types and
texts. Parameters are data: a display name full of quotes, semicolons or $(...) is stored as
written, never evaluated. Sources: docs/microsoft-365-facts.md.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.contracts import GroupKind
from standins.tenant_sandbox.model import (
    CUSTOM_ATTRIBUTE_MAX,
    CUSTOM_ATTRIBUTES,
    Contact,
    Directory,
    Group,
    TenantInfo,
    TraceRow,
    User,
)

_EX = "Microsoft.Exchange.Configuration.Tasks."
NOT_FOUND = _EX + "ManagementObjectNotFoundException"
MEMBER_EXISTS = "Microsoft.Exchange.Management.Tasks.MemberAlreadyExistsException"
MEMBER_MISSING = "Microsoft.Exchange.Management.Tasks.MemberNotFoundException"
NAME_IN_USE = "Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException"
ADDRESS_IN_USE = "Microsoft.Exchange.Data.Directory.ProxyAddressExistsException"
INVALID_VALUE = "Microsoft.Exchange.Data.DataValidationException"
BAD_PARAMETER = "System.Management.Automation.ParameterBindingException"
GROUP_MANAGER_REQUIRED = _EX + "OperationRequiresGroupManagerException"
TASK_FAILED = _EX + "TaskException"
MANAGER_CHECK = "BypassSecurityGroupManagerCheck"
# The management role that makes MANAGER_CHECK available on distribution and mail-enabled security
# groups (Add-DistributionGroupMember docs); the Organization Management role group holds it.
BYPASS_ROLES = frozenset({"Security Group Creation and Membership"})
# The well-known system mailbox app-only callers anchor on; the sandbox also accepts any UPN: anchor.
ANCHOR_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
# The largest page a caller may ask for with `Prefer: odata.maxpagesize` (ExoHelper caps its PageSize
# at 1,000: GreyCorbel/ExoHelper Commands/Public/Invoke-ExoCommand.ps1).
MAX_PAGE_SIZE = 1000
_MAX_PAGE_SIZE = re.compile(r"odata\.maxpagesize\s*=\s*(\d+)", re.IGNORECASE)
CONCURRENCY_LIMIT_ANSWER = (
    "You have reached the maximum number of concurrent requests per tenant. Please wait and try again."
)
TRACE_MAX_DAYS = 10  # Get-MessageTraceV2: at most 10 days per query, within the last 90
TRACE_DEFAULT_ROWS, TRACE_MAX_ROWS = 1000, 5000
# Get-MessageTraceV2: "A maximum of 100 query requests are accepted within a 5 minute running window" per tenant.
TRACE_QUOTA_WINDOW_SECONDS = 300.0
TRACE_THROTTLED = _EX + "ThrottlingException"
# Exchange's recipient attributes for an organization's own use: CustomAttribute1 to 15, 1024 characters each.
HIDDEN = "HiddenFromAddressListsEnabled"

Cmdlet = Callable[[dict[str, Any]], list[dict[str, Any]]]
# The date form CIPP sends ((Get-Date).ToUniversalTime().ToString('s'), optionally with a Z).
_CALLERS_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z?")


class CmdletError(Exception):
    def __init__(self, exception_type: str, text: str, status: int = 400, *, retry_after: int | None = None) -> None:
        super().__init__(text)
        self.exception_type = exception_type
        self.text = text
        self.status = status
        self.retry_after = retry_after


TypeIn = Literal["everywhere", "header", "details", "internal_exception"]


def exchange_error(
    status: int, code: str, exception_type: str, text: str, *, type_in: TypeIn = "everywhere"
) -> JSONResponse:
    """Exchange's error envelope; `type_in` narrows where the exception type appears, as some answers do."""
    error: dict[str, Any] = {"code": code, "message": "Invalid Operation"}
    if type_in in ("everywhere", "details"):
        error_id = "Ex" + uuid.uuid4().hex[:6].upper()
        error["details"] = [{"code": "Client", "target": "", "message": f"{error_id}|{exception_type}|{text}"}]
    if type_in in ("everywhere", "internal_exception"):
        error["innererror"] = {
            "message": "Invalid Operation",
            "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
            "internalexception": {"message": text, "type": exception_type},
        }
    headers = {"request-id": str(uuid.uuid4())}
    if type_in in ("everywhere", "header"):
        headers["X-ExceptionType"] = exception_type
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def anchor_problem(anchor: str | None, tenant: TenantInfo) -> str | None:
    """None for an anchor the sandbox routes: APP:<system mailbox>@<tenant id or initial domain>, or UPN:<address>."""
    kind, _, address = (anchor or "").partition(":")
    if kind.upper() == "UPN" and "@" in address:
        return None
    mailbox, _, where = address.rpartition("@")
    if (
        kind.upper() == "APP"
        and mailbox == ANCHOR_MAILBOX
        and where.lower() in {tenant.id.lower(), tenant.initial_domain.lower()}
    ):
        return None
    return f"The X-AnchorMailbox header {anchor!r} is missing or not a routable anchor (APP:{ANCHOR_MAILBOX}@<tenant id>, or UPN:<user>)."


def _not_found(identity: str, tenant: str) -> CmdletError:
    return CmdletError(
        NOT_FOUND,
        f"The operation couldn't be performed because object '{identity}' couldn't be found on '{tenant}'.",
        404,
    )


def _contact_json(contact: Contact, *, in_entra: bool) -> dict[str, Any]:
    """`in_entra`: Entra has the contact's object; before that its ExternalDirectoryObjectId is empty."""
    return {
        "Guid": contact.guid,
        "Identity": contact.name,
        "Name": contact.name,
        "DisplayName": contact.display_name,
        "ExternalEmailAddress": "SMTP:" + contact.external_email_address,
        "PrimarySmtpAddress": contact.external_email_address,
        "FirstName": contact.first_name or "",
        "LastName": contact.last_name or "",
        "ExternalDirectoryObjectId": contact.external_directory_object_id if in_entra else "",
        "RecipientType": "MailContact",
        "RecipientTypeDetails": "MailContact",
        "HiddenFromAddressListsEnabled": contact.hidden_from_address_lists,
    } | {name: contact.custom_attributes.get(name, "") for name in CUSTOM_ATTRIBUTES}


def _user_json(user: User) -> dict[str, Any]:
    """A guest whose proxy address Entra withheld is a mail user without an SMTP address."""
    kind = "UserMailbox" if user.user_type == "Member" else "MailUser"
    return {
        "Guid": user.exchange_guid,
        "Identity": user.display_name,
        "Name": user.display_name,
        "DisplayName": user.display_name,
        "PrimarySmtpAddress": "" if user.smtp_withheld else user.mail,
        "ExternalDirectoryObjectId": user.id,
        "RecipientType": kind,
        "RecipientTypeDetails": "GuestMailUser" if user.user_type == "Guest" else kind,
        "HiddenFromAddressListsEnabled": False,
    } | {name: "" for name in CUSTOM_ATTRIBUTES}


def _group_json(group: Group, links: Callable[[list[str]], list[str]]) -> dict[str, Any]:
    """`links` turns the stored sender identities into what Exchange returns: object GUIDs (since May 2025)."""
    details = {
        GroupKind.MICROSOFT_365: "GroupMailbox",
        GroupKind.DISTRIBUTION: "MailUniversalDistributionGroup",
        GroupKind.MAIL_ENABLED_SECURITY: "MailUniversalSecurityGroup",
        GroupKind.SECURITY: "UniversalSecurityGroup",
    }[group.kind]
    return {
        "Guid": group.exchange_guid,
        "Identity": group.display_name,
        "Name": group.display_name,
        "DisplayName": group.display_name,
        "PrimarySmtpAddress": group.mail,
        "ExternalDirectoryObjectId": group.id,
        "RecipientType": details,
        "RecipientTypeDetails": details,
        "RequireSenderAuthenticationEnabled": group.require_sender_authentication,
        "AcceptMessagesOnlyFromSendersOrMembers": links(group.accept_messages_only_from),
        "RejectMessagesFromSendersOrMembers": links(group.reject_messages_from),
        "ModerationEnabled": group.moderation_enabled,
        "ManagedBy": links(group.managed_by),
        "AutoSubscribeNewMembers": group.auto_subscribe_new_members,
    }


def _trace_json(row: TraceRow) -> dict[str, Any]:
    return {
        "MessageTraceId": row.message_trace_id,
        "MessageId": row.message_id,
        "Received": datetime.fromtimestamp(row.received, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "SenderAddress": row.sender,
        "RecipientAddress": row.recipient,
        "Subject": row.subject,
        "Status": row.status,
        "Size": row.size,
        "FromIP": "127.0.0.1",
        "ToIP": None,
    }


class ExchangeFace:
    def __init__(self, directory: Directory, page_size: int, max_page_size: int = MAX_PAGE_SIZE) -> None:
        """`page_size` rows a page unless `Prefer: odata.maxpagesize` asks for up to `max_page_size`."""
        self.d = directory
        self.page_size = page_size
        self.max_page_size = max_page_size
        self.caller_roles: frozenset[str] = frozenset()
        self.trace_queries: deque[float] = deque()  # when each message-trace query of the window was accepted
        self.cmdlets: dict[str, Cmdlet] = {
            "Get-AcceptedDomain": self.get_accepted_domain,
            "New-MailContact": self.new_mail_contact,
            "Get-MailContact": self.get_mail_contact,
            "Set-MailContact": self.set_mail_contact,
            "Set-Contact": self.set_contact,
            "Remove-MailContact": self.remove_mail_contact,
            "Get-Recipient": self.get_recipient,
            "Add-DistributionGroupMember": self.add_member,
            "Remove-DistributionGroupMember": self.remove_member,
            "Get-DistributionGroupMember": self.get_members,
            "Get-DistributionGroup": lambda p: self.get_group(p, unified=False),
            "Set-DistributionGroup": lambda p: self.set_group(p, unified=False),
            "Get-UnifiedGroup": lambda p: self.get_group(p, unified=True),
            "Set-UnifiedGroup": lambda p: self.set_group(p, unified=True),
            "Get-MessageTraceV2": self.get_message_trace,
            "Get-UnifiedGroupLinks": self.get_unified_group_links,
            "Add-UnifiedGroupLinks": self.change_unified_group_links,
            "Remove-UnifiedGroupLinks": self.change_unified_group_links,
        }

    def routes(self) -> list[Route]:
        return [Route("/adminapi/beta/{tenant}/InvokeCommand", self.invoke, methods=["POST"])]

    async def invoke(self, request: Request) -> Response:
        if request.path_params["tenant"] != self.d.tenant.id:
            return exchange_error(400, "TenantNotFound", NOT_FOUND, "The tenant is not known.")
        if problem := anchor_problem(request.headers.get("X-AnchorMailbox"), self.d.tenant):
            # Exchange's own answer to a missing anchor is not documented: refused here (stricter).
            return exchange_error(400, "BadRequest", TASK_FAILED, problem)
        try:
            payload = await request.json()
            cmdlet_input = payload["CmdletInput"]
            name = str(cmdlet_input["CmdletName"])
            parameters = dict(cmdlet_input.get("Parameters") or {})
        except (ValueError, KeyError, TypeError):
            return exchange_error(400, "BadRequest", "System.ArgumentException", "CmdletInput is required.")
        handler = self.cmdlets.get(name)
        if handler is None:
            text = f"The term '{name}' is not recognized as a name of a cmdlet."
            return exchange_error(400, "BadRequest", "System.Management.Automation.CommandNotFoundException", text)
        try:
            with self.d.lock:
                # The caller's management roles (the app's gate put them there): parameters follow them too.
                self.caller_roles = frozenset(getattr(request.state, "exchange_roles", frozenset()))
                rows = handler(parameters)
        except CmdletError as error:
            if error.retry_after is not None:
                answer = exchange_error(error.status, "TooManyRequests", error.exception_type, error.text)
                answer.headers["Retry-After"] = str(error.retry_after)
                return answer
            return exchange_error(error.status, "BadRequest", error.exception_type, error.text)
        skip_text = request.query_params.get("$skip", "0")
        skip = int(skip_text) if skip_text.isdigit() else 0
        size = self._page_size(request.headers.get("Prefer", ""))
        body: dict[str, Any] = {"value": rows[skip : skip + size]}
        if warnings := getattr(request.state, "adminapi_warnings", ()):
            body["@adminapi.warnings"] = list(warnings)
            if not body["value"]:
                del body["value"]  # a change that printed nothing answers with the warnings alone
        if skip + size < len(rows):
            body["@odata.nextLink"] = f"{request.url.replace(query='')}?$skip={skip + size}"
        return JSONResponse(body)

    def _page_size(self, prefer: str) -> int:
        """OData's `Prefer: odata.maxpagesize=N`, as ExoHelper and CIPP send it (1,000 at most)."""
        asked = _MAX_PAGE_SIZE.search(prefer)
        return min(int(asked.group(1)), self.max_page_size) if asked and int(asked.group(1)) > 0 else self.page_size

    def _required(self, parameters: dict[str, Any], name: str) -> str:
        value = parameters.get(name)
        if value is None or str(value) == "":
            raise CmdletError(BAD_PARAMETER, f"Cannot bind argument to parameter '{name}' because it is null or empty.")
        return str(value)

    def _contact(self, parameters: dict[str, Any]) -> Contact:
        identity = self._required(parameters, "Identity")
        contact = self.d.contact_by_identity(identity)
        if contact is None:
            raise _not_found(identity, self.d.tenant.initial_domain)
        return contact

    def get_accepted_domain(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        initial = self.d.tenant.initial_domain.lower()
        return [
            {
                "DomainName": domain,
                "Name": domain,
                "DomainType": "Authoritative",
                "InitialDomain": domain.lower() == initial,
            }
            for domain in self.d.accepted_domains()
        ]

    # Mail contacts

    def _check_names(self, name: str, display_name: str) -> None:
        if len(name) > 64:
            raise CmdletError(
                INVALID_VALUE,
                f"The length of the property is too long. The maximum length is 64 and the length of the value provided is {len(name)}.",
            )
        if len(display_name) > 256:
            raise CmdletError(INVALID_VALUE, "The length of DisplayName exceeds 256.")

    def new_mail_contact(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        name = self._required(parameters, "Name")
        address = self._required(parameters, "ExternalEmailAddress")
        address = address.split(":", 1)[1] if address.lower().startswith("smtp:") else address
        display_name = str(parameters.get("DisplayName") or name)
        self._check_names(name, display_name)
        if "@" not in address:
            raise CmdletError(INVALID_VALUE, f'"{address}" isn\'t a valid SMTP address.')
        if self.d.name_taken(name):
            raise CmdletError(NAME_IN_USE, f'The name "{name}" is already being used. Please try another name.')
        owner = self.d.address_owner(address)
        if owner is not None:
            raise CmdletError(
                ADDRESS_IN_USE,
                f'The proxy address "SMTP:{address}" is already being used by the proxy addresses or LegacyExchangeDN of '
                f'"{owner}". Please choose another proxy address.',
            )
        first, last = parameters.get("FirstName"), parameters.get("LastName")
        contact = self.d.add_contact(
            name, display_name, address, str(first) if first else None, str(last) if last else None
        )
        return [self._contact_row(contact)]

    def _contact_row(self, contact: Contact) -> dict[str, Any]:
        return _contact_json(contact, in_entra=self.d.replicated(contact))

    def get_mail_contact(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        if "Identity" not in parameters:
            return [self._contact_row(c) for c in self.d.contacts.values()]
        return [self._contact_row(self._contact(parameters))]

    def _names(self, contact: Contact, parameters: dict[str, Any]) -> None:
        """-Name and -DisplayName, which both Set-MailContact and Set-Contact take."""
        display_name = str(parameters.get("DisplayName", contact.display_name))
        name = str(parameters.get("Name", contact.name))
        self._check_names(name, display_name)
        if name.lower() != contact.name.lower() and self.d.name_taken(name):
            raise CmdletError(NAME_IN_USE, f'The name "{name}" is already being used. Please try another name.')
        contact.name, contact.display_name = name, display_name

    def _only(self, parameters: dict[str, Any], accepted: set[str]) -> None:
        """A parameter the cmdlet does not have is PowerShell's binding error (FirstName is Set-Contact's,
        CustomAttribute1 Set-MailContact's)."""
        for name in parameters:
            if name not in accepted:
                raise CmdletError(BAD_PARAMETER, f"A parameter cannot be found that matches parameter name '{name}'.")

    def set_mail_contact(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        self._only(parameters, {"Identity", "Name", "DisplayName", HIDDEN, *CUSTOM_ATTRIBUTES})
        contact = self._contact(parameters)
        self._names(contact, parameters)
        if HIDDEN in parameters:
            if not isinstance(parameters[HIDDEN], bool):
                raise CmdletError(BAD_PARAMETER, "Cannot convert value to type System.Boolean.")
            contact.hidden_from_address_lists = parameters[HIDDEN]
        for name in CUSTOM_ATTRIBUTES:
            if name in parameters:
                value = "" if parameters[name] is None else str(parameters[name])
                if len(value) > CUSTOM_ATTRIBUTE_MAX:
                    raise CmdletError(
                        INVALID_VALUE,
                        f"The length of the property is too long. The maximum length is {CUSTOM_ATTRIBUTE_MAX} and "
                        f"the length of the value provided is {len(value)}.",
                    )
                if value:
                    contact.custom_attributes[name] = value
                else:
                    contact.custom_attributes.pop(name, None)  # $null or "" clears the attribute
        self.d.update_contact(contact)
        return []

    def set_contact(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """The contact's person attributes (names); a mail contact is a contact, so its Guid identifies it."""
        self._only(parameters, {"Identity", "Name", "DisplayName", "FirstName", "LastName"})
        contact = self._contact(parameters)
        self._names(contact, parameters)
        for field, key in (("first_name", "FirstName"), ("last_name", "LastName")):
            if key in parameters:
                setattr(contact, field, str(parameters[key]) if parameters[key] else None)
        self.d.update_contact(contact)
        return []

    def remove_mail_contact(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        self.d.remove_contact(self._contact(parameters))
        return []

    def get_recipient(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """Any mail recipient by address, name or id: a contact, a user, or a group."""
        identity = self._required(parameters, "Identity")
        contact = self.d.contact_by_identity(identity)
        if contact is not None:
            return [self._contact_row(contact)]
        user = self.d.exchange_user(identity)
        if user is not None:
            return [_user_json(user)]
        group = self.d.exchange_group(identity)
        if group is not None and group.mail:
            return [_group_json(group, self._links)]
        raise _not_found(identity, self.d.tenant.initial_domain)

    # Groups and membership

    def _exchange_group(self, identity: str, *, unified: bool) -> Group:
        group = self.d.exchange_group(identity)
        mail_group = (
            (GroupKind.MICROSOFT_365,) if unified else (GroupKind.DISTRIBUTION, GroupKind.MAIL_ENABLED_SECURITY)
        )
        if group is None or group.kind not in mail_group:
            raise _not_found(identity, self.d.tenant.initial_domain)
        return group

    def _recipient_id(self, identity: str) -> str | None:
        """The Entra object id of the recipient Exchange's -Member names (its Guid, name or address), once
        both directories know it."""
        contact = self.d.contact_by_identity(identity)
        if contact is not None:
            return contact.external_directory_object_id if self.d.replicated(contact) else None
        user = self.d.exchange_user(identity)
        return user.id if user is not None and self.d.replicated(user) else None

    def _links(self, identities: list[str]) -> list[str]:
        """Stored sender or manager identities (addresses or ids, as the seed or a test wrote them) as
        Exchange lists them: each object's ExternalDirectoryObjectId."""
        found: list[str] = []
        for identity in identities:
            contact = self.d.contacts.get(identity) or self.d.contact_by_identity(identity)
            user = self.d.users.get(identity) or self.d.user_by_mail(identity)
            group = self.d.group_by_identity(identity)
            if contact is not None:
                found.append(contact.external_directory_object_id)
            else:
                found.append(user.id if user else group.id if group else identity)
        return found

    def _check_manager(self, group: Group, parameters: dict[str, Any]) -> None:
        """Exchange's group-manager check: the app is never among ManagedBy, so it needs the bypass switch."""
        bypass = parameters.get(MANAGER_CHECK)
        if bypass is not None and not BYPASS_ROLES & self.caller_roles:
            # Role-based access hides parameters the caller's roles do not grant.
            raise CmdletError(
                BAD_PARAMETER, f"A parameter cannot be found that matches parameter name '{MANAGER_CHECK}'."
            )
        if group.manager_check and bypass is not True:
            raise CmdletError(
                GROUP_MANAGER_REQUIRED,
                "You don't have sufficient permissions. This operation can only be performed by a manager of the group.",
            )

    def _member(self, identity: str) -> str:
        object_id = self._recipient_id(identity)
        if object_id is None:
            raise CmdletError(
                NOT_FOUND,
                f'Couldn\'t find object "{identity}". Please make sure that it was spelled correctly or specify a different object.',
                404,
            )
        return object_id

    def add_member(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        group = self._exchange_group(self._required(parameters, "Identity"), unified=False)
        self._check_manager(group, parameters)
        member = self._required(parameters, "Member")
        object_id = self._member(member)
        if object_id in group.members:
            raise CmdletError(
                MEMBER_EXISTS, f'The recipient "{member}" is already a member of the group "{group.display_name}".'
            )
        self.d.add_member(group, object_id)
        return []

    def remove_member(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        group = self._exchange_group(self._required(parameters, "Identity"), unified=False)
        self._check_manager(group, parameters)
        member = self._required(parameters, "Member")
        object_id = self._member(member)
        if object_id not in group.members:
            raise CmdletError(
                MEMBER_MISSING, f'The recipient "{member}" isn\'t a member of the group "{group.display_name}".'
            )
        self.d.remove_member(group, object_id)
        return []

    def _member_rows(self, group: Group, object_ids: list[str]) -> list[dict[str, Any]]:
        """The members Exchange knows of: a guest or a membership made through Graph only after the lag."""
        rows: list[dict[str, Any]] = []
        for object_id in object_ids:
            if not self.d.link_known_to_exchange(group, object_id):
                continue
            if object_id in self.d.contacts:
                rows.append(self._contact_row(self.d.contacts[object_id]))
            elif object_id in self.d.users and self.d.known_to_exchange(self.d.users[object_id]):
                rows.append(_user_json(self.d.users[object_id]))
        return rows

    def get_members(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        group = self._exchange_group(self._required(parameters, "Identity"), unified=False)
        return self._member_rows(group, group.members)

    def get_unified_group_links(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        group = self._exchange_group(self._required(parameters, "Identity"), unified=True)
        link_type = self._required(parameters, "LinkType").lower()
        links = {"members": group.members, "subscribers": group.subscribers, "owners": []}.get(link_type)
        if links is None:
            raise CmdletError(BAD_PARAMETER, f"Cannot bind parameter 'LinkType'. Cannot convert value \"{link_type}\".")
        return self._member_rows(group, links)

    def change_unified_group_links(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """Every sandbox token is app-only, and these cmdlets refuse app-only callers (the text is the sandbox's)."""
        self._exchange_group(self._required(parameters, "Identity"), unified=True)
        raise CmdletError(
            TASK_FAILED,
            "Microsoft 365 group members, owners and subscribers cannot be changed with app-only authentication.",
        )

    def get_group(self, parameters: dict[str, Any], *, unified: bool) -> list[dict[str, Any]]:
        group = self._exchange_group(self._required(parameters, "Identity"), unified=unified)
        return [_group_json(group, self._links)]

    def set_group(self, parameters: dict[str, Any], *, unified: bool) -> list[dict[str, Any]]:
        group = self._exchange_group(self._required(parameters, "Identity"), unified=unified)
        if not unified:
            self._check_manager(group, parameters)
        if "RequireSenderAuthenticationEnabled" in parameters:
            value = parameters["RequireSenderAuthenticationEnabled"]
            if not isinstance(value, bool):
                raise CmdletError(BAD_PARAMETER, "Cannot convert value to type System.Boolean.")
            group.require_sender_authentication = value
            self.d.update_group(group)
        return []

    # Message trace

    def _date(self, parameters: dict[str, Any], name: str, default: datetime) -> datetime:
        """Only the form the mature callers send (UTC, to the second, without an offset): how Exchange reads
        an offset or another form is unconfirmed, so the sandbox refuses them (stricter)."""
        value = parameters.get(name)
        if value is None:
            return default
        text = str(value)
        if not _CALLERS_DATE.fullmatch(text):
            raise CmdletError(BAD_PARAMETER, f'Cannot convert value "{text}" to type System.DateTime.')
        return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)

    def _spend_trace_query(self) -> None:
        """The tenant's message-trace quota: a running window; a query past it is refused until the oldest ages out."""
        now = time.monotonic()
        while self.trace_queries and self.trace_queries[0] <= now - TRACE_QUOTA_WINDOW_SECONDS:
            self.trace_queries.popleft()
        if len(self.trace_queries) >= self.d.knobs.message_trace_quota:
            wait = self.trace_queries[0] + TRACE_QUOTA_WINDOW_SECONDS - now
            raise CmdletError(
                TRACE_THROTTLED,
                "The tenant has exceeded the message trace query limit of "
                f"{self.d.knobs.message_trace_quota} queries in 5 minutes. Try again later.",
                429,
                retry_after=max(1, math.ceil(wait)),
            )
        self.trace_queries.append(now)

    def get_message_trace(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        self._spend_trace_query()
        now = datetime.now(UTC)
        end = self._date(parameters, "EndDate", now)
        start = self._date(parameters, "StartDate", end - timedelta(days=2))
        if end - start > timedelta(days=TRACE_MAX_DAYS) or start < now - timedelta(days=90) or start > end:
            raise CmdletError(
                "System.ArgumentException",
                "The time range must be within the last 90 days and at most 10 days long, with StartDate before EndDate.",
            )
        size = parameters.get("ResultSize", TRACE_DEFAULT_ROWS)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= TRACE_MAX_ROWS:
            raise CmdletError(BAD_PARAMETER, f"ResultSize must be a number from 1 to {TRACE_MAX_ROWS}.")
        sender = parameters.get("SenderAddress")
        recipient = parameters.get("RecipientAddress")
        rows = self.d.trace_rows(
            str(sender) if sender else None,
            str(recipient) if recipient else None,
            start.timestamp(),
            end.timestamp(),
        )
        return [_trace_json(row) for row in rows[:size]]
