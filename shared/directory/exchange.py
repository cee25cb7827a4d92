"""Exchange Online through the admin REST endpoint the ExchangeOnlineManagement module itself uses.

Graph cannot create mail contacts nor change distribution-group membership; this endpoint can.
Cmdlet parameters travel as JSON data (never spliced into command text), so a display name full
of quotes or `$(...)` is stored literally. Failures are classified by the Exchange exception type
in the error detail (`ErrorId|ExceptionType|text`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from azure.core.credentials_async import AsyncTokenCredential

from shared.directory.errors import (
    AddressInUseError,
    AlreadyExistsError,
    DirectoryError,
    NameInUseError,
    NotFoundError,
    RejectedRequestError,
    TransientDirectoryError,
    classify_status,
)
from shared.directory.ports import GroupMember, MailContact, SenderRestrictions, TraceEntry

SCOPE = "https://outlook.office365.com/.default"
# The well-known system mailbox every tenant has; the module anchors its requests on it.
ANCHOR_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_PAGES = 100

_ERROR_BY_EXCEPTION: dict[str, type[DirectoryError]] = {
    "ManagementObjectNotFoundException": NotFoundError,
    "MemberAlreadyExistsException": AlreadyExistsError,
    "ADObjectAlreadyExistsException": NameInUseError,
    "ProxyAddressExistsException": AddressInUseError,
}


class ExchangeOnlineClient:
    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        tenant_id: str,
        anchor_domain: str,
        base_url: str = "https://outlook.office365.com",
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._credential = credential
        self._url = f"{base_url.rstrip('/')}/adminapi/beta/{tenant_id}/InvokeCommand"
        self._anchor = f"UPN:{ANCHOR_MAILBOX}@{anchor_domain}"
        self._owns_client = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=TIMEOUT)

    async def close(self) -> None:
        if self._owns_client:
            await self._http.aclose()

    async def invoke(self, cmdlet: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """Run one cmdlet; every page of its output."""
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}}
        url: str | None = self._url
        results: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            if url is None:
                return results
            page = await self._post(url, cmdlet, body)
            results.extend(page["value"])
            url = page.get("@odata.nextLink")
            if url is not None and httpx.URL(url).netloc != httpx.URL(self._url).netloc:
                # Never send the bearer token to a host other than the one configured.
                raise RejectedRequestError(f"{cmdlet}: @odata.nextLink points at another host", face="exchange")
        raise RejectedRequestError(f"{cmdlet} returned more than {MAX_PAGES} pages", face="exchange")

    async def _post(self, url: str, cmdlet: str, body: dict[str, Any]) -> dict[str, Any]:
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
        if response.is_success:
            page = _json(response)
            rows = page.get("value") if isinstance(page, dict) else None
            if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
                raise RejectedRequestError(
                    f"{cmdlet} answered {response.status_code} without a list of objects in value",
                    face="exchange",
                    status=response.status_code,
                    request_id=request_id,
                )
            next_link = page.get("@odata.nextLink")
            return {"value": rows, "@odata.nextLink": next_link if isinstance(next_link, str) else None}
        raise _classify(cmdlet, response, request_id)

    # --- the ExchangeDirectory port ------------------------------------------------------

    async def get_accepted_domains(self) -> frozenset[str]:
        rows = await self.invoke("Get-AcceptedDomain", {})
        return frozenset(str(row.get("DomainName", "")).lower() for row in rows if row.get("DomainName"))

    async def find_mail_contact(self, identity: str) -> MailContact | None:
        try:
            rows = await self.invoke("Get-MailContact", {"Identity": identity})
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
        rows = await self.invoke("New-MailContact", parameters)
        if not rows:
            raise RejectedRequestError("New-MailContact returned no contact", face="exchange")
        return _mail_contact(rows[0])

    async def add_distribution_group_member(self, group: str, member: str) -> None:
        await self.invoke("Add-DistributionGroupMember", {"Identity": group, "Member": member})

    async def list_distribution_group_members(self, group: str) -> list[GroupMember]:
        rows = await self.invoke("Get-DistributionGroupMember", {"Identity": group})
        return [
            GroupMember(
                identity=str(row.get("Guid") or row.get("Identity") or ""),
                external_directory_object_id=row.get("ExternalDirectoryObjectId"),
                email_address=_bare_address(row.get("PrimarySmtpAddress") or row.get("ExternalEmailAddress")),
            )
            for row in rows
        ]

    async def get_sender_restrictions(self, group: str, *, unified: bool) -> SenderRestrictions:
        cmdlet = "Get-UnifiedGroup" if unified else "Get-DistributionGroup"
        rows = await self.invoke(cmdlet, {"Identity": group})
        if not rows:
            raise NotFoundError(f"{cmdlet} found no group", face="exchange")
        row = rows[0]
        return SenderRestrictions(
            require_sender_authentication=bool(row.get("RequireSenderAuthenticationEnabled", True)),
            accept_messages_only_from=tuple(row.get("AcceptMessagesOnlyFromSendersOrMembers") or ()),
            reject_messages_from=tuple(row.get("RejectMessagesFromSendersOrMembers") or ()),
            moderation_enabled=bool(row.get("ModerationEnabled", False)),
        )

    async def set_require_sender_authentication(self, group: str, enabled: bool, *, unified: bool) -> None:
        cmdlet = "Set-UnifiedGroup" if unified else "Set-DistributionGroup"
        await self.invoke(cmdlet, {"Identity": group, "RequireSenderAuthenticationEnabled": enabled})

    async def message_trace(self, sender: str, recipient: str, start: datetime, end: datetime) -> list[TraceEntry]:
        parameters = {
            "SenderAddress": sender,
            "RecipientAddress": recipient,
            "StartDate": start.astimezone(UTC).isoformat(),
            "EndDate": end.astimezone(UTC).isoformat(),
        }
        rows = await self.invoke("Get-MessageTraceV2", parameters)
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


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _bare_address(value: Any) -> str | None:
    if not value:
        return None
    text = str(value)
    return text.split(":", 1)[1] if text.lower().startswith("smtp:") else text


def _mail_contact(row: dict[str, Any]) -> MailContact:
    identity = row.get("Guid") or row.get("Identity")
    address = _bare_address(row.get("ExternalEmailAddress"))
    if not identity or not address:
        raise RejectedRequestError("a mail contact came back without Guid or ExternalEmailAddress", face="exchange")
    return MailContact(
        identity=str(identity),
        name=str(row.get("Name", "")),
        external_email_address=address,
        external_directory_object_id=row.get("ExternalDirectoryObjectId"),
    )


def _classify(cmdlet: str, response: httpx.Response, request_id: str) -> DirectoryError:
    status = response.status_code
    body = _json(response)
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    detail = (
        details[0].get("message", "") if isinstance(details, list) and details and isinstance(details[0], dict) else ""
    )
    parts = str(detail).split("|", 2)
    exception_type = parts[1].rsplit(".", 1)[-1] if len(parts) == 3 else ""
    text = (
        parts[2]
        if len(parts) == 3
        else (error.get("message") if isinstance(error, dict) else "") or response.reason_phrase
    )
    return classify_status(
        status,
        f"{cmdlet}: {text}",
        face="exchange",
        code=exception_type,
        request_id=request_id,
        retry_after=_retry_after(response),
        recognised=_ERROR_BY_EXCEPTION.get(exception_type),
    )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
