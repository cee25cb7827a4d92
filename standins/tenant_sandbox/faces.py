"""The two HTTP faces over one Directory: a Graph v1.0 subset and Exchange's InvokeCommand endpoint.

Status codes and error bodies follow /work/shared/reference/microsoft-365.md: Graph errors are
{"error":{"code","message","innerError":{...}}}; Exchange cmdlet failures carry
"ErrorId|ExceptionType|text" in error.details[0].message. Parameters are stored as data, never
evaluated. The model lives in model.py so it can move (SQLite, fault knobs) without touching this.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.directory.ports import GroupKind
from standins.tenant_sandbox.model import Contact, Directory, Group, User

RequestLog = list[tuple[str, str, int, float]]
_FILTER = re.compile(r"^\s*mail\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)
_EX = "Microsoft.Exchange.Configuration.Tasks."
NOT_FOUND = _EX + "ManagementObjectNotFoundException"
MEMBER_EXISTS = "Microsoft.Exchange.Management.Tasks.MemberAlreadyExistsException"
NAME_IN_USE = "Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException"
ADDRESS_IN_USE = "Microsoft.Exchange.Data.Directory.ProxyAddressExistsException"
GRAPH_HOST = "https://graph.microsoft.com/v1.0/directoryObjects/"


def _authorized(request: Request) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and token.count(".") == 2 and len(token) > 10


def graph_error(request: Request, status: int, code: str, message: str) -> JSONResponse:
    request_id = str(uuid.uuid4())
    inner = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": request_id,
        "client-request-id": request.headers.get("client-request-id", request_id),
    }
    return JSONResponse(
        {"error": {"code": code, "message": message, "innerError": inner}},
        status_code=status,
        headers={"request-id": request_id},
    )


def _group_json(group: Group) -> dict[str, Any]:
    types = ["Unified"] if group.kind is GroupKind.MICROSOFT_365 else []
    if group.dynamic:
        types.append("DynamicMembership")
    return {
        "@odata.type": "#microsoft.graph.group",
        "id": group.id,
        "displayName": group.display_name,
        "mail": group.mail,
        "mailEnabled": group.kind is not GroupKind.SECURITY,
        "securityEnabled": group.kind in (GroupKind.SECURITY, GroupKind.MAIL_ENABLED_SECURITY),
        "groupTypes": types,
    }


def _user_json(user: User) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.user",
        "id": user.id,
        "displayName": user.display_name,
        "mail": user.mail,
        "userType": user.user_type,
        "otherMails": [user.mail] if user.user_type == "Guest" else [],
    }


def _contact_graph_json(contact: Contact) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.orgContact",
        "id": contact.external_directory_object_id,
        "displayName": contact.display_name,
        "mail": contact.external_email_address,
    }


class GraphFace:
    def __init__(self, directory: Directory, page_size: int) -> None:
        self.d = directory
        self.page_size = page_size

    def routes(self) -> list[Route]:
        return [
            Route("/v1.0/groups", self.list_groups, methods=["GET"]),
            Route("/v1.0/groups/{id}", self.get_group, methods=["GET"]),
            Route("/v1.0/groups/{id}/members", self.list_members, methods=["GET"]),
            Route("/v1.0/groups/{id}/members/$ref", self.add_member, methods=["POST"]),
            Route("/v1.0/users", self.list_users, methods=["GET"]),
            Route("/v1.0/invitations", self.invite, methods=["POST"]),
        ]

    def _mail_filter(self, request: Request) -> str | None:
        match = _FILTER.match(request.query_params.get("$filter", ""))
        return match.group(1).replace("''", "'") if match else None

    async def list_groups(self, request: Request) -> Response:
        if "$filter" not in request.query_params:
            with self.d.lock:
                return JSONResponse({"value": [_group_json(g) for g in self.d.groups.values()]})
        address = self._mail_filter(request)
        if address is None:
            return graph_error(request, 400, "Request_UnsupportedQuery", "Unsupported Query.")
        with self.d.lock:
            group = self.d.group_by_mail(address)
            return JSONResponse({"value": [_group_json(group)] if group else []})

    async def list_users(self, request: Request) -> Response:
        address = self._mail_filter(request)
        if address is None:
            return graph_error(request, 400, "Request_UnsupportedQuery", "Unsupported Query.")
        with self.d.lock:
            user = self.d.user_by_mail(address)
            visible = user is not None and self.d.replicated(user)
            return JSONResponse({"value": [_user_json(user)] if user and visible else []})

    def _missing(self, request: Request, object_id: str) -> JSONResponse:
        return graph_error(
            request,
            404,
            "Request_ResourceNotFound",
            f"Resource '{object_id}' does not exist or one of its queried reference-property objects are not present.",
        )

    async def get_group(self, request: Request) -> Response:
        group_id = request.path_params["id"]
        with self.d.lock:
            group = self.d.groups.get(group_id)
            return JSONResponse(_group_json(group)) if group else self._missing(request, group_id)

    async def list_members(self, request: Request) -> Response:
        group_id = request.path_params["id"]
        skip = int(request.query_params.get("$skiptoken", "0") or 0)
        with self.d.lock:
            group = self.d.groups.get(group_id)
            if group is None:
                return self._missing(request, group_id)
            rows: list[dict[str, Any]] = []
            for object_id in group.members[skip : skip + self.page_size]:
                if object_id in self.d.users:
                    rows.append(_user_json(self.d.users[object_id]))
                elif object_id in self.d.contacts:
                    rows.append(_contact_graph_json(self.d.contacts[object_id]))
            body: dict[str, Any] = {"value": rows}
            if skip + self.page_size < len(group.members):
                body["@odata.nextLink"] = f"{request.url.replace(query='')}?$skiptoken={skip + self.page_size}"
            return JSONResponse(body)

    async def add_member(self, request: Request) -> Response:
        group_id = request.path_params["id"]
        try:
            payload = await request.json()
            reference = str(payload["@odata.id"])
        except (ValueError, KeyError, TypeError):
            return graph_error(request, 400, "Request_BadRequest", "Invalid request body: @odata.id is required.")
        object_id = reference.rstrip("/").rsplit("/", 1)[-1]
        with self.d.lock:
            group = self.d.groups.get(group_id)
            if group is None:
                return self._missing(request, group_id)
            if group.kind in (GroupKind.DISTRIBUTION, GroupKind.MAIL_ENABLED_SECURITY):
                return graph_error(
                    request,
                    400,
                    "Request_BadRequest",
                    "Cannot Update a mail-enabled security groups and or distribution list.",
                )
            replica = self.d.users.get(object_id) or self.d.contacts.get(object_id)
            if not self.d.object_exists(object_id) or (replica is not None and not self.d.replicated(replica)):
                return self._missing(request, object_id)
            if object_id in group.members:
                return graph_error(
                    request,
                    400,
                    "Request_BadRequest",
                    "One or more added object references already exist for the following modified properties: 'members'.",
                )
            if group.kind is GroupKind.MICROSOFT_365 and object_id in self.d.contacts:
                return graph_error(
                    request, 400, "Request_BadRequest", "An org contact cannot be a member of a Microsoft 365 group."
                )
            group.members.append(object_id)
        return Response(status_code=204)

    async def invite(self, request: Request) -> Response:
        try:
            payload = await request.json()
            address = str(payload["invitedUserEmailAddress"])
            redirect = str(payload["inviteRedirectUrl"])
        except (ValueError, KeyError, TypeError):
            return graph_error(
                request, 400, "BadRequest", "invitedUserEmailAddress and inviteRedirectUrl are required."
            )
        display_name = str(payload.get("invitedUserDisplayName") or address)
        with self.d.lock:
            user = self.d.user_by_mail(address) or self.d.add_guest(address, display_name)
        invitation = {
            "@odata.type": "#microsoft.graph.invitation",
            "id": str(uuid.uuid4()),
            "inviteRedeemUrl": f"https://login.microsoftonline.com/redeem?rd={uuid.uuid4().hex}",
            "invitedUserDisplayName": display_name,
            "invitedUserEmailAddress": address,
            "inviteRedirectUrl": redirect,
            "sendInvitationMessage": bool(payload.get("sendInvitationMessage", False)),
            "invitedUserType": user.user_type,
            "status": "PendingAcceptance",
            "invitedUser": {"id": user.id},
        }
        return JSONResponse(invitation, status_code=201)


class CmdletError(Exception):
    def __init__(self, exception_type: str, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.exception_type = exception_type
        self.text = text
        self.status = status


def _not_found(identity: str, tenant: str) -> CmdletError:
    return CmdletError(
        NOT_FOUND,
        f"The operation couldn't be performed because object '{identity}' couldn't be found on '{tenant}'.",
        404,
    )


def _contact_exchange_json(contact: Contact) -> dict[str, Any]:
    return {
        "Guid": contact.guid,
        "Identity": contact.name,
        "Name": contact.name,
        "DisplayName": contact.display_name,
        "ExternalEmailAddress": "SMTP:" + contact.external_email_address,
        "PrimarySmtpAddress": contact.external_email_address,
        "FirstName": contact.first_name or "",
        "LastName": contact.last_name or "",
        "ExternalDirectoryObjectId": contact.external_directory_object_id,
        "RecipientType": "MailContact",
    }


def _group_exchange_json(group: Group) -> dict[str, Any]:
    return {
        "Guid": group.id,
        "Identity": group.display_name,
        "Name": group.display_name,
        "DisplayName": group.display_name,
        "PrimarySmtpAddress": group.mail,
        "ExternalDirectoryObjectId": group.id,
        "RequireSenderAuthenticationEnabled": group.require_sender_authentication,
        "AcceptMessagesOnlyFromSendersOrMembers": list(group.accept_messages_only_from),
        "RejectMessagesFromSendersOrMembers": list(group.reject_messages_from),
        "ModerationEnabled": group.moderation_enabled,
        "ManagedBy": [],
    }


class ExchangeFace:
    def __init__(self, directory: Directory, page_size: int) -> None:
        self.d = directory
        self.page_size = page_size
        self.cmdlets: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
            "Get-AcceptedDomain": self.get_accepted_domain,
            "New-MailContact": self.new_mail_contact,
            "Get-MailContact": self.get_mail_contact,
            "Add-DistributionGroupMember": self.add_member,
            "Get-DistributionGroupMember": self.get_members,
            "Get-DistributionGroup": lambda p: self.get_group(p, unified=False),
            "Set-DistributionGroup": lambda p: self.set_group(p, unified=False),
            "Get-UnifiedGroup": lambda p: self.get_group(p, unified=True),
            "Set-UnifiedGroup": lambda p: self.set_group(p, unified=True),
        }

    def routes(self) -> list[Route]:
        return [Route("/adminapi/beta/{tenant}/InvokeCommand", self.invoke, methods=["POST"])]

    async def invoke(self, request: Request) -> Response:
        if request.path_params["tenant"] != self.d.tenant.id:
            return self._error(request, 400, "TenantNotFound", NOT_FOUND, "The tenant is not known.")
        try:
            payload = await request.json()
            cmdlet_input = payload["CmdletInput"]
            name = str(cmdlet_input["CmdletName"])
            parameters = dict(cmdlet_input.get("Parameters") or {})
        except (ValueError, KeyError, TypeError):
            return self._error(request, 400, "BadRequest", "System.ArgumentException", "CmdletInput is required.")
        request.state.cmdlet = name
        handler = self.cmdlets.get(name)
        if handler is None:
            text = f"The term '{name}' is not recognized as a name of a cmdlet."
            return self._error(
                request, 400, "BadRequest", "System.Management.Automation.CommandNotFoundException", text
            )
        try:
            with self.d.lock:
                rows = handler(parameters)
        except CmdletError as error:
            return self._error(request, error.status, "BadRequest", error.exception_type, error.text)
        skip = int(request.query_params.get("$skip", "0") or 0)
        body: dict[str, Any] = {"value": rows[skip : skip + self.page_size]}
        if skip + self.page_size < len(rows):
            body["@odata.nextLink"] = f"{request.url.replace(query='')}?$skip={skip + self.page_size}"
        return JSONResponse(body)

    def _error(self, request: Request, status: int, code: str, exception_type: str, text: str) -> JSONResponse:
        error_id = uuid.uuid4().hex[:8].upper()
        request_id = str(uuid.uuid4())
        detail = {"code": "Client", "target": "", "message": f"{error_id}|{exception_type}|{text}"}
        body = {
            "error": {
                "code": code,
                "message": "Error executing cmdlet",
                "details": [detail],
                "innererror": {"message": text, "type": exception_type},
            }
        }
        return JSONResponse(body, status_code=status, headers={"request-id": request_id})

    def _required(self, parameters: dict[str, Any], name: str) -> str:
        value = parameters.get(name)
        if value is None or str(value) == "":
            raise CmdletError(
                "System.Management.Automation.ParameterBindingException",
                f"Cannot bind argument to parameter '{name}' because it is null or empty.",
            )
        return str(value)

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

    def new_mail_contact(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        name = self._required(parameters, "Name")
        address = self._required(parameters, "ExternalEmailAddress")
        address = address.split(":", 1)[1] if address.lower().startswith("smtp:") else address
        display_name = str(parameters.get("DisplayName") or name)
        if len(name) > 64 or len(display_name) > 256:
            raise CmdletError(
                "Microsoft.Exchange.Data.DataValidationException",
                "The length of the property is too long. The maximum length is 64 and the length of the value provided is "
                f"{len(name)}."
                if len(name) > 64
                else "The length of DisplayName exceeds 256.",
            )
        if "@" not in address:
            raise CmdletError(
                "Microsoft.Exchange.Data.DataValidationException", f'"{address}" isn\'t a valid SMTP address.'
            )
        if self.d.name_taken(name):
            raise CmdletError(NAME_IN_USE, f'The name "{name}" is already being used. Please try another name.')
        owner = self.d.address_owner(address) or (g.display_name if (g := self.d.group_by_mail(address)) else None)
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
        return [_contact_exchange_json(contact)]

    def get_mail_contact(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        if "Identity" not in parameters:
            return [_contact_exchange_json(c) for c in self.d.contacts.values()]
        identity = self._required(parameters, "Identity")
        contact = self.d.contact_by_identity(identity)
        if contact is None:
            raise _not_found(identity, self.d.tenant.initial_domain)
        return [_contact_exchange_json(contact)]

    def _exchange_group(self, identity: str, *, unified: bool) -> Group:
        group = self.d.group_by_identity(identity)
        mail_group = (
            (GroupKind.MICROSOFT_365,) if unified else (GroupKind.DISTRIBUTION, GroupKind.MAIL_ENABLED_SECURITY)
        )
        if group is None or group.kind not in mail_group:
            raise _not_found(identity, self.d.tenant.initial_domain)
        return group

    def _recipient_id(self, identity: str) -> str | None:
        contact = self.d.contact_by_identity(identity)
        if contact:
            return contact.external_directory_object_id if self.d.replicated(contact) else None
        user = self.d.users.get(identity) or self.d.user_by_mail(identity)
        return user.id if user and self.d.replicated(user) else None

    def add_member(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        identity = self._required(parameters, "Identity")
        member = self._required(parameters, "Member")
        group = self._exchange_group(identity, unified=False)
        object_id = self._recipient_id(member)
        if object_id is None:
            raise CmdletError(
                NOT_FOUND,
                f'Couldn\'t find object "{member}". Please make sure that it was spelled correctly or specify a different object.',
                404,
            )
        if object_id in group.members:
            raise CmdletError(
                MEMBER_EXISTS, f'The recipient "{member}" is already a member of the group "{group.display_name}".'
            )
        group.members.append(object_id)
        return []

    def get_members(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        group = self._exchange_group(self._required(parameters, "Identity"), unified=False)
        rows: list[dict[str, Any]] = []
        for object_id in group.members:
            if object_id in self.d.contacts:
                rows.append(_contact_exchange_json(self.d.contacts[object_id]))
            elif object_id in self.d.users:
                user = self.d.users[object_id]
                rows.append(
                    {
                        "Guid": user.id,
                        "Identity": user.display_name,
                        "Name": user.display_name,
                        "PrimarySmtpAddress": user.mail,
                        "ExternalDirectoryObjectId": user.id,
                        "RecipientType": "UserMailbox" if user.user_type == "Member" else "MailUser",
                    }
                )
        return rows

    def get_group(self, parameters: dict[str, Any], *, unified: bool) -> list[dict[str, Any]]:
        group = self._exchange_group(self._required(parameters, "Identity"), unified=unified)
        return [_group_exchange_json(group)]

    def set_group(self, parameters: dict[str, Any], *, unified: bool) -> list[dict[str, Any]]:
        group = self._exchange_group(self._required(parameters, "Identity"), unified=unified)
        if "RequireSenderAuthenticationEnabled" in parameters:
            value = parameters["RequireSenderAuthenticationEnabled"]
            if not isinstance(value, bool):
                raise CmdletError(
                    "System.Management.Automation.ParameterBindingException",
                    "Cannot convert value to type System.Boolean.",
                )
            group.require_sender_authentication = value
        return []


class Faults:
    """Injectable faults (a first knob; latency and rates come with the SQLite model)."""

    def __init__(self) -> None:
        self._throttles: dict[str, list[int]] = {"graph": [], "exchange": []}
        self._lock = threading.Lock()

    def throttle_next(self, face: str, *, retry_after: int, count: int = 1) -> None:
        """The next `count` authorized requests to `face` answer 429 with this Retry-After."""
        with self._lock:
            self._throttles[face].extend([retry_after] * count)

    def take_throttle(self, face: str) -> int | None:
        with self._lock:
            return self._throttles[face].pop(0) if self._throttles[face] else None


def _throttled(request: Request, face: str, retry_after: int) -> Response:
    headers = {"Retry-After": str(retry_after)}
    if face == "graph":
        response = graph_error(request, 429, "TooManyRequests", "Too many requests.")
        response.headers.update(headers)
        return response
    return JSONResponse(
        {"error": {"code": "TooManyRequests", "message": "Too many requests."}}, status_code=429, headers=headers
    )


def build_app(directory: Directory, log: RequestLog, faults: Faults, *, page_size: int = 100) -> Starlette:
    graph = GraphFace(directory, page_size)
    exchange = ExchangeFace(directory, page_size)

    async def auth_and_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        face = "graph" if request.url.path.startswith("/v1.0") else "exchange"
        if not _authorized(request):
            if face == "graph":
                response: Response = graph_error(request, 401, "InvalidAuthenticationToken", "Access token is empty.")
            else:
                response = JSONResponse(
                    {"error": {"code": "Unauthorized", "message": "Access token is missing or invalid."}},
                    status_code=401,
                )
        elif (retry_after := faults.take_throttle(face)) is not None:
            response = _throttled(request, face, retry_after)
        else:
            response = await call_next(request)
        what = getattr(request.state, "cmdlet", None) or f"{request.method} {request.url.path}"
        log.append((face, what, response.status_code, time.perf_counter() - started))
        return response

    return Starlette(
        routes=graph.routes() + exchange.routes(), middleware=[Middleware(BaseHTTPMiddleware, dispatch=auth_and_log)]
    )
