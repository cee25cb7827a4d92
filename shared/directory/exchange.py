"""Exchange Online through the admin REST endpoint the ExchangeOnlineManagement module itself uses.

Graph cannot create mail contacts nor change distribution-group membership; this endpoint can.
Cmdlet parameters travel as JSON data (never spliced into command text), so a display name full
of quotes or `$(...)` is stored literally. Failures are read as the mature clients read them
(docs/microsoft-365-facts.md, "Exchange error answers"): the exception type from the
`X-ExceptionType` header, else `details[0].message` (`ErrorId|ExceptionType|text`), else
`innererror.internalexception`; a body that is not JSON is never decoded into the message.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from azure.core.credentials_async import AsyncTokenCredential

from shared.addresses import same_address
from shared.directory.errors import (
    AddressInUseError,
    AlreadyExistsError,
    DirectoryError,
    NameInUseError,
    NotAMemberError,
    NotFoundError,
    PermissionDeniedError,
    RejectedRequestError,
    ThrottledError,
    TooManyInFlightError,
    TransientDirectoryError,
    classify_status,
)
from shared.directory.ports import (
    ContactDetails,
    ExchangeMembers,
    GroupMember,
    MailContact,
    SenderRestrictions,
    TraceEntry,
    Warnings,
)
from shared.directory.rights import MANAGE_AS_APP, SECURITY_GROUP_MEMBERSHIP, exchange_role_for
from shared.directory.throttle import ThrottleGate
from shared.provenance import CONTACT_ATTRIBUTE

SCOPE = "https://outlook.office365.com/.default"
# The well-known system mailbox every tenant has. App-only callers anchor on it in the APP: form
# with the tenant id, as CIPP and ExoHelper have since 2025 (docs/microsoft-365-facts.md).
ANCHOR_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
# Exchange ends a slow cmdlet on its side and answers; the client waits longer than that, as the mature
# callers do (CIPP 100 s, ExoHelper 60 min), so it gets Exchange's answer instead of abandoning a cmdlet
# that may still finish (docs/microsoft-365-facts.md, section 8).
TIMEOUT = httpx.Timeout(100.0, connect=10.0)
# The longest the app's gate is held on Exchange's Rate-Limit-Reset: a bound on a header that is wrong.
MAX_RATE_LIMIT_HOLD = 300.0
# An answer's Rate-Limit-Remaining counts the requests that had reached Exchange; up to the tenant's
# requests in flight (Exchange's documented default, 9) may be on their way from every instance, and
# each would meet a spent budget with a 429. So a budget down to that many is spent for the app, but
# never more than a tenth of Rate-Limit-Limit (a small budget is used to its end).
ON_THEIR_WAY = 9
MOST_OF_THE_BUDGET_UNUSED = 0.1
MAX_PAGES = 100
MANAGER_CHECK = "BypassSecurityGroupManagerCheck"
TRACE_MAX_ROWS = 5000  # Get-MessageTraceV2 -ResultSize: at most 5000 rows per query
ROLE_FOR_BYPASS = SECURITY_GROUP_MEMBERSHIP
CONCURRENCY_LIMIT_TEXT = "You have reached the maximum number of concurrent requests per tenant"
# How long a call refused for the tenant's concurrency limit waits before its in-process retry:
# about one cmdlet's time, spread so that the refused calls do not return together.
IN_FLIGHT_PAUSE_SECONDS = (0.25, 1.0)
# Exception types the ExchangeOnlineManagement module retries; a 500 naming any other type is a
# cmdlet failure that repeats, not an outage (docs/microsoft-365-facts.md).
TRANSIENT_EXCEPTIONS = frozenset(
    {
        "DCOverloadedException",
        "SuitabilityDirectoryException",
        "ServerInMMException",
        "ADServerSettingsChangedException",
        "StorageTransientException",
    }
)
GROUP_MANAGER_REQUIRED = "OperationRequiresGroupManagerException"
_ERROR_BY_EXCEPTION: dict[str, type[DirectoryError]] = {
    "ManagementObjectNotFoundException": NotFoundError,
    "MemberAlreadyExistsException": AlreadyExistsError,
    "MemberNotFoundException": NotAMemberError,
    "ADObjectAlreadyExistsException": NameInUseError,
    # Which of the two Exchange Online raises for New-MailContact on a guest's address is unconfirmed.
    "ProxyAddressExistsException": AddressInUseError,
    "WLCDManagedMemberExistsException": AddressInUseError,
    GROUP_MANAGER_REQUIRED: PermissionDeniedError,
}
_ADDRESS_IN_USE_TEXT = "is already being used by the proxy addresses or LegacyExchangeDN"


@dataclass(frozen=True)
class Answer:
    """A cmdlet's output rows and the `@adminapi.warnings` that came with them."""

    rows: list[dict[str, Any]]
    warnings: Warnings = ()
    complete: bool = True  # False: the caller's page budget ended before the last page


class ExchangeOnlineClient:
    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        tenant_id: str,
        base_url: str = "https://outlook.office365.com",
        http_client: httpx.AsyncClient | None = None,
        max_in_process_retries: int = 1,
        max_in_process_retry_delay: float = 2.0,
        gate: ThrottleGate | None = None,
        max_concurrent_requests: int | None = None,
    ) -> None:
        """`max_concurrent_requests`: this instance's share of the tenant's Exchange requests in flight
        (ONBOARDING_EXCHANGE_CONCURRENT_REQUESTS); None = no bound of its own."""
        self._credential = credential
        self._in_flight = asyncio.Semaphore(max_concurrent_requests) if max_concurrent_requests else None
        # As the Graph client's retry handler: a short Retry-After is waited out here, a long one
        # goes back to the stage, which schedules a Service Bus retry instead of holding a worker.
        self._retries, self._max_wait = max_in_process_retries, max_in_process_retry_delay
        self._gate = gate or ThrottleGate()
        self._url = f"{base_url.rstrip('/')}/adminapi/beta/{tenant_id}/InvokeCommand"
        self._anchor = f"APP:{ANCHOR_MAILBOX}@{tenant_id}"
        self._owns_client = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=TIMEOUT)

    async def close(self) -> None:
        if self._owns_client:
            await self._http.aclose()

    async def invoke(self, cmdlet: str, parameters: dict[str, Any], *, max_pages: int | None = None) -> Answer:
        """Run one cmdlet; every page of its output, and its warnings. With `max_pages`, at most that many
        pages, the answer saying whether they were all; without, more than MAX_PAGES pages is an error."""
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}}
        url = self._url
        results: list[dict[str, Any]] = []
        warnings: list[str] = []
        for _ in range(MAX_PAGES if max_pages is None else max(1, min(max_pages, MAX_PAGES))):
            page = await self._post(url, cmdlet, body)
            results.extend(page.rows)
            warnings.extend(page.warnings)
            if page.next_link is None:
                return Answer(results, tuple(warnings))
            if httpx.URL(page.next_link).netloc != httpx.URL(self._url).netloc:
                # Never send the bearer token to a host other than the one configured.
                raise RejectedRequestError(f"{cmdlet}: @odata.nextLink points at another host", face="exchange")
            url = page.next_link
        if max_pages is not None:
            return Answer(results, tuple(warnings), complete=False)
        raise RejectedRequestError(f"{cmdlet} returned more than {MAX_PAGES} pages", face="exchange")

    async def _post(self, url: str, cmdlet: str, body: dict[str, Any]) -> _Page:
        for retry in range(self._retries + 1):
            await self._gate.wait()
            try:
                if self._in_flight is None:
                    return await self._post_once(url, cmdlet, body)
                async with self._in_flight:
                    return await self._post_once(url, cmdlet, body)
            except ThrottledError as error:
                last = retry == self._retries
                if isinstance(error, TooManyInFlightError) and error.retry_after is None:
                    # Too many in flight, tenant-wide: this call waits for some to finish; holding the
                    # gate would stop every instance's calls and leave the tenant idle.
                    if last:
                        raise
                    await asyncio.sleep(random.uniform(*IN_FLIGHT_PAUSE_SECONDS))  # noqa: S311 - spread, not secrecy
                    continue
                wait = error.retry_after if error.retry_after is not None else self._max_wait
                await self._gate.hold(wait)  # every invocation of the app waits, not only this one
                if wait > self._max_wait or last:
                    raise
        raise AssertionError("unreachable: the last try returns or raises")

    async def _post_once(self, url: str, cmdlet: str, body: dict[str, Any]) -> _Page:
        token = await self._credential.get_token(SCOPE)
        request_id = str(uuid.uuid4())
        headers = {
            "Authorization": f"Bearer {token.token}",
            "X-AnchorMailbox": self._anchor,
            "X-CmdletName": cmdlet,
            "client-request-id": request_id,
            "Prefer": "odata.maxpagesize=1000",
        }
        try:
            response = await self._http.post(url, json=body, headers=headers)
        except httpx.TimeoutException as error:
            raise TransientDirectoryError(f"{cmdlet} timed out", face="exchange", request_id=request_id) from error
        except httpx.TransportError as error:
            raise TransientDirectoryError(
                f"{cmdlet}: network error {type(error).__name__}", face="exchange", request_id=request_id
            ) from error
        request_id = response.headers.get("request-id", request_id)
        if _budget_spent(response):
            # What is left of Exchange's budget is for the requests on their way: none more goes from the
            # app before Rate-Limit-Reset.
            await self._gate.hold(min(_until_reset(response) or 0.0, MAX_RATE_LIMIT_HOLD))
        if response.is_success:
            page = _page(response)
            if page is None:
                raise RejectedRequestError(
                    f"{cmdlet} answered {response.status_code} without a list of objects in value",
                    face="exchange",
                    status=response.status_code,
                    request_id=request_id,
                )
            return page
        raise _classify(cmdlet, response, request_id)

    # --- the ExchangeDirectory port ------------------------------------------------------

    async def get_accepted_domains(self) -> frozenset[str]:
        rows = (await self.invoke("Get-AcceptedDomain", {})).rows
        return frozenset(str(row.get("DomainName", "")).lower() for row in rows if row.get("DomainName"))

    async def find_mail_contact(self, address: str) -> MailContact | None:
        """The person's contact: the one whose ExternalEmailAddress is `address`. -Identity also matches
        a Name, an alias or a Guid, so a contact found through those (named like the address, holding
        another) is someone else's and not returned."""
        try:
            rows = (await self.invoke("Get-MailContact", {"Identity": address})).rows
        except NotFoundError:
            return None
        contacts = (_mail_contact(row) for row in rows)
        return next((c for c in contacts if same_address(c.external_email_address, address)), None)

    async def get_mail_contact(self, identity: str) -> MailContact | None:
        try:
            rows = (await self.invoke("Get-MailContact", {"Identity": identity})).rows
        except NotFoundError:
            return None
        return _mail_contact(rows[0]) if rows else None

    async def new_mail_contact(
        self,
        *,
        name: str,
        external_email_address: str,
        display_name: str,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> MailContact:
        parameters = {"Name": name, "ExternalEmailAddress": external_email_address, "DisplayName": display_name}
        parameters |= {k: v for k, v in (("FirstName", first_name), ("LastName", last_name)) if v}
        rows = (await self.invoke("New-MailContact", parameters)).rows
        if not rows:
            raise RejectedRequestError("New-MailContact returned no contact", face="exchange")
        return _mail_contact(rows[0])

    async def stamp_mail_contact(self, identity: str, value: str) -> None:
        await self.invoke("Set-MailContact", {"Identity": identity, CONTACT_ATTRIBUTE: value})

    async def set_contact_names(
        self, identity: str, *, display_name: str, first_name: str | None, last_name: str | None
    ) -> None:
        parameters = {"Identity": identity, "DisplayName": display_name}
        parameters |= {k: v for k, v in (("FirstName", first_name), ("LastName", last_name)) if v}
        await self.invoke("Set-Contact", parameters)

    async def remove_mail_contact(self, identity: str) -> None:
        await self.invoke("Remove-MailContact", {"Identity": identity})

    async def add_distribution_group_member(self, group: str, member: str, *, security_group: bool = False) -> Warnings:
        parameters = {"Identity": group, "Member": member}
        return await self._as_manager("Add-DistributionGroupMember", parameters, security_group=security_group)

    async def remove_distribution_group_member(
        self, group: str, member: str, *, security_group: bool = False
    ) -> Warnings:
        parameters = {"Identity": group, "Member": member}
        return await self._as_manager("Remove-DistributionGroupMember", parameters, security_group=security_group)

    async def _as_manager(self, cmdlet: str, parameters: dict[str, Any], *, security_group: bool) -> Warnings:
        """A change Exchange allows only a group's managers, or callers with the bypass switch.

        The app is never among ManagedBy. A mail-enabled security group always needs the switch; a
        distribution group only when it restricts changes to its managers, so there the switch is
        sent only after that refusal: an app without the role keeps working on open ones.
        """
        if not security_group:
            try:
                return (await self.invoke(cmdlet, parameters)).warnings
            except PermissionDeniedError as error:
                if error.code != GROUP_MANAGER_REQUIRED:
                    raise
        return (await self.invoke(cmdlet, parameters | {MANAGER_CHECK: True})).warnings

    async def list_distribution_group_members(self, group: str) -> list[GroupMember]:
        rows = (await self.invoke("Get-DistributionGroupMember", {"Identity": group})).rows
        return [_group_member(row) for row in rows]

    async def distribution_group_members_within(self, group: str, max_pages: int) -> ExchangeMembers:
        answer = await self.invoke("Get-DistributionGroupMember", {"Identity": group}, max_pages=max_pages)
        return ExchangeMembers(tuple(_group_member(row) for row in answer.rows), answer.complete)

    async def list_unified_group_subscribers(self, group: str) -> list[GroupMember]:
        parameters = {"Identity": group, "LinkType": "Subscribers"}
        return [_group_member(row) for row in (await self.invoke("Get-UnifiedGroupLinks", parameters)).rows]

    async def is_unified_group_subscriber(self, group: str, is_them: Callable[[GroupMember], bool]) -> bool:
        return any(is_them(member) for member in await self.list_unified_group_subscribers(group))

    async def get_sender_restrictions(self, group: str, *, unified: bool) -> SenderRestrictions:
        cmdlet = "Get-UnifiedGroup" if unified else "Get-DistributionGroup"
        rows = (await self.invoke(cmdlet, {"Identity": group})).rows
        if not rows:
            raise NotFoundError(f"{cmdlet} found no group", face="exchange")
        row = rows[0]
        return SenderRestrictions(
            require_sender_authentication=bool(row.get("RequireSenderAuthenticationEnabled", True)),
            accept_messages_only_from=tuple(str(s) for s in row.get("AcceptMessagesOnlyFromSendersOrMembers") or ()),
            reject_messages_from=tuple(str(s) for s in row.get("RejectMessagesFromSendersOrMembers") or ()),
            moderation_enabled=bool(row.get("ModerationEnabled", False)),
        )

    async def set_require_sender_authentication(
        self, group: str, enabled: bool, *, unified: bool, security_group: bool = False
    ) -> Warnings:
        parameters = {"Identity": group, "RequireSenderAuthenticationEnabled": enabled}
        if unified:  # Set-UnifiedGroup has no manager check and no bypass switch
            return (await self.invoke("Set-UnifiedGroup", parameters)).warnings
        return await self._as_manager("Set-DistributionGroup", parameters, security_group=security_group)

    async def message_trace(
        self, sender: str, recipient: str | None, start: datetime, end: datetime
    ) -> list[TraceEntry]:
        parameters: dict[str, Any] = {
            "SenderAddress": sender,
            "StartDate": exchange_date(start),
            "EndDate": exchange_date(end, round_up=True),
            "ResultSize": TRACE_MAX_ROWS,
        }
        if recipient is not None:
            parameters["RecipientAddress"] = recipient
        rows = (await self.invoke("Get-MessageTraceV2", parameters)).rows
        entries: list[TraceEntry] = []
        for row in rows:
            try:
                received = datetime.fromisoformat(str(row["Received"]).replace("Z", "+00:00"))
                entries.append(
                    TraceEntry(str(row["MessageId"]), str(row["RecipientAddress"]), str(row["Status"]), received)
                )
            except (KeyError, ValueError) as error:
                raise RejectedRequestError(
                    f"Get-MessageTraceV2 returned a malformed row ({error})", face="exchange"
                ) from error
        return entries


@dataclass(frozen=True)
class _Page:
    rows: list[dict[str, Any]]
    warnings: Warnings
    next_link: str | None


def _json(response: httpx.Response) -> Any:
    if "json" not in response.headers.get("content-type", "application/json").lower():
        return None  # plain text, or a run of NUL bytes (a live 403 seen without a role): never JSON
    try:
        return response.json()
    except ValueError:  # also UnicodeDecodeError
        return None


def _page(response: httpx.Response) -> _Page | None:
    """A success answer: `value` rows, or only `@adminapi.warnings` (a success, as CIPP and ExoHelper read it)."""
    body = _json(response)
    if not isinstance(body, dict):
        return None
    warnings = body.get("@adminapi.warnings")
    warnings = tuple(str(w) for w in warnings) if isinstance(warnings, list) else ()
    rows = body.get("value", [] if warnings else None)
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return None
    next_link = body.get("@odata.nextLink")
    return _Page(rows, warnings, next_link if isinstance(next_link, str) else None)


def _bare_address(value: Any) -> str | None:
    if not value:
        return None
    text = str(value)
    return text.split(":", 1)[1] if text.lower().startswith("smtp:") else text


def _entra_id(row: dict[str, Any]) -> str | None:
    """ExternalDirectoryObjectId, or None while Exchange has not had it from Entra (it answers an empty one)."""
    value = row.get("ExternalDirectoryObjectId")
    return str(value) if value else None


def _group_member(row: dict[str, Any]) -> GroupMember:
    return GroupMember(
        identity=str(row.get("Guid") or row.get("Identity") or ""),
        external_directory_object_id=_entra_id(row),
        email_address=_bare_address(row.get("PrimarySmtpAddress") or row.get("ExternalEmailAddress")),
        contact=_contact_details(row),
    )


def _contact_details(row: dict[str, Any]) -> ContactDetails | None:
    """A mail contact's hidden flag and stamp, only when the row carries both fields (else None: read the
    contact itself); a value that is not a boolean is not trusted either."""
    hidden = row.get("HiddenFromAddressListsEnabled")
    if row.get("RecipientType") != "MailContact" or not isinstance(hidden, bool) or CONTACT_ATTRIBUTE not in row:
        return None
    return ContactDetails(hidden, str(row.get(CONTACT_ATTRIBUTE) or "") or None)


def _mail_contact(row: dict[str, Any]) -> MailContact:
    identity = row.get("Guid") or row.get("Identity")
    address = _bare_address(row.get("ExternalEmailAddress"))
    if not identity or not address:
        raise RejectedRequestError("a mail contact came back without Guid or ExternalEmailAddress", face="exchange")
    return MailContact(
        identity=str(identity),
        name=str(row.get("Name", "")),
        external_email_address=address,
        external_directory_object_id=_entra_id(row),
        provenance=str(row.get(CONTACT_ATTRIBUTE) or "") or None,
        hidden_from_address_lists=row.get("HiddenFromAddressListsEnabled") is True,
    )


@dataclass(frozen=True)
class _Failure:
    """What an error answer says: the exception type (short name) and the text."""

    exception_type: str
    text: str


def _failure(response: httpx.Response) -> _Failure:
    """ExoHelper's order: the header, then `details[0].message` split in exactly three, then internalexception."""
    body = _json(response)
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    details = error.get("details")
    detail = details[0] if isinstance(details, list) and details and isinstance(details[0], dict) else {}
    parts = str(detail.get("message", "")).split("|")
    inner = error.get("innererror")
    inner = {k.lower(): v for k, v in inner.items()} if isinstance(inner, dict) else {}
    internal = inner.get("internalexception")
    internal = {k.lower(): v for k, v in internal.items()} if isinstance(internal, dict) else {}
    full_type = (
        response.headers.get("X-ExceptionType")
        or (parts[1] if len(parts) == 3 else "")
        or str(internal.get("type") or "")
    )
    text = parts[2] if len(parts) == 3 else str(internal.get("message") or error.get("message") or "")
    return _Failure(full_type.rsplit(".", 1)[-1], text or response.reason_phrase or f"HTTP {response.status_code}")


def _classify(cmdlet: str, response: httpx.Response, request_id: str) -> DirectoryError:
    status = response.status_code
    failure = _failure(response)
    # The per-tenant concurrency limit is throttling whatever the status it comes with.
    concurrency_limit = _body_text(response).startswith(CONCURRENCY_LIMIT_TEXT)
    recognised = _ERROR_BY_EXCEPTION.get(failure.exception_type)
    if recognised is None and _ADDRESS_IN_USE_TEXT in failure.text:
        recognised = AddressInUseError
    message = f"{cmdlet}: {CONCURRENCY_LIMIT_TEXT if concurrency_limit else failure.text}"
    if failure.exception_type == GROUP_MANAGER_REQUIRED or (
        failure.exception_type == "ParameterBindingException" and MANAGER_CHECK in failure.text
    ):
        # The app is not among the group's managers, and may not use the switch that bypasses them.
        recognised = PermissionDeniedError
        message += (
            f" The app may change this group only with {MANAGER_CHECK}, which needs the Exchange role "
            f'"{ROLE_FOR_BYPASS}": assign the Exchange Administrator role, or add the app to a role group '
            f'holding "{ROLE_FOR_BYPASS}" (infra/README.md; `onboard grant --group-kinds mail-enabled-security` prints the commands).'
        )
    error = classify_status(
        status,
        message,
        face="exchange",
        code=failure.exception_type,
        request_id=request_id,
        retry_after=retry_after_of(response),
        recognised=TooManyInFlightError if concurrency_limit else recognised,
        server_fault_is_permanent=status == 500
        and bool(failure.exception_type)
        and failure.exception_type not in TRANSIENT_EXCEPTIONS,
    )
    if isinstance(error, PermissionDeniedError):
        error.needed = _right_refused(cmdlet, response, bypass_refused=recognised is PermissionDeniedError)
    return error


def _right_refused(cmdlet: str, response: httpx.Response, *, bypass_refused: bool) -> str:
    """Which right a refusal is about (docs/permissions.md, "Exchange answers")."""
    if bypass_refused:
        return SECURITY_GROUP_MEMBERSHIP
    diagnostics = response.headers.get("x-ms-diagnostics", "")
    if response.status_code == 401 and ("no permissions" in diagnostics or not response.content):
        return MANAGE_AS_APP  # the token carries no Exchange.ManageAsApp
    return exchange_role_for(cmdlet)


def _body_text(response: httpx.Response) -> str:
    """The body as text when it is plain text; empty for JSON and for undecodable bytes."""
    if "json" in response.headers.get("content-type", "").lower():
        return ""
    try:
        return response.content.decode("utf-8").strip().strip("\x00")
    except UnicodeDecodeError:
        return ""


def retry_after_of(response: httpx.Response) -> float | None:
    """Retry-After, else (ExoHelper reads it too) the seconds until Rate-Limit-Reset."""
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return _until_reset(response)


def _budget_spent(response: httpx.Response) -> bool:
    """Whether the requests left (Rate-Limit-Remaining) are only those already on their way."""
    try:
        remaining = int(response.headers["Rate-Limit-Remaining"])
    except (KeyError, ValueError):
        return False
    try:
        limit = int(response.headers["Rate-Limit-Limit"])
    except (KeyError, ValueError):
        limit = 0
    return remaining <= min(ON_THEIR_WAY, int(limit * MOST_OF_THE_BUDGET_UNUSED))


def _until_reset(response: httpx.Response) -> float | None:
    """Rate-Limit-Reset as seconds from now: a number of seconds, or a time (ISO 8601 or HTTP date)."""
    value = response.headers.get("Rate-Limit-Reset", "").strip()
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def exchange_date(moment: datetime, *, round_up: bool = False) -> str:
    """A date as the mature callers send it: UTC, to the second, without an offset (CIPP's ToString('s')).
    `round_up` for a window's end, so the last fraction of a second stays inside it."""
    utc = moment.astimezone(UTC)
    if round_up and utc.microsecond:
        utc += timedelta(seconds=1)
    return utc.strftime("%Y-%m-%dT%H:%M:%S")
