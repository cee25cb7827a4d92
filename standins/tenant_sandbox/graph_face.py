"""The Graph face: a v1.0 subset over the directory, with Graph's status codes and error bodies.

Errors are {"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}
(facts and their sources: docs/microsoft-365-facts.md). Org contacts are read-only here, as in
Graph; mail contacts are made through the Exchange face. Parameters are data and never evaluated.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from shared.contracts import GroupKind
from standins.tenant_sandbox.authority import USER_PROPERTIES_READ, Caller
from standins.tenant_sandbox.model import Contact, Directory, Group, User, external_upn

_LITERAL = r"'((?:[^']|'')*)'"
# One clause Graph answers without advanced query parameters: `mail eq '…'` or
# `<collection>/any(x:x eq '…')` (filter-directory-objects: "Default" for eq on these).
_CLAUSE = re.compile(
    rf"\s*(?:(?P<scalar>mail|userPrincipalName)\s+eq\s+{_LITERAL}"
    rf"|(?P<collection>proxyAddresses|otherMails)/any\(\s*(?P<var>\w+)\s*:\s*(?P=var)\s+eq\s+'(?P<item>(?:[^']|'')*)'\s*\))\s*",
    re.IGNORECASE,
)
_OR = re.compile(r"or\b", re.IGNORECASE)
_ADDRESSED = frozenset({"mail", "proxyAddresses"})  # groups and org contacts; users also otherMails and UPN
_USER_ADDRESSED = _ADDRESSED | {"otherMails", "userPrincipalName"}
_LAMBDA = frozenset({"proxyAddresses", "otherMails"})  # clauses written as collection/any(x:x eq '…')
UNSUPPORTED_QUERY = "Unsupported Query."  # Graph's 400 text for a filter it does not take
_CANONICAL = {
    "mail": "mail",
    "userprincipalname": "userPrincipalName",
    "proxyaddresses": "proxyAddresses",
    "othermails": "otherMails",
}
# Operators Graph accepts on directory objects only with ConsistencyLevel: eventual and $count=true.
_ADVANCED = re.compile(r"\bendswith\s*\(|\bne\s|\bnot\s*\(|\bnot\s", re.IGNORECASE)
MAX_TOP = 999
# List users / get user: "By default, only a limited set of properties are returned"; the rest,
# userType, otherMails and proxyAddresses among them, only on $select.
USER_DEFAULT_PROPERTIES = frozenset(
    {
        "businessPhones",
        "displayName",
        "givenName",
        "id",
        "jobTitle",
        "mail",
        "mobilePhone",
        "officeLocation",
        "preferredLanguage",
        "surname",
        "userPrincipalName",
    }
)
BATCH_LIMIT = 20
_ALWAYS_SHOWN = frozenset({"@odata.type", "id"})


def graph_error(request: Request, status: int, code: str, message: str) -> JSONResponse:
    request_id = str(uuid.uuid4())
    body = _error_body(code, message, request_id, request.headers.get("client-request-id", request_id))
    return JSONResponse(body, status_code=status, headers={"request-id": request_id})


def _error_body(code: str, message: str, request_id: str = "", client_request_id: str = "") -> dict[str, Any]:
    """Graph's OData error, with the innerError Microsoft adds (request-id, date, client-request-id)."""
    request_id = request_id or str(uuid.uuid4())
    inner = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": request_id,
        "client-request-id": client_request_id or request_id,
    }
    return {"error": {"code": code, "message": message, "innerError": inner}}


MAX_CHECK_MEMBER_GROUPS = 20
# Refusals of a tenant's or a group's policy (docs/microsoft-365-facts.md, "Invitations can be refused",
# "Groups can refuse guests"). Graph's status and code for the first two are unconfirmed.
INVITATIONS_OFF = "Guest invitations not allowed for your company. Contact your company administrator for more details."
DOMAIN_NOT_INVITABLE = "The domain of the invited user is currently blocked by your invitation policy."
# "You can add up to five sponsors when inviting a new guest user" (Entra, Sponsors field for B2B users).
MAX_SPONSORS = 5
TOO_MANY_SPONSORS = f"A guest user can have at most {MAX_SPONSORS} sponsors."
# Graph's answer for a sponsor that is not a user or group of the tenant is unconfirmed (docs/stand-in-differences.md).
INVALID_SPONSORS = "One or more of the invited user's sponsors are not users or groups of this directory."
ALREADY_IN_DIRECTORY = "The invited user already exists in the directory as object ID: {id}."
GUESTS_NOT_ALLOWED = (
    "Guests users are not allowed to join this Unified Group due to policy setting. "
    "paramName: Members, paramValue: , objectType: Microsoft.Online.DirectoryServices.Group"
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
        "proxyAddresses": group.proxy_addresses(),
    }


def _user_json(user: User, initial_domain: str) -> dict[str, Any]:
    """Every property the sandbox models; _select trims it to Graph's default set or to $select.

    A B2B guest has mail = the invited address, that address in otherMails and as "SMTP:" in
    proxyAddresses (none when a mail contact held the address), and a "#EXT#" user principal name in the
    tenant's initial domain.
    """
    upn = user.user_principal_name or (external_upn(user.mail, initial_domain) if user.external else user.mail)
    return {
        "@odata.type": "#microsoft.graph.user",
        "id": user.id,
        "businessPhones": [],
        "displayName": user.display_name,
        "givenName": None,
        "jobTitle": None,
        "mail": user.mail,
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": None,
        "surname": None,
        "userPrincipalName": upn,
        "userType": user.user_type,
        "accountEnabled": user.account_enabled,
        "otherMails": list(user.other_mails),
        "proxyAddresses": ["SMTP:" + user.mail] if user.mail and not user.smtp_withheld else [],
    }


def _contact_json(contact: Contact) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.orgContact",
        "id": contact.external_directory_object_id,
        "displayName": contact.display_name,
        "mail": contact.external_email_address,
        "givenName": contact.first_name,
        "surname": contact.last_name,
        "proxyAddresses": ["SMTP:" + contact.external_email_address],
    }


def _field(body: Any, name: str, default: Any = KeyError) -> Any:
    """Graph reads JSON property names case-insensitively (msgraph-sdk sends sendMail's "Message")."""
    if not isinstance(body, dict):
        raise TypeError("expected a JSON object")
    for key, value in body.items():
        if key.lower() == name.lower():
            return value
    if default is KeyError:
        raise KeyError(name)
    return default


def _select(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    """$select=a,b keeps only those properties; without it a user keeps Graph's default set.

    Annotations (@odata.type) stay: Graph sends them on directory-object collections, and the SDK
    needs them to tell a user member from an org contact.
    """
    wanted = {name.strip() for name in request.query_params.get("$select", "").split(",") if name.strip()}
    if not wanted and row.get("@odata.type") == "#microsoft.graph.user":
        wanted = set(USER_DEFAULT_PROPERTIES)
    return {k: v for k, v in row.items() if k.startswith("@") or k in wanted} if wanted else row


def _parse_filter(text: str) -> list[tuple[str, str]] | None:
    """`clause or clause …` as (property, value) pairs; None for anything else."""
    clauses: list[tuple[str, str]] = []
    position = 0
    while True:
        match = _CLAUSE.match(text, position)
        if match is None:
            return None
        if match.group("scalar"):
            clauses.append((_CANONICAL[match.group("scalar").lower()], match.group(2)))
        else:
            clauses.append((_CANONICAL[match.group("collection").lower()], match.group("item")))
        position = match.end()
        if position == len(text):
            return [(name, value.replace("''", "'")) for name, value in clauses]
        joined = _OR.match(text, position)
        if joined is None:
            return None
        position = joined.end()


def _filter_addresses(request: Request) -> set[str] | None:
    """The addresses a well-formed $filter names, lower-case and without an `smtp:` prefix: the only
    objects it can match. None without a filter, or for one _filtered refuses (it answers alone)."""
    clauses = _parse_filter(request.query_params.get("$filter", ""))
    if clauses is None:
        return None
    return {value.lower().removeprefix("smtp:") for _, value in clauses}


def _matches(row: dict[str, Any], clauses: list[tuple[str, str]]) -> bool:
    """Compared case-insensitively, prefixes ("SMTP:"/"smtp:") included (see stand-in-differences)."""
    for name, value in clauses:
        held = row.get(name)
        values = held if isinstance(held, list) else [held]
        if value.lower() in {str(v).lower() for v in values if v is not None}:
            return True
    return False


class GraphFace:
    def __init__(self, directory: Directory, page_size: int) -> None:
        self.d = directory
        self.page_size = page_size
        self.app: ASGIApp | None = None  # set by build_app; $batch replays inner requests through it

    def routes(self) -> list[Route]:
        return [
            Route("/v1.0/groups", self.list_groups, methods=["GET"]),
            Route("/v1.0/groups/{id}", self.get_group, methods=["GET"]),
            Route("/v1.0/groups/{id}/members", self.list_members, methods=["GET"]),
            Route("/v1.0/groups/{id}/members/$ref", self.add_member, methods=["POST"]),
            Route("/v1.0/groups/{id}/members/{member}/$ref", self.remove_member, methods=["DELETE"]),
            Route("/v1.0/contacts", self.list_contacts, methods=["GET"]),
            Route("/v1.0/contacts", self.refuse_contact_write, methods=["POST"]),
            Route("/v1.0/contacts/{id}", self.get_contact, methods=["GET"]),
            Route("/v1.0/contacts/{id}", self.refuse_contact_write, methods=["PATCH", "DELETE"]),
            Route("/v1.0/contacts/{id}/memberOf", self.contact_member_of, methods=["GET"]),
            Route("/v1.0/directoryObjects/{id}/checkMemberGroups", self.check_member_groups, methods=["POST"]),
            Route("/v1.0/users", self.list_users, methods=["GET"]),
            Route("/v1.0/users/{id}", self.get_user, methods=["GET"]),
            Route("/v1.0/users/{id}/sendMail", self.send_mail, methods=["POST"]),
            Route("/v1.0/users/{id}/sponsors", self.list_sponsors, methods=["GET"]),
            Route("/v1.0/invitations", self.invite, methods=["POST"]),
            Route("/v1.0/$batch", self.batch, methods=["POST"]),
        ]

    def _filtered(self, request: Request, rows: list[dict[str, Any]], filterable: frozenset[str]) -> Response:
        """$filter (the forms in _CLAUSE, joined by `or`) over full rows, then one page of them."""
        if "$filter" not in request.query_params:
            return self._page(request, rows)
        text = request.query_params["$filter"]
        clauses = _parse_filter(text)
        if clauses is None or any(name not in filterable for name, _ in clauses):
            advanced = _ADVANCED.search(text)
            if advanced and request.headers.get("consistencylevel", "").lower() != "eventual":
                operator = advanced.group(0).strip(" (").lower()
                return graph_error(
                    request,
                    400,
                    "Request_UnsupportedQuery",
                    f"Operator '{operator}' is not supported because the required parameters might be missing. "
                    "Try adding $count=true query parameter and ConsistencyLevel:eventual header. "
                    "Refer to https://aka.ms/graph-docs/advanced-queries for more information",
                )
            return graph_error(request, 400, "Request_UnsupportedQuery", UNSUPPORTED_QUERY)
        if self.d.knobs.refuse_or_with_lambda and len(clauses) > 1 and any(name in _LAMBDA for name, _ in clauses):
            # Unconfirmed whether Graph takes this without advanced query parameters: a knob answers as if it did not.
            return graph_error(request, 400, "Request_UnsupportedQuery", UNSUPPORTED_QUERY)
        return self._page(request, [row for row in rows if _matches(row, clauses)])

    def _user_row(self, user: User) -> dict[str, Any]:
        return _user_json(user, self.d.tenant.initial_domain)

    def _missing(self, request: Request, object_id: str) -> JSONResponse:
        return graph_error(
            request,
            404,
            "Request_ResourceNotFound",
            f"Resource '{object_id}' does not exist or one of its queried reference-property objects are not present.",
        )

    def _page(self, request: Request, rows: list[dict[str, Any]]) -> JSONResponse:
        """One page of rows with @odata.nextLink carrying a $skiptoken, like Graph's directory lists."""
        token = request.query_params.get("$skiptoken", "0")
        if not token.isdigit():
            return graph_error(request, 400, "Request_BadRequest", "Invalid $skiptoken.")
        top = request.query_params.get("$top")
        if top is not None and not (top.isdigit() and 1 <= int(top) <= MAX_TOP):
            return graph_error(
                request,
                400,
                "Request_UnsupportedQuery",
                f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_TOP} inclusive.",
            )
        size = int(top) if top is not None else self.page_size
        skip = int(token)
        body: dict[str, Any] = {"value": [_select(request, row) for row in rows[skip : skip + size]]}
        if skip + size < len(rows):
            params = {k: v for k, v in request.query_params.items() if k != "$skiptoken"}
            params["$skiptoken"] = str(skip + size)
            body["@odata.nextLink"] = str(request.url.replace_query_params(**params))
        return JSONResponse(body)

    # Groups

    async def list_groups(self, request: Request) -> Response:
        with self.d.lock:
            return self._filtered(request, [_group_json(g) for g in self.d.groups.values()], _ADDRESSED)

    async def get_group(self, request: Request) -> Response:
        group_id = request.path_params["id"]
        with self.d.lock:
            group = self.d.groups.get(group_id)
            return JSONResponse(_select(request, _group_json(group))) if group else self._missing(request, group_id)

    async def list_members(self, request: Request) -> Response:
        group_id = request.path_params["id"]
        with self.d.lock:
            group = self.d.groups.get(group_id)
            if group is None:
                return self._missing(request, group_id)
            caller: Caller | None = getattr(request.state, "caller", None)
            whole = caller is None or USER_PROPERTIES_READ.allow(caller)
            rows: list[dict[str, Any]] = []
            for object_id in group.members:
                if object_id in self.d.users:
                    row = self._user_row(self.d.users[object_id])
                    # "Limited information returned for inaccessible member objects": the id and type only.
                    rows.append(row if whole else {k: v if k in _ALWAYS_SHOWN else None for k, v in row.items()})
                elif object_id in self.d.contacts:
                    rows.append(_contact_json(self.d.contacts[object_id]))
            return self._page(request, rows)

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
            if (refusal := self._membership_refusal(request, group_id, group)) is not None:
                return refusal
            assert group is not None
            replica = self.d.users.get(object_id) or self.d.contacts.get(object_id)
            if not self.d.object_exists(object_id) or (replica is not None and not self.d.replicated(replica)):
                return self._missing(request, object_id)
            guest = object_id in self.d.users and self.d.users[object_id].user_type == "Guest"
            if group.kind is GroupKind.MICROSOFT_365 and guest and not self.d.guests_allowed_in(group):
                # The group's (or the tenant's) guest setting, not a missing right: the same code, its own text.
                return graph_error(request, 403, "Authorization_RequestDenied", GUESTS_NOT_ALLOWED)
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
            self.d.add_member(group, object_id, through_graph=True)
        return Response(status_code=204)

    def _membership_refusal(self, request: Request, group_id: str, group: Group | None) -> Response | None:
        """Graph's answer when it does not change this group's members: no such group (404), or one whose
        members are Exchange's to change (a distribution or mail-enabled security group: 400)."""
        if group is None:
            return self._missing(request, group_id)
        if group.kind in (GroupKind.DISTRIBUTION, GroupKind.MAIL_ENABLED_SECURITY):
            return graph_error(
                request,
                400,
                "Request_BadRequest",
                "Cannot Update a mail-enabled security groups and or distribution list.",
            )
        return None

    async def remove_member(self, request: Request) -> Response:
        """DELETE /groups/{id}/members/{id}/$ref: 204; a member that is not one is Graph's 404 for a
        reference it cannot find; a distribution or mail-enabled security group is Exchange's to change."""
        group_id, object_id = request.path_params["id"], request.path_params["member"]
        with self.d.lock:
            group = self.d.groups.get(group_id)
            if (refusal := self._membership_refusal(request, group_id, group)) is not None:
                return refusal
            assert group is not None
            if object_id not in group.members:
                return self._missing(request, object_id)
            self.d.remove_member(group, object_id)
        return Response(status_code=204)

    async def check_member_groups(self, request: Request) -> Response:
        """The listed groups this object is a member of, transitively; at most 20 ids per request."""
        object_id = request.path_params["id"]
        try:
            group_ids = (await request.json())["groupIds"]
            if not isinstance(group_ids, list) or not all(isinstance(g, str) for g in group_ids):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return graph_error(request, 400, "Request_BadRequest", "Invalid request body: groupIds is required.")
        if len(group_ids) > MAX_CHECK_MEMBER_GROUPS:
            return graph_error(request, 400, "Request_BadRequest", "Too many groupIds: at most 20 per request.")
        with self.d.lock:
            replica = self.d.users.get(object_id) or self.d.contacts.get(object_id)
            if not self.d.object_exists(object_id) or (replica is not None and not self.d.replicated(replica)):
                return self._missing(request, object_id)
            found = [g for g in group_ids if self.d.has_member(g, object_id)]
        return JSONResponse(
            {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)", "value": found}
        )

    # Org contacts: read-only in Graph

    def _visible_contact(self, object_id: str) -> Contact | None:
        contact = self.d.contacts.get(object_id)
        return contact if contact is not None and self.d.replicated(contact) else None

    async def list_contacts(self, request: Request) -> Response:
        with self.d.lock:
            addresses = _filter_addresses(request)
            if addresses is None:
                everyone: Iterable[Contact] = self.d.contacts.values()
            else:  # a contact's mail and proxy address are its external address
                found = (self.d.contact_by_identity(address) for address in addresses)
                everyone = [c for c in found if c is not None and c.external_email_address.lower() in addresses]
            contacts = [c for c in everyone if self.d.replicated(c)]
            return self._filtered(request, [_contact_json(c) for c in contacts], _ADDRESSED)

    async def get_contact(self, request: Request) -> Response:
        object_id = request.path_params["id"]
        with self.d.lock:
            contact = self._visible_contact(object_id)
            return (
                JSONResponse(_select(request, _contact_json(contact))) if contact else self._missing(request, object_id)
            )

    async def contact_member_of(self, request: Request) -> Response:
        object_id = request.path_params["id"]
        with self.d.lock:
            if self._visible_contact(object_id) is None:
                return self._missing(request, object_id)
            return self._page(request, [_group_json(g) for g in self.d.groups_with_member(object_id)])

    async def refuse_contact_write(self, request: Request) -> Response:
        operation = {"POST": "Create", "PATCH": "Update", "DELETE": "Delete"}[request.method]
        return graph_error(
            request,
            400,
            "Request_BadRequest",
            f"Data contract version does not allow '{operation}' operations against instances of resource 'OrgContact'.",
        )

    # Users, guests and mail

    async def list_users(self, request: Request) -> Response:
        with self.d.lock:
            addresses = _filter_addresses(request)
            if addresses is None:
                everyone: Iterable[User] = self.d.users.values()
            else:  # every filter form names an address: only the users holding one can match
                claiming = {u.id: u for address in addresses for u in self.d.users_claiming(address)}
                everyone = claiming.values()
            users = [u for u in everyone if self.d.replicated(u)]
            return self._filtered(request, [self._user_row(u) for u in users], _USER_ADDRESSED)

    def _user(self, id_or_mail: str) -> User | None:
        user = self.d.users.get(id_or_mail) or self.d.user_by_mail(id_or_mail)
        return user if user is not None and self.d.replicated(user) else None

    async def get_user(self, request: Request) -> Response:
        key = request.path_params["id"]
        with self.d.lock:
            user = self._user(key)
            return JSONResponse(_select(request, self._user_row(user))) if user else self._missing(request, key)

    async def list_sponsors(self, request: Request) -> Response:
        """List sponsors: the users and groups responsible for a guest, as directory objects."""
        key = request.path_params["id"]
        with self.d.lock:
            user = self._user(key)
            if user is None:
                return self._missing(request, key)
            rows = [
                {"@odata.type": "#microsoft.graph.group" if s in self.d.groups else "#microsoft.graph.user", "id": s}
                for s in user.sponsors
            ]
        return self._page(request, rows)

    async def send_mail(self, request: Request) -> Response:
        key = request.path_params["id"]
        try:
            message = _field(await request.json(), "message")
            subject = str(_field(message, "subject", ""))
            recipients = [
                str(_field(_field(r, "emailAddress"), "address")) for r in _field(message, "toRecipients", []) or []
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            return graph_error(request, 400, "ErrorInvalidRequest", "The request body is not a valid sendMail payload.")
        if not recipients or any("@" not in address for address in recipients):
            return graph_error(request, 400, "ErrorInvalidRecipients", "At least one recipient is not valid.")
        with self.d.lock:
            sender = self._user(key)
            if sender is None:
                return graph_error(request, 404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.")
            if sender.user_type != "Member":
                return graph_error(
                    request,
                    404,
                    "MailboxNotEnabledForRESTAPI",
                    "The mailbox is either inactive, soft-deleted, or hosted on-premise.",
                )
            self.d.send_mail(sender, recipients, subject, size=len(json.dumps(message)))
        return Response(status_code=202)

    async def invite(self, request: Request) -> Response:
        try:
            payload = await request.json()
            address = str(payload["invitedUserEmailAddress"])
            redirect = str(payload["inviteRedirectUrl"])
        except (ValueError, KeyError, TypeError):
            return graph_error(
                request, 400, "BadRequest", "invitedUserEmailAddress and inviteRedirectUrl are required."
            )
        if "@" not in address:
            return graph_error(request, 400, "BadRequest", "The invited user email address is invalid.")
        display_name = str(payload.get("invitedUserDisplayName") or address)
        sponsors = _sponsor_ids(payload.get("invitedUserSponsors"))
        if sponsors is None or len(sponsors) > MAX_SPONSORS:
            return graph_error(request, 400, "BadRequest", INVALID_SPONSORS if sponsors is None else TOO_MANY_SPONSORS)
        with self.d.lock:
            if any(s not in self.d.groups and (s not in self.d.users or self.d.users[s].external) for s in sponsors):
                return graph_error(request, 400, "BadRequest", INVALID_SPONSORS)
            if not self._may_invite(request):
                return graph_error(request, 403, "Unauthorized", INVITATIONS_OFF)
            claimed = self.d.users_claiming(address)
            if internal := next((u for u in claimed if not u.external), None):
                return graph_error(request, 400, "BadRequest", ALREADY_IN_DIRECTORY.format(id=internal.id))
            if claimed:
                user = claimed[0]  # an existing B2B user is returned as it is: the allow/deny list does not apply
            elif self.d.settings.domain_blocked(address):
                return graph_error(request, 400, "BadRequest", DOMAIN_NOT_INVITABLE)
            else:
                user = self.d.add_guest(address, display_name, sponsors)
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

    def _may_invite(self, request: Request) -> bool:
        """authorizationPolicy.allowInvitesFrom: app-only callers are refused when invitations are off or
        limited to administrators and Guest Inviters (Create invitation, Permissions)."""
        allowed = self.d.settings.allow_invites_from
        caller: Caller | None = getattr(request.state, "caller", None)
        app_only = caller is None or caller.app_only
        return allowed != "none" and not (allowed == "adminsAndGuestInviters" and app_only)

    # JSON batching

    async def batch(self, request: Request) -> Response:
        """Each inner request goes through the whole app (auth, knobs, log) on its own, as in Graph."""
        try:
            payload = await request.json()
            inner = payload["requests"]
            if not isinstance(inner, list) or not all(isinstance(r, dict) and "id" in r and "url" in r for r in inner):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return graph_error(request, 400, "BadRequest", "Invalid batch payload.")
        if len(inner) > BATCH_LIMIT:
            return graph_error(
                request,
                400,
                "BadRequest",
                f"Invalid batch payload. Number of requests exceeds the maximum of {BATCH_LIMIT}.",
            )
        assert self.app is not None
        transport = httpx.ASGITransport(app=self.app)
        base = f"{request.url.scheme}://{request.url.netloc}/v1.0"
        forwarded = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "client-request-id")}
        async with httpx.AsyncClient(transport=transport, base_url=base) as client:
            responses = [await self._one(client, forwarded, r) for r in inner]
        return JSONResponse({"responses": responses})

    async def _one(self, client: httpx.AsyncClient, forwarded: dict[str, str], inner: dict[str, Any]) -> dict[str, Any]:
        """One inner request's answer; a bad inner request gets its own 400 entry, never fails the batch."""
        request_id, url, extra = str(inner["id"]), str(inner["url"]), inner.get("headers") or {}
        if not isinstance(extra, dict) or "://" in url:
            problem = (
                "Invalid request: headers must be an object"
                if not isinstance(extra, dict)
                else ("Invalid request: url must be relative to the version, such as /users/{id}")
            )
            return {"id": request_id, "status": 400, "headers": {}, "body": _error_body("BadRequest", problem)}
        headers = {**forwarded, **{str(k): str(v) for k, v in extra.items()}}
        answer = await client.request(
            str(inner.get("method", "GET")).upper(), "/" + url.lstrip("/"), headers=headers, json=inner.get("body")
        )
        keep = {k: v for k, v in answer.headers.items() if k.lower() in ("retry-after", "content-type", "location")}
        try:
            body = answer.json() if answer.content else None
        except ValueError:  # a route Graph does not have: Starlette answered in plain text
            body = _error_body("BadRequest", f"Resource not found for the segment '{url.strip('/').split('/')[0]}'.")
            keep["content-type"] = "application/json"
        return {"id": request_id, "status": answer.status_code, "headers": keep, "body": body}


def _sponsor_ids(value: Any) -> tuple[str, ...] | None:
    """invitedUserSponsors as Graph takes it: directory objects, each named by its id; None when malformed."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) and isinstance(v.get("id"), str) for v in value):
        return None
    return tuple(dict.fromkeys(str(v["id"]).lower() for v in value))
