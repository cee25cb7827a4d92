"""Message contract v1: what upstream sends, what stages pass on, what every request ends with.

The JSON Schema of these models is checked in under contracts/ (`onboard schema` prints it) so
upstream teams can validate before they send. Unknown fields are rejected everywhere: a typo in
an upstream field must fail loudly, not be ignored.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)

from shared.addresses import within_rfc5321_lengths
from shared.queues import StageName as StageName  # leaves only: names, and how addresses are measured

# Contract 1.1 adds the request's `action` (offboard, update) to 1.0's onboarding; every 1.0 message
# is a valid 1.1 message with the same meaning, so both versions are read and 1.1 is written.
ContractVersion = Literal["1", "1.1"]
CONTRACT_VERSION: ContractVersion = "1.1"

# Exchange limits (New-MailContact): Name 64 characters, DisplayName 256.
DISPLAY_NAME_MAX = 256
NAME_PART_MAX = 64


# C0 and C1 control characters (line breaks, tabs, NUL, ESC...) and Unicode's line and paragraph
# separators: a name that holds one reaches the directory, address books and the welcome message
# as-is. Format characters (RTL marks) stay allowed.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NO_CONTROL_SCHEMA = Field(json_schema_extra={"pattern": r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"})


def _no_control_characters(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters or line breaks")
    return value


DisplayName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=DISPLAY_NAME_MAX),
    AfterValidator(_no_control_characters),
    _NO_CONTROL_SCHEMA,
]
NamePart = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_PART_MAX),
    AfterValidator(_no_control_characters),
    _NO_CONTROL_SCHEMA,
]
# An address's shape is email-validator's (through pydantic); its lengths are RFC 5321's, in octets.
SmtpAddress = Annotated[EmailStr, AfterValidator(within_rfc5321_lengths)]
# A request id is the request's identity end to end: in MessageIds (Service Bus allows 128
# characters; longer derived ids use a digest), in logs, and as a Table Storage key (no / \ # ?).
REQUEST_ID_PATTERN = r"^[^/\\#?\s\x00-\x1f\x7f-\x9f]{1,128}$"
RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)]
SourceSystem = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
# "You can add up to five sponsors when inviting a new guest user" (docs/microsoft-365-facts.md, Sponsors).
SPONSORS_MAX = 5
# A lease ends at most this far after the request is accepted: a typo in the year must not grant a century.
LEASE_MAX = timedelta(days=3 * 366)


class GroupKind(StrEnum):
    """Derived from Graph's groupTypes / mailEnabled / securityEnabled (Graph groups overview)."""

    MICROSOFT_365 = "Microsoft365"
    DISTRIBUTION = "Distribution"
    MAIL_ENABLED_SECURITY = "MailEnabledSecurity"
    SECURITY = "Security"


class RequestAction(StrEnum):
    """What a request asks for; absent means onboard, as every request before contract 1.1 did."""

    ONBOARD = "onboard"  # the person becomes a member of the group (creating their recipient if needed)
    OFFBOARD = "offboard"  # the person stops being a member (and the recipient this app created goes)
    UPDATE = "update"  # the person's recipient gets the request's display name and names


class DeadLetterReason(StrEnum):
    """The documented vocabulary an operator acts on (docs/reasons.md)."""

    INVALID_REQUEST = "InvalidRequest"
    GROUP_NOT_FOUND = "GroupNotFound"
    UNSUPPORTED_GROUP_KIND = "UnsupportedGroupKind"
    POLICY_DENIED = "PolicyDenied"
    ADDRESS_IN_USE_INTERNALLY = "AddressInUseInternally"
    INVITATION_REFUSED = "InvitationRefused"
    GUESTS_NOT_ALLOWED = "GuestsNotAllowed"
    ADDRESS_HELD_BY_MAIL_CONTACT = "AddressHeldByMailContact"
    PERMISSION_DENIED = "PermissionDenied"
    DIRECTORY_REJECTED = "DirectoryRejected"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    DELIVERY_FAILED = "DeliveryFailed"
    ADDRESS_CHANGE_REFUSED = "AddressChangeRefused"
    PROCESSING_FAILED = "ProcessingFailed"
    # Service Bus's own reasons, for what it dead-letters by itself (what each means: shared/reasons.py).
    MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
    TTL_EXPIRED = "TTLExpiredException"


def _display_name_required_unless_offboard(schema: dict[str, Any]) -> None:
    """The JSON Schema of the validator's rule: display_name is required unless the action is offboard."""
    schema["if"] = {"properties": {"action": {"const": RequestAction.OFFBOARD.value}}, "required": ["action"]}
    schema["else"] = {"required": ["display_name"]}


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class GroupRef(_Contract):
    """The target group: exactly one of its SMTP address or its Entra object id."""

    smtp_address: SmtpAddress | None = None
    object_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> GroupRef:
        if (self.smtp_address is None) == (self.object_id is None):
            raise ValueError("give exactly one of smtp_address or object_id")
        return self

    def describe(self) -> str:
        return str(self.object_id) if self.object_id else f"<{self.smtp_address}>"


class OnboardingRequest(_Contract):
    """What an upstream system puts on queue `create-contact`: onboard, offboard or update one person."""

    model_config = ConfigDict(json_schema_extra=_display_name_required_unless_offboard)

    contract_version: ContractVersion = CONTRACT_VERSION
    action: RequestAction = Field(
        default=RequestAction.ONBOARD,
        description="onboard (the default): make the person a member of the group. offboard: remove the "
        "membership; the recipient goes too when this app created it and it is in no other group the policy "
        "manages. update: give the person's recipient this display name and these names.",
    )
    external_email: SmtpAddress
    display_name: DisplayName | None = Field(
        default=None, description="Required to onboard and to update; an offboard ignores it."
    )
    first_name: NamePart | None = None
    last_name: NamePart | None = None
    new_external_email: SmtpAddress | None = Field(
        default=None,
        description="update only. An address is the person's identity here, so an update that changes it is "
        "refused (AddressChangeRefused): send an offboard for the old address and an onboard for the new one.",
    )
    group: GroupRef
    allow_external_senders: bool = Field(
        default=True,
        description="The person must be able to mail the group (fix 5.7.133 where policy allows).",
    )
    request_id: RequestId | None = Field(
        default=None, description="Idempotency key; defaults to the Service Bus MessageId."
    )
    source_system: SourceSystem
    dry_run: bool = Field(
        default=False,
        description="Plan only: check the policy and resolve the group and the person, change nothing in the "
        "tenant. The outcome's status is Planned and its changes say what would be done.",
    )
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="When the membership ends (a lease): with a time zone, after the request is accepted and at "
        "most three years later. The app then removes the person from the group as an offboard would and "
        "publishes that outcome; a notice event comes first (docs/leases.md). A later request for the same "
        "person and group sets the end anew (a renewal). Absent: the group's default lease in the policy, if any.",
    )
    sponsors: tuple[uuid.UUID, ...] = Field(
        default=(),
        max_length=SPONSORS_MAX,
        description="Object ids of the users or groups accountable for a guest (Graph invitedUserSponsors), "
        "at most five; only for a Microsoft 365 group's newly invited guest. Absent: the group's sponsors in the "
        "policy, if any.",
    )

    @model_validator(mode="after")
    def _fields_fit_the_action(self) -> OnboardingRequest:
        if self.action is not RequestAction.OFFBOARD and self.display_name is None:
            raise ValueError(f"display_name is required to {self.action}")
        if self.new_external_email is not None and self.action is not RequestAction.UPDATE:
            raise ValueError("new_external_email belongs to an update only")
        return self

    @property
    def required_display_name(self) -> str:
        """The display name of an onboard or update, which the validator made sure of."""
        if self.display_name is None:
            raise ValueError(f"a request to {self.action} has no display_name")
        return self.display_name


class ResolvedGroup(_Contract):
    id: str
    display_name: str
    mail: str
    kind: GroupKind


class RecipientKind(StrEnum):
    MAIL_CONTACT = "MailContact"
    GUEST_USER = "GuestUser"


class Recipient(_Contract):
    """The directory object that represents the external person."""

    kind: RecipientKind
    id: str  # Exchange Guid for a mail contact, Entra object id for a guest
    created: bool
    directory_object_id: str | None = Field(
        default=None,
        description="The Entra object id (a mail contact's ExternalDirectoryObjectId; a guest's id), "
        "for the one-call membership check. Absent in messages from earlier versions.",
    )


class WelcomeCheck(_Contract):
    """A welcome message was sent; verify-delivery re-checks its message trace until it is settled."""

    sent_at: datetime
    checks: int = Field(default=1, ge=1, description="Which scheduled re-check this message is.")


class StageMessage(_Contract):
    """State carried from one stage to the next (body of add-member and verify-delivery messages)."""

    contract_version: ContractVersion = CONTRACT_VERSION
    request: OnboardingRequest  # request_id always set here
    group: ResolvedGroup
    recipient: Recipient
    accepted_at: datetime
    changes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    welcome: WelcomeCheck | None = None
    newly_added: bool = Field(
        default=True,
        description="False when the recipient was a member of the group before this request (a re-run): "
        "verify-delivery then sends no second welcome message. Absent in messages from earlier versions.",
    )
    # Earlier versions copied the envelope into the body; accepted, never read, never written again.
    request_id: RequestId | None = Field(
        default=None,
        exclude=True,
        description="Written by earlier versions and ignored: the request id is request.request_id and the "
        "message's onboarding-request-id property.",
    )
    reply_to: str | None = Field(
        default=None,
        exclude=True,
        description="Written by earlier versions and ignored: the outcome goes to the message's ReplyTo.",
    )


class OutcomeStatus(StrEnum):
    SUCCEEDED = "Succeeded"
    SUCCEEDED_WITH_WARNINGS = "SucceededWithWarnings"
    FAILED = "Failed"
    PLANNED = "Planned"  # only for a dry_run request: nothing was changed


class OutcomeEvent(_Contract):
    """Published once per request to its ReplyTo queue, else to `onboarding-outcomes`."""

    contract_version: ContractVersion = CONTRACT_VERSION
    request_id: str
    source_system: str | None
    action: RequestAction | None = Field(
        default=None, description="What the request asked for; absent when its body could not be read."
    )
    status: OutcomeStatus
    reason: DeadLetterReason | None = Field(default=None, description="Dead-letter reason when status is Failed.")
    description: str
    stage: StageName
    group: ResolvedGroup | None = None
    recipient: Recipient | None = None
    changes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    accepted_at: datetime | None = None
    expires_at: datetime | None = Field(
        default=None, description="When the membership ends (its lease), for an onboarding that has one."
    )
    finished_at: datetime


class LeaseNotice(_Contract):
    """Published before a lease ends (docs/leases.md), as the data of a CloudEvent of type
    org.m365-external-onboarding.lease.ending.v1, to the onboarding's ReplyTo, else `onboarding-outcomes`."""

    contract_version: ContractVersion = CONTRACT_VERSION
    lease_id: str = Field(description="The lease of this person and group; the same across renewals.")
    request_id: str = Field(description="The onboarding whose end this is.")
    source_system: str
    external_email: str
    display_name: str
    group: ResolvedGroup
    ends_at: datetime = Field(description="When the app removes the membership, unless the lease is renewed.")
    description: str


class DriftKind(StrEnum):
    """What undid a verified onboarding: the vocabulary of drift events and `onboard drift` (docs/drift.md)."""

    GROUP_MISSING = "GroupMissing"  # the group was deleted
    NOT_A_MEMBER = "NotAMember"  # someone removed the person from the group
    SENDER_AUTHENTICATION_REQUIRED = "SenderAuthenticationRequired"  # 550 5.7.133 is back
    SENDERS_RESTRICTED = "SendersRestricted"  # accepts only listed senders (members-only...), not this person
    SENDER_REJECTED = "SenderRejected"  # on the group's reject list
    MODERATED = "Moderated"  # the person's mail waits for a moderator
    RECIPIENT_MISSING = "RecipientMissing"  # the contact or guest was deleted
    RECIPIENT_NOT_OURS = "RecipientNotOurs"  # the contact's provenance stamp is gone or another's
    RECIPIENT_HIDDEN = "RecipientHidden"  # the contact is hidden from address lists
    GUEST_DISABLED = "GuestDisabled"  # the guest's sign-in is blocked (accountEnabled false)
    NOT_SUBSCRIBED = "NotSubscribed"  # a Microsoft 365 group's guest no longer gets its mail


class DriftFinding(BaseModel):
    """One thing found wrong with one membership: what changed and the fix (no full address: masked)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: DriftKind
    description: str = Field(min_length=1, max_length=2000)
    fix: str = Field(min_length=1, max_length=2000, description="The command or step that puts it right.")
    repaired: bool = Field(default=False, description="The watch put it right itself, as the policy allows.")


class DriftEvent(BaseModel):
    """Published when a check finds a membership newly wrong (docs/drift.md), as the data of a CloudEvent of
    type org.m365-external-onboarding.drift.detected.v1, to the onboarding's ReplyTo, else `onboarding-outcomes`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contract_version: ContractVersion = CONTRACT_VERSION
    membership_id: str = Field(description="The person and group (a key of the roster; no address in it).")
    request_id: str = Field(description="The onboarding that verified the membership.")
    source_system: str
    external_email: str
    display_name: str
    group: ResolvedGroup
    recipient: Recipient
    findings: tuple[DriftFinding, ...] = Field(min_length=1)
    last_seen_right_at: datetime = Field(description="When a check (or the onboarding) last found it right.")
    detected_at: datetime
    description: str


def contract_schemas() -> dict[str, Any]:
    """The JSON Schemas upstream systems and consumers validate against."""
    return {
        "OnboardingRequest": OnboardingRequest.model_json_schema(),
        "StageMessage": StageMessage.model_json_schema(),
        "OutcomeEvent": OutcomeEvent.model_json_schema(),
        "LeaseNotice": LeaseNotice.model_json_schema(),
        "DriftEvent": DriftEvent.model_json_schema(),
    }
