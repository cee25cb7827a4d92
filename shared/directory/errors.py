"""One exception hierarchy for both directory faces.

Stages decide retry versus dead-letter by class alone, so adapters must map every HTTP status,
OData error code and Exchange exception type onto exactly one of these.
"""

from __future__ import annotations

from typing import Any, Literal

Face = Literal["graph", "exchange"]


class DirectoryError(Exception):
    """Base class. `code` is Microsoft's error code or Exchange exception type."""

    def __init__(
        self,
        message: str,
        *,
        face: Face,
        status: int | None = None,
        code: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.face = face
        self.status = status
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        where = f"{self.face} {self.status}" if self.status else self.face
        rid = f" (request-id {self.request_id})" if self.request_id else ""
        return f"{where} {self.code}: {self.message}{rid}"


class TransientDirectoryError(DirectoryError):
    """Worth retrying later: 429, 5xx, timeouts, network failures."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ThrottledError(TransientDirectoryError):
    """429: wait at least `retry_after` seconds."""


class TooManyInFlightError(ThrottledError):
    """Exchange's per-tenant concurrency answer: too many requests in flight at this moment, not too
    many in a period. Without a Retry-After it asks only this call to wait until others have finished."""


class NotFoundError(DirectoryError):
    """The object does not exist, or is not yet visible (replication lag)."""


class AlreadyExistsError(DirectoryError):
    """Already a member / already present."""


class NameInUseError(AlreadyExistsError):
    """New-MailContact: the Name is taken by another object."""


class AddressInUseError(AlreadyExistsError):
    """New-MailContact: the address is already a proxy address of another object."""


class PermissionDeniedError(DirectoryError):
    """401/403: the app lacks a right, or the token was refused.

    `needed`: the right the refused call needs, as shared/directory/rights.py names it (set by the adapter)."""

    needed: str | None = None


class RejectedRequestError(DirectoryError):
    """Any other 4xx: the directory refuses this request as it stands."""


class NotAMemberError(RejectedRequestError):
    """Remove-DistributionGroupMember: the recipient is not a member of the group (MemberNotFoundException)."""


class AddressHeldInternallyError(RejectedRequestError):
    """POST /invitations: a user of the tenant (not a guest) already holds the address."""


class PolicyRefusedError(DirectoryError):
    """The tenant's or the group's own policy refuses this: not a missing right, even when Graph answers 403."""


class InvitationRefusedError(PolicyRefusedError):
    """POST /invitations refused by the tenant's external collaboration settings: who may invite, which domains."""


class GuestsNotAllowedError(PolicyRefusedError):
    """A Microsoft 365 group (or the tenant) does not accept guests: AllowToAddGuests=false."""


def classify_status(
    status: int,
    message: str,
    *,
    face: Face,
    code: str = "",
    request_id: str | None = None,
    retry_after: float | None = None,
    recognised: type[DirectoryError] | None = None,
    server_fault_is_permanent: bool = False,
) -> DirectoryError:
    """The one ladder from an HTTP answer to an error class, for both faces.

    `recognised` is what the face read from the body (an Exchange exception type, a Graph error
    message); the status wins over it only where the status alone decides: throttling, outages,
    and refused rights. Throttling read from the body wins over any status, and a policy's refusal
    over a 401/403. A 500 whose body names a permanent failure (`server_fault_is_permanent`) is not
    retried for a day.
    """
    common: dict[str, Any] = {"face": face, "status": status, "code": code, "request_id": request_id}
    if recognised is not None and issubclass(recognised, ThrottledError):
        return recognised(message, retry_after=retry_after, **common)
    if status == 429:
        return ThrottledError(message, retry_after=retry_after, **common)
    if status == 408 or (status >= 500 and not (status == 500 and server_fault_is_permanent)):
        return TransientDirectoryError(message, retry_after=retry_after, **common)
    if status in (401, 403) and not (recognised is not None and issubclass(recognised, PolicyRefusedError)):
        return PermissionDeniedError(message, **common)
    if recognised is not None:
        return recognised(message, **common)
    if status == 404:
        return NotFoundError(message, **common)
    if status == 409:
        return AlreadyExistsError(message, **common)
    return RejectedRequestError(message, **common)
