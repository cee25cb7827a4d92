"""Microsoft Graph v1.0 through msgraph-sdk: groups, users, guest invitations, Microsoft 365 membership.

The SDK's retry handler is kept only for brief waits (max_in_process_retry_delay): it would
otherwise sleep for as long as Retry-After says (up to 180 s), holding a Functions worker. Longer
throttling and outages surface as ThrottledError / TransientDirectoryError, and the stage turns
them into a scheduled Service Bus retry.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlparse

import httpx
from azure.core.credentials_async import AsyncTokenCredential
from kiota_abstractions.api_error import APIError
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.request_information import RequestInformation
from kiota_abstractions.serialization import ParsableFactory
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from kiota_http.kiota_client_factory import KiotaClientFactory
from kiota_http.middleware import BaseMiddleware, RetryHandler
from kiota_http.middleware.options import RetryHandlerOption
from msgraph.generated.contacts.item.member_of.member_of_request_builder import MemberOfRequestBuilder
from msgraph.generated.directory_objects.item.check_member_groups.check_member_groups_post_request_body import (
    CheckMemberGroupsPostRequestBody,
)
from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder
from msgraph.generated.groups.item.group_item_request_builder import GroupItemRequestBuilder
from msgraph.generated.groups.item.members.members_request_builder import MembersRequestBuilder
from msgraph.generated.models.body_type import BodyType
from msgraph.generated.models.directory_object import DirectoryObject
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.invitation import Invitation
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.message import Message
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.models.reference_create import ReferenceCreate
from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.contracts import GroupKind
from shared.directory.errors import (
    AddressHeldInternallyError,
    AlreadyExistsError,
    DirectoryError,
    GuestsNotAllowedError,
    InvitationRefusedError,
    NotFoundError,
    PermissionDeniedError,
    RejectedRequestError,
    TransientDirectoryError,
    classify_status,
)
from shared.directory.ports import DirectoryGroup, DirectoryUser, EntraMembers
from shared.directory.rights import GRAPH_CALLS
from shared.directory.throttle import DEFAULT_HOLD_SECONDS, ThrottleGate

SCOPE = "https://graph.microsoft.com/.default"
DIRECTORY_OBJECTS = "https://graph.microsoft.com/v1.0/directoryObjects/"
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_PAGES = 500
USER_TYPE = "#microsoft.graph.user"  # @odata.type of a user in a directory-object list
MEMBERS_PAGE = 999  # $top's largest value on directory-object lists (docs/microsoft-365-facts.md, drift)
THROTTLED = 429
# Graph v1.0 returns a default property set unless $select says otherwise, and userType is not in
# the users' default set: ask for exactly what _directory_group / _directory_user read.
GROUP_FIELDS = ["id", "displayName", "mail", "groupTypes", "mailEnabled", "securityEnabled"]
USER_FIELDS = ["id", "mail", "userType"]
# Refusals that Graph answers with the codes of other failures, told apart by their text
# (docs/microsoft-365-facts.md, section 8): a group's guest policy (403 Authorization_RequestDenied, as
# a missing right), an internal user's address, and a missing right on POST /invitations.
GUESTS_REFUSED = "not allowed to join this unified group"
HELD_INTERNALLY = "already exists in the directory"
RIGHTS_REFUSED = "insufficient privileges"
T = TypeVar("T")
P = ParamSpec("P")


def _names_the_right(call: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A refusal names the Graph permission this call needs (shared/directory/rights.py)."""
    right = GRAPH_CALLS[call.__name__]

    @functools.wraps(call)
    async def naming(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await call(*args, **kwargs)
        except PermissionDeniedError as error:
            error.needed = error.needed or right
            raise

    return naming


def _group_kind(group: _DirectoryRow) -> GroupKind:
    """The table in Graph's groups overview: groupTypes, mailEnabled, securityEnabled."""
    if "Unified" in (group.group_types or []):
        return GroupKind.MICROSOFT_365
    if group.mail_enabled and group.security_enabled:
        return GroupKind.MAIL_ENABLED_SECURITY
    if group.mail_enabled:
        return GroupKind.DISTRIBUTION
    return GroupKind.SECURITY


def _odata_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def by_address(address: str) -> str:
    """A $filter for the object that has `address` as its primary or any secondary SMTP address.

    `mail` is the primary address; proxyAddresses holds it again as "SMTP:" and every secondary
    one as "smtp:". Both forms are Graph's default (non-advanced) filters. `mail eq` finds the
    primary without depending on how Graph compares the prefix's case, and the lower-case
    "smtp:" form is how Exchange writes secondary addresses.
    """
    return f"mail eq {_odata_string(address)} or proxyAddresses/any(p:p eq {_odata_string('smtp:' + address)})"


def as_entra_matches(address: str) -> str:
    """A $filter for every user an invitation for `address` meets: its UPN, mail, proxy addresses and
    otherMails (the query Microsoft documents for "already invited?"; docs/microsoft-365-facts.md, section 8)."""
    literal = _odata_string(address)
    return f"userPrincipalName eq {literal} or {by_address(address)} or otherMails/any(o:o eq {literal})"


class BriefRetryHandler(RetryHandler):
    """The SDK's RetryHandler, but a wait longer than `max_wait` is not taken in-process.

    The stock handler sleeps for whatever Retry-After says (up to 180 s), holding a Functions
    worker; here such a 429/503/504 comes back to the caller, which schedules a Service Bus retry.
    """

    def __init__(self, options: RetryHandlerOption, *, max_wait: float) -> None:
        super().__init__(options=options)
        self._max_wait = max_wait

    def get_delay_time(self, retry_count: int, response: httpx.Response | None = None, delay: float = 0) -> float:
        wait = float(super().get_delay_time(retry_count, response, delay))
        return wait if wait <= self._max_wait else float(RetryHandlerOption.MAX_DELAY)


class GateHandler(BaseMiddleware):
    """Every request, retries included, waits at the app's Graph gate; a 429 shuts it for Retry-After
    (shared/directory/throttle.py): Graph throttles per app and tenant, not per request."""

    def __init__(self, gate: ThrottleGate) -> None:
        super().__init__()
        self._gate = gate

    async def send(self, request: httpx.Request, transport: httpx.AsyncBaseTransport) -> httpx.Response:
        await self._gate.wait()
        response = await super().send(request, transport)
        if response.status_code == THROTTLED:
            await self._gate.hold(_seconds(response.headers.get("retry-after")) or DEFAULT_HOLD_SECONDS)
        return response


class MsGraphDirectory:
    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        base_url: str = "https://graph.microsoft.com/v1.0",
        http_client: httpx.AsyncClient | None = None,
        max_in_process_retries: int = 1,
        max_in_process_retry_delay: float = 2.0,
        gate: ThrottleGate | None = None,
    ) -> None:
        host = urlparse(base_url).hostname or "graph.microsoft.com"
        auth = AzureIdentityAuthenticationProvider(credential, scopes=[SCOPE], allowed_hosts=[host])
        retry = BriefRetryHandler(
            RetryHandlerOption(delay=0, max_retries=max_in_process_retries, should_retry=max_in_process_retries > 0),
            max_wait=max_in_process_retry_delay,
        )
        middleware: list[BaseMiddleware] = [
            retry if isinstance(m, RetryHandler) else m for m in KiotaClientFactory.get_default_middleware(None)
        ]
        # After the retry handler, so that its retries wait at the gate too.
        middleware.insert(middleware.index(retry) + 1, GateHandler(gate or ThrottleGate("graph")))
        self._owns_client = http_client is None
        self._http = GraphClientFactory.create_with_custom_middleware(
            middleware, client=http_client or httpx.AsyncClient(timeout=TIMEOUT)
        )
        adapter = GraphRequestAdapter(auth, client=self._http)
        adapter.base_url = base_url.rstrip("/")
        self._adapter = adapter
        self._client = GraphServiceClient(request_adapter=adapter)

    async def close(self) -> None:
        """Closes the http client only if this object created it."""
        if self._owns_client:
            await self._http.aclose()

    @_names_the_right
    async def get_group(self, group_id: str) -> DirectoryGroup | None:
        query = GroupItemRequestBuilder.GroupItemRequestBuilderGetQueryParameters(select=GROUP_FIELDS)
        item = self._client.groups.by_group_id(group_id)
        try:
            group = await self._read(item.to_get_request_information(RequestConfiguration(query_parameters=query)))
        except NotFoundError:
            return None
        return _directory_group(group)

    @_names_the_right
    async def find_group_by_mail(self, address: str) -> DirectoryGroup | None:
        """The group with this primary or secondary SMTP address (one request)."""
        query = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
            filter=by_address(address), select=GROUP_FIELDS
        )
        information = self._client.groups.to_get_request_information(RequestConfiguration(query_parameters=query))
        groups = (await self._read_page(information)).value
        return _directory_group(groups[0]) if groups else None

    @_names_the_right
    async def find_user_by_mail(self, address: str) -> DirectoryUser | None:
        """The user (member or guest) with this primary or secondary SMTP address.

        Not otherMails: it is a non-routing list (a member's private address may sit there), and
        Exchange does not refuse a contact for an address that is only someone's otherMails. An
        invitation does: the guest path asks find_user_for_invitation.
        """
        return await self._users_where(by_address(address))

    @_names_the_right
    async def find_user_for_invitation(self, address: str) -> DirectoryUser | None:
        """The user an invitation for this address would meet: also by UPN and otherMails."""
        return await self._users_where(as_entra_matches(address))

    async def _users_where(self, condition: str) -> DirectoryUser | None:
        query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(filter=condition, select=USER_FIELDS)
        information = self._client.users.to_get_request_information(RequestConfiguration(query_parameters=query))
        users = [_directory_user(user) for user in (await self._read_page(information)).value]
        # Should a member and a guest both carry the address, the member wins: the stages then
        # refuse (AddressInUseInternally) rather than onboard the wrong object.
        return next((user for user in users if user.user_type == "Member"), users[0] if users else None)

    @_names_the_right
    async def invite_guest(
        self, address: str, display_name: str, redirect_url: str, sponsors: tuple[str, ...] = ()
    ) -> DirectoryUser:
        invitation = Invitation(
            invited_user_email_address=address,
            invited_user_display_name=display_name,
            invite_redirect_url=redirect_url,
            send_invitation_message=False,
            # Without sponsors Entra stamps the inviter (docs/microsoft-365-facts.md, Sponsors).
            invited_user_sponsors=[DirectoryObject(id=sponsor) for sponsor in sponsors] or None,
        )
        created = await self._call(lambda: self._client.invitations.post(invitation), invitation=True)
        if created is None or created.invited_user is None or not created.invited_user.id:
            raise RejectedRequestError("the invitation came back without invitedUser.id", face="graph")
        # An existing user comes back as it is: a guest only if Graph says so.
        user_type = (created.invited_user_type or "").lower()
        if user_type not in ("guest", "member"):
            raise RejectedRequestError("the invitation came back without invitedUserType", face="graph")
        return DirectoryUser(created.invited_user.id, address, "Guest" if user_type == "guest" else "Member")

    @_names_the_right
    async def add_group_member(self, group_id: str, object_id: str) -> None:
        reference = ReferenceCreate(odata_id=DIRECTORY_OBJECTS + object_id)
        await self._call(lambda: self._client.groups.by_group_id(group_id).members.ref.post(reference))

    @_names_the_right
    async def remove_group_member(self, group_id: str, object_id: str) -> None:
        member = self._client.groups.by_group_id(group_id).members.by_directory_object_id(object_id)
        await self._call(lambda: member.ref.delete())

    @_names_the_right
    async def list_group_member_ids(self, group_id: str) -> frozenset[str]:
        members = self._client.groups.by_group_id(group_id).members
        query = MembersRequestBuilder.MembersRequestBuilderGetQueryParameters(select=["id"])
        return await self._ids(members, RequestConfiguration(query_parameters=query))

    @_names_the_right
    async def group_members_within(self, group_id: str, max_pages: int) -> EntraMembers:
        members = self._client.groups.by_group_id(group_id).members
        query = MembersRequestBuilder.MembersRequestBuilderGetQueryParameters(
            select=["id", "accountEnabled"], top=MEMBERS_PAGE
        )
        rows, complete = await self._listed(members, RequestConfiguration(query_parameters=query), max_pages)
        # A user's accountEnabled; None for a contact or group (and where Graph withheld it).
        enabled = {row.id.lower(): row.account_enabled if row.is_user else None for row in rows if row.id}
        return EntraMembers(enabled, complete=complete)

    @_names_the_right
    async def user_account_enabled(self, user_id: str) -> bool | None:
        query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(select=["id", "accountEnabled"])
        item = self._client.users.by_user_id(user_id)
        try:
            user = await self._read(item.to_get_request_information(RequestConfiguration(query_parameters=query)))
        except NotFoundError:
            return None
        if user.account_enabled is None:
            raise RejectedRequestError("Graph returned a user without accountEnabled", face="graph")
        return user.account_enabled

    @_names_the_right
    async def is_contact_member(self, group_id: str, contact_id: str) -> bool:
        # Not checkMemberGroups: for an org contact that needs Directory.Read.All (docs/permissions.md).
        return group_id.lower() in await self.contact_group_ids(contact_id)

    @_names_the_right
    async def contact_group_ids(self, contact_id: str) -> frozenset[str]:
        member_of = self._client.contacts.by_org_contact_id(contact_id).member_of
        query = MemberOfRequestBuilder.MemberOfRequestBuilderGetQueryParameters(select=["id"])
        ids = await self._ids(member_of, RequestConfiguration(query_parameters=query))
        return frozenset(found.lower() for found in ids)

    async def _ids(self, collection: MembersRequestBuilder | MemberOfRequestBuilder, config: Any) -> frozenset[str]:
        """The ids of a directory-object collection, following @odata.nextLink (at most MAX_PAGES pages)."""
        rows, _ = await self._listed(collection, config, MAX_PAGES)
        return frozenset(row.id for row in rows if row.id)

    async def _listed(
        self, collection: MembersRequestBuilder | MemberOfRequestBuilder, config: Any, max_pages: int
    ) -> tuple[list[_DirectoryRow], bool]:
        """A directory-object collection's rows, following @odata.nextLink for at most `max_pages` pages
        (at least one); True when every page was read."""
        information = collection.to_get_request_information(config)
        rows: list[_DirectoryRow] = []
        for _ in range(max(1, min(max_pages, MAX_PAGES))):
            page = await self._read_page(information)
            rows += page.value
            if not page.next_link:
                return rows, True
            information = collection.with_url(page.next_link).to_get_request_information()
        return rows, False

    async def _read(self, information: RequestInformation) -> _DirectoryRow:
        return _parsed(_ROW, await self._answer(information), "a directory object")

    async def _read_page(self, information: RequestInformation) -> _DirectoryPage:
        return _parsed(_PAGE, await self._answer(information), "a directory-object list")

    async def _answer(self, information: RequestInformation) -> bytes:
        """The answer's body, sent through the SDK (its auth, retry and throttle middleware, its error mapping)
        and left as bytes for `_parsed`: the SDK's models build every field's deserializer for each object,
        which made a large group's member list most of the drift watch's host CPU (docs/performance.md)."""
        raw = await self._call(lambda: self._adapter.send_primitive_async(information, "bytes", _ODATA_ERRORS))
        return raw if isinstance(raw, bytes) else b"{}"

    @_names_the_right
    async def is_group_member(self, group_id: str, object_id: str) -> bool:
        body = CheckMemberGroupsPostRequestBody(group_ids=[group_id])
        check = self._client.directory_objects.by_directory_object_id(object_id).check_member_groups
        answer = await self._call(lambda: check.post(body))
        return group_id.lower() in {found.lower() for found in (answer.value if answer and answer.value else [])}

    @_names_the_right
    async def send_mail(self, sender: str, recipient: str, subject: str, text: str) -> None:
        message = Message(
            subject=subject,
            body=ItemBody(content_type=BodyType.Text, content=text),
            to_recipients=[Recipient(email_address=EmailAddress(address=recipient))],
        )
        body = SendMailPostRequestBody(message=message, save_to_sent_items=False)
        await self._call(lambda: self._client.users.by_user_id(sender).send_mail.post(body))

    @_names_the_right
    async def first_page_of_groups(self, top: int) -> tuple[int, str | None]:
        """GET /groups?$top=n: how many rows the first page holds, and its @odata.nextLink (the self-check's
        look at Graph's paging; the pipeline itself never sends $top)."""
        query = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(top=top, select=["id"])
        information = self._client.groups.to_get_request_information(RequestConfiguration(query_parameters=query))
        page = await self._read_page(information)
        return len(page.value), page.next_link

    @property
    def sdk(self) -> GraphServiceClient:
        """The configured GraphServiceClient, for calls this port does not wrap (contract tests)."""
        return self._client

    async def _call(self, operation: Callable[[], Awaitable[T]], *, invitation: bool = False) -> T:
        try:
            return await operation()
        except APIError as error:
            raise _classify(error, invitation=invitation) from error
        except httpx.TimeoutException as error:
            raise TransientDirectoryError("Graph request timed out", face="graph") from error
        except httpx.TransportError as error:
            raise TransientDirectoryError(f"Graph network error {type(error).__name__}", face="graph") from error


class _DirectoryRow(BaseModel):
    """A user, group or other directory object, as far as the app reads one (GROUP_FIELDS, USER_FIELDS, a
    member's id and accountEnabled); the rest of Graph's answer is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str | None = None
    odata_type: str | None = Field(default=None, alias="@odata.type")
    account_enabled: bool | None = Field(default=None, alias="accountEnabled")
    display_name: str | None = Field(default=None, alias="displayName")
    mail: str | None = None
    user_type: str | None = Field(default=None, alias="userType")
    group_types: list[str] | None = Field(default=None, alias="groupTypes")
    mail_enabled: bool | None = Field(default=None, alias="mailEnabled")
    security_enabled: bool | None = Field(default=None, alias="securityEnabled")

    @property
    def is_user(self) -> bool:
        return self.odata_type == USER_TYPE


class _DirectoryPage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    value: list[_DirectoryRow] = []
    next_link: str | None = Field(default=None, alias="@odata.nextLink")


_ROW = TypeAdapter(_DirectoryRow)
_PAGE = TypeAdapter(_DirectoryPage)


def _parsed(answer: TypeAdapter[T], raw: bytes, what: str) -> T:
    """Graph's answer read for the fields the app asks ($select): outside input, so one that is not
    `what` is refused."""
    try:
        return answer.validate_json(raw)
    except ValidationError as error:
        raise RejectedRequestError(f"Graph answered with something that is not {what}", face="graph") from error


_ODATA_ERRORS: dict[str, type[ParsableFactory[Any]]] = {"XXX": ODataError}  # as the generated builders map errors


def _directory_group(group: _DirectoryRow) -> DirectoryGroup:
    if not group.id:
        raise RejectedRequestError("Graph returned a group without id", face="graph")
    return DirectoryGroup(
        id=group.id,
        display_name=group.display_name or "",
        mail=group.mail,
        kind=_group_kind(group),
        is_dynamic="DynamicMembership" in (group.group_types or []),
    )


def _directory_user(user: _DirectoryRow) -> DirectoryUser:
    if not user.id:
        raise RejectedRequestError("Graph returned a user without id", face="graph")
    return DirectoryUser(user.id, user.mail, "Guest" if (user.user_type or "").lower() == "guest" else "Member")


def _recognised(status: int, message: str, *, invitation: bool) -> type[DirectoryError] | None:
    """What a refusal's text says that its status and code do not."""
    text = message.lower()
    if status == 403 and GUESTS_REFUSED in text:
        return GuestsNotAllowedError
    if invitation:
        if HELD_INTERNALLY in text:
            return AddressHeldInternallyError
        # Any other 4xx but a missing right (401, "Insufficient privileges …") is the tenant refusing the
        # invitation: who may invite, the B2B allow/deny list, or the address itself.
        return InvitationRefusedError if status in (400, 403) and RIGHTS_REFUSED not in text else None
    # Graph answers "already a member" with 400 Request_BadRequest, not 409.
    return AlreadyExistsError if status == 400 and "already exist" in text else None


def _classify(error: APIError, *, invitation: bool = False) -> DirectoryError:
    status = error.response_status_code or 0
    headers: Any = error.response_headers or {}
    odata = getattr(error, "error", None)
    code = str(getattr(odata, "code", "") or "")
    message = str(getattr(odata, "message", "") or error.message or "Graph request failed")
    inner = getattr(odata, "inner_error", None)
    return classify_status(
        status,
        message,
        face="graph",
        code=code,
        request_id=getattr(inner, "request_id", None) or _header(headers, "request-id"),
        retry_after=_seconds(_header(headers, "retry-after")),
        recognised=_recognised(status, message, invitation=invitation),
    )


def _header(headers: Any, name: str) -> str | None:
    try:
        value = headers.get(name) or headers.get(name.title())
    except AttributeError:
        return None
    if isinstance(value, list | tuple | set):
        value = next(iter(value), None)
    return None if value is None else str(value)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
