"""The upstream contract as an AsyncAPI 3.0 document, generated from the same pydantic models the
pipeline validates with (contracts/asyncapi.json; `onboard asyncapi` writes it).

Only what upstream systems touch is in it: the intake queue, the outcome queue and a ReplyTo queue.
The stage queues between the functions are internal and may change without notice.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from shared.cloudevents import REQUEST_TYPE, REQUEST_TYPES
from shared.contracts import (
    CONTRACT_VERSION,
    DriftEvent,
    DriftFinding,
    DriftKind,
    GroupKind,
    LeaseNotice,
    OnboardingRequest,
    OutcomeEvent,
    OutcomeStatus,
    Recipient,
    RecipientKind,
    ResolvedGroup,
    StageName,
)
from shared.drift.events import DRIFT_SOURCE, DRIFT_SUBJECT, DRIFT_TYPE
from shared.drift.model import membership_key, period_id
from shared.envelope import CLOUDEVENTS_JSON
from shared.journal.model import Lease
from shared.leases import NOTICE_SOURCE, NOTICE_SUBJECT, NOTICE_TYPE, notice_message

OUTCOME_QUEUE = "onboarding-outcomes"
_REF = "#/components/schemas/{model}"

# Requests into the demo tenant (`make demo`): the tests send each through the local stack, and
# each must end Succeeded, as the document says.
REQUEST_EXAMPLES: list[dict[str, Any]] = [
    {
        "name": "distribution-group",
        "summary": "An external person into a distribution group, able to mail it",
        "headers": {"messageId": "hr-2026-0042", "replyTo": "hr-onboarding-replies"},
        "payload": {
            "request_id": "hr-2026-0042",
            "external_email": "jordan.reyes@fabrikam.example",
            "display_name": "Jordan Reyes",
            "first_name": "Jordan",
            "last_name": "Reyes",
            "group": {"smtp_address": "partners@contoso.com"},
            "source_system": "demo-hr",
        },
    },
    {
        "name": "no-external-senders",
        "summary": "Receive the group's mail only; the group's sender restrictions are left alone",
        "headers": {"messageId": "hr-2026-0043"},
        "payload": {
            "external_email": "sam.okafor@fabrikam.example",
            "display_name": "Sam Okafor",
            "group": {"smtp_address": "partners@contoso.com"},
            "source_system": "demo-hr",
            "allow_external_senders": False,
        },
    },
    {
        "name": "offboard",
        "summary": "Remove a person from a group (contract 1.1); someone who is not a member: Succeeded, saying so",
        "headers": {"messageId": "hr-2026-0045"},
        "payload": {
            "action": "offboard",
            "external_email": "alex.kim@fabrikam.example",
            "group": {"smtp_address": "partners@contoso.com"},
            "source_system": "demo-hr",
        },
    },
]
CLOUDEVENT_EXAMPLES: list[dict[str, Any]] = [
    {
        "name": "structured-cloudevent",
        "summary": "The same request as a CloudEvents 1.0 event in structured mode",
        "headers": {"messageId": "ce-2026-0044", "contentType": "application/cloudevents+json; charset=utf-8"},
        "payload": {
            "specversion": "1.0",
            "type": REQUEST_TYPE,
            "source": "/hr/workday",
            "id": "ce-2026-0044",
            "datacontenttype": "application/json",
            "data": {
                "external_email": "mei.chen@fabrikam.example",
                "display_name": "Mei Chen",
                "group": {"smtp_address": "partners@contoso.com"},
                "source_system": "demo-hr",
            },
        },
    }
]
_OUTCOME = OutcomeEvent(
    request_id="hr-2026-0042",
    source_system="demo-hr",
    status=OutcomeStatus.SUCCEEDED,
    description="Jordan Reyes is a member of Partners and may send to it.",
    stage=StageName.VERIFY_DELIVERY,
    group=ResolvedGroup(
        id="7f1c2b1e-4a0b-4c83-9f35-2d7a3c1b9e10",
        display_name="Partners",
        mail="partners@contoso.com",
        kind=GroupKind.DISTRIBUTION,
    ),
    recipient=Recipient(kind=RecipientKind.MAIL_CONTACT, id="3b1f0a52-9c4e-4d2a-8f6b-1e2d3c4b5a69", created=True),
    changes=("Created a mail contact", "Added to Partners"),
    accepted_at=datetime(2026, 11, 23, 9, 0, 1, tzinfo=UTC),
    finished_at=datetime(2026, 11, 23, 9, 0, 5, tzinfo=UTC),
)
OUTCOME_EXAMPLE: dict[str, Any] = {  # built from the model, so it is valid by construction
    "name": "succeeded",
    "summary": "The outcome of hr-2026-0042",
    "headers": {"messageId": "hr-2026-0042/outcome", "correlationId": "hr-2026-0042"},
    "payload": _OUTCOME.model_dump(mode="json", exclude_none=True),
}


_LEASE = Lease(
    key="lease-" + "3f2a" * 8,
    external_email="jordan.reyes@fabrikam.example",
    display_name="Jordan Reyes",
    group_id="7f1c2b1e-4a0b-4c83-9f35-2d7a3c1b9e10",
    group_mail="partners@contoso.com",
    group_display_name="Partners",
    group_kind=GroupKind.DISTRIBUTION,
    source_system="demo-hr",
    ends_at=datetime(2027, 3, 31, 17, 0, tzinfo=UTC),
    notice_at=datetime(2027, 3, 24, 17, 0, tzinfo=UTC),
    request_id="hr-2026-0042",
    correlation_id="hr-2026-0042",
    updated_at=datetime(2026, 11, 23, 9, 0, 5, tzinfo=UTC),
)
_NOTICE = notice_message(_LEASE, datetime(2027, 3, 24, 17, 0, 2, tzinfo=UTC))  # as the app builds it
LEASE_NOTICE_EXAMPLE: dict[str, Any] = {
    "name": "lease-ending",
    "summary": "Seven days before the membership of hr-2026-0042 ends",
    "headers": {"messageId": _NOTICE.message_id, "correlationId": "hr-2026-0042", "contentType": CLOUDEVENTS_JSON},
    "payload": json.loads(b"".join(_NOTICE.body)),
}


# The drift event's CloudEvent attributes, as the drift watch publishes them (docs/drift.md).
_DRIFT_AT = datetime(2026, 12, 8, 2, 0, 7, tzinfo=UTC)
_DRIFT = DriftEvent(
    membership_id=membership_key("jordan.reyes@fabrikam.example", _OUTCOME.group.id if _OUTCOME.group else ""),
    request_id="hr-2026-0042",
    source_system="demo-hr",
    external_email="jordan.reyes@fabrikam.example",
    display_name="Jordan Reyes",
    group=_OUTCOME.group or ResolvedGroup(id="", display_name="", mail="", kind=GroupKind.DISTRIBUTION),
    recipient=_OUTCOME.recipient or Recipient(kind=RecipientKind.MAIL_CONTACT, id="", created=True),
    findings=(
        DriftFinding(
            kind=DriftKind.RECIPIENT_HIDDEN,
            description="The person's mail contact is hidden from address lists: people in the tenant no longer "
            "find them in the address book.",
            fix="Set-MailContact -Identity '3b1f0a52-9c4e-4d2a-8f6b-1e2d3c4b5a69' -HiddenFromAddressListsEnabled $false",
        ),
        DriftFinding(
            kind=DriftKind.SENDER_AUTHENTICATION_REQUIRED,
            description="Group 'Partners' had been set to accept mail only from authenticated senders again (550 "
            "5.7.133 for external senders); the watch turned RequireSenderAuthenticationEnabled off, as the policy "
            "allows for this group.",
            fix="Nothing to do. To stop it recurring, find who turns it back on.",
            repaired=True,
        ),
    ),
    last_seen_right_at=datetime(2026, 12, 7, 2, 0, 5, tzinfo=UTC),
    detected_at=_DRIFT_AT,
    description="The membership in 'Partners' is no longer as the onboarding left it (RecipientHidden, "
    "SenderAuthenticationRequired); last seen right at 2026-12-07 02:00 UTC. Each finding says its fix.",
)
_DRIFT_ID = f"{_DRIFT.membership_id}/{period_id(datetime(2026, 12, 8, 2, 0, tzinfo=UTC))}/drift"
DRIFT_EXAMPLE: dict[str, Any] = {
    "name": "drift-detected",
    "summary": "A day after hr-2026-0042: its contact hidden, and 5.7.133 back on the group (repaired)",
    "headers": {"messageId": _DRIFT_ID, "correlationId": "hr-2026-0042", "contentType": CLOUDEVENTS_JSON},
    "payload": {
        "specversion": "1.0",
        "type": DRIFT_TYPE,
        "source": DRIFT_SOURCE,
        "id": _DRIFT_ID,
        "time": _DRIFT_AT.isoformat(),
        "subject": _DRIFT.membership_id,
        "datacontenttype": "application/json",
        "data": _DRIFT.model_dump(mode="json"),
    },
}


def _drift_event_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "CloudEvents 1.0, JSON event format, structured mode (docs/drift.md). Subject "
        f"{DRIFT_SUBJECT}: tell it from outcome events by the message's subject or content type.",
        "required": ["specversion", "type", "source", "id", "time", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "type": {"const": DRIFT_TYPE},
            "source": {"const": DRIFT_SOURCE},
            "id": {
                "type": "string",
                "description": "<membership id>/<sweep period>/drift: one per membership and period.",
            },
            "time": {"type": "string", "format": "date-time"},
            "subject": {"type": "string", "description": "The membership id."},
            "datacontenttype": {"const": "application/json"},
            "data": {"$ref": _REF.format(model="DriftEvent")},
        },
    }


def _lease_notice_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "CloudEvents 1.0, JSON event format, structured mode (docs/leases.md). Subject "
        f"{NOTICE_SUBJECT}: tell it from outcome events by the message's subject or content type.",
        "required": ["specversion", "type", "source", "id", "time", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "type": {"const": NOTICE_TYPE},
            "source": {"const": NOTICE_SOURCE},
            "id": {"type": "string", "description": "<lease id>/<end>/notice: one per lease and end."},
            "time": {"type": "string", "format": "date-time"},
            "subject": {"type": "string", "description": "The lease id."},
            "datacontenttype": {"const": "application/json"},
            "data": {"$ref": _REF.format(model="LeaseNotice")},
        },
    }


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """Each model and every model it uses, referenced as components (a schema's own #/$defs would
    resolve against the AsyncAPI document's root)."""
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _headers(*, reply_to: bool, content_types: list[str]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "messageId": {
            "type": "string",
            "maxLength": 128,
            "description": "AMQP message-id (Service Bus MessageId). Set it to the request id: Service Bus drops a "
            "resend with the same MessageId within 10 minutes (duplicate detection). The request id is the "
            "body's request_id, else a CloudEvent's id, else the MessageId; it must be 1-128 characters without "
            "whitespace, control characters, /, \\, # or ?.",
        },
        "correlationId": {
            "type": "string",
            "description": "AMQP correlation-id. Copied to the outcome event; defaults to the request id.",
        },
        "contentType": {"type": "string", "enum": content_types, "description": "AMQP content-type."},
    }
    if reply_to:
        properties["replyTo"] = {
            "type": "string",
            "maxLength": 260,
            "description": "AMQP reply-to: a queue of the same namespace for this request's outcome event. "
            "Not a Service Bus entity name, or one of the pipeline's own queues: the outcome goes to "
            f"{OUTCOME_QUEUE} with a warning. A queue that does not exist: the same.",
        }
    return {
        "type": "object",
        "description": "AMQP message properties (Service Bus broker properties), not application properties.",
        "properties": properties,
    }


def _cloudevent_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "CloudEvents 1.0, JSON event format (docs/cloudevents.md). Binary mode is accepted too: "
        "the plain request as the body and the attributes as application properties cloudEvents:<name>.",
        "required": ["specversion", "type", "source", "id"],
        "properties": {
            "specversion": {"const": "1.0"},
            "type": {
                "enum": list(REQUEST_TYPES.values()),
                "description": "One type per action: "
                + "; ".join(f"{event_type} for {action}" for action, event_type in REQUEST_TYPES.items())
                + ". The request's action must be the one its type names (no action means onboard).",
            },
            "source": {"type": "string", "minLength": 1},
            "id": {"type": "string", "minLength": 1, "description": "The request id unless data names one."},
            "datacontenttype": {"type": "string", "enum": ["application/json"]},
            "data": {"$ref": _REF.format(model="OnboardingRequest")},
            "data_base64": {"type": "string", "description": "The request's JSON, base64; instead of data."},
        },
    }


def asyncapi_document() -> dict[str, Any]:
    intake = StageName.CREATE_CONTACT.value
    outcome_message = {"$ref": "#/components/messages/OutcomeEvent"}
    notice_message_ref = {"$ref": "#/components/messages/LeaseNotice"}
    drift_message_ref = {"$ref": "#/components/messages/DriftEvent"}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "M365 external onboarding: the upstream contract",
            "version": CONTRACT_VERSION,
            "description": "Put a request on the create-contact queue (its action: onboard, the default; offboard; "
            "update); receive one outcome event per request on its ReplyTo queue, else on onboarding-outcomes. "
            "Contract v1: fields are only added, never changed or removed (1.1 added action; a 1.0 request "
            "keeps its meaning). The stage queues between the functions are internal. Every example "
            "request runs against the demo tenant of `make demo` and ends Succeeded (the tests send each).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "servicebus": {
                "host": "{namespace}.servicebus.windows.net",
                "protocol": "amqps",
                "protocolVersion": "1.0",
                "description": "An Azure Service Bus namespace (Standard tier: 256 KiB messages). Senders need "
                "Azure Service Bus Data Sender on create-contact; outcome readers Data Receiver.",
                "variables": {"namespace": {"description": "The namespace name (infra/main.bicep output)."}},
                "security": [{"$ref": "#/components/securitySchemes/entraId"}],
            }
        },
        "channels": {
            "intake": {
                "address": intake,
                "description": "Requests from upstream systems.",
                "messages": {
                    "request": {"$ref": "#/components/messages/OnboardingRequest"},
                    "cloudEvent": {"$ref": "#/components/messages/OnboardingRequestCloudEvent"},
                },
            },
            "outcomes": {
                "address": OUTCOME_QUEUE,
                "description": "One outcome event per request whose ReplyTo is empty or unusable. An operator's "
                "`onboard doctor --wait` also leaves the app's self-check report here (subject "
                "onboarding.selfcheck, not an outcome event): read outcome events by their subject, "
                "onboarding.<status>. A lease's notice comes here too (subject onboarding.LeaseEnding), and a drift "
                f"event (subject {DRIFT_SUBJECT}) when the drift watch finds an onboarding undone.",
                "messages": {
                    "outcome": outcome_message,
                    "leaseNotice": notice_message_ref,
                    "driftEvent": drift_message_ref,
                },
            },
            "replyTo": {
                "address": "{replyTo}",
                "description": "The queue a request names in its ReplyTo: its outcome, its lease's notice, and "
                "its membership's drift events.",
                "parameters": {"replyTo": {"description": "The request's AMQP reply-to."}},
                "messages": {
                    "outcome": outcome_message,
                    "leaseNotice": notice_message_ref,
                    "driftEvent": drift_message_ref,
                },
            },
        },
        "operations": {
            "submitRequest": {
                "action": "send",
                "title": "Submit a request: onboard, offboard or update a person",
                "channel": {"$ref": "#/channels/intake"},
                "messages": [
                    {"$ref": "#/channels/intake/messages/request"},
                    {"$ref": "#/channels/intake/messages/cloudEvent"},
                ],
                "reply": {
                    "address": {
                        "location": "$message.header#/replyTo",
                        "description": "Without a usable ReplyTo the outcome goes to onboarding-outcomes.",
                    },
                    "channel": {"$ref": "#/channels/replyTo"},
                    "messages": [{"$ref": "#/channels/replyTo/messages/outcome"}],
                },
            },
            "receiveOutcome": {
                "action": "receive",
                "title": "Receive outcome events",
                "channel": {"$ref": "#/channels/outcomes"},
                "messages": [{"$ref": "#/channels/outcomes/messages/outcome"}],
            },
            "receiveLeaseNotice": {
                "action": "receive",
                "title": "Receive lease notices",
                "summary": "Before a lease ends: renew it with an onboarding request that names a later expires_at.",
                "channel": {"$ref": "#/channels/outcomes"},
                "messages": [{"$ref": "#/channels/outcomes/messages/leaseNotice"}],
            },
            "receiveDriftEvent": {
                "action": "receive",
                "title": "Receive drift events",
                "summary": "An onboarded membership no longer works as verified: each finding says what changed, "
                "whether the watch repaired it, and the fix.",
                "channel": {"$ref": "#/channels/outcomes"},
                "messages": [{"$ref": "#/channels/outcomes/messages/driftEvent"}],
            },
        },
        "components": {
            "messages": {
                "OnboardingRequest": {
                    "name": "OnboardingRequest",
                    "title": "Onboarding request (contract v1)",
                    "contentType": "application/json",
                    "headers": _headers(reply_to=True, content_types=["application/json"]),
                    "payload": {"$ref": _REF.format(model="OnboardingRequest")},
                    "correlationId": {"location": "$message.header#/correlationId"},
                    "examples": REQUEST_EXAMPLES,
                },
                "OnboardingRequestCloudEvent": {
                    "name": "OnboardingRequestCloudEvent",
                    "title": "Onboarding request as a CloudEvent",
                    "contentType": "application/cloudevents+json",
                    "headers": _headers(
                        reply_to=True, content_types=["application/cloudevents+json; charset=utf-8", "application/json"]
                    ),
                    "payload": {"$ref": "#/components/schemas/OnboardingRequestCloudEvent"},
                    "examples": CLOUDEVENT_EXAMPLES,
                },
                "LeaseNotice": {
                    "name": "LeaseNotice",
                    "title": "A lease ends soon (CloudEvent org.m365-external-onboarding.lease.ending.v1)",
                    "summary": "Published ONBOARDING_LEASE_NOTICE_SECONDS before a lease ends, once per lease and end.",
                    "contentType": CLOUDEVENTS_JSON,
                    "headers": _headers(reply_to=False, content_types=[CLOUDEVENTS_JSON]),
                    "payload": {"$ref": "#/components/schemas/LeaseNoticeCloudEvent"},
                    "correlationId": {"location": "$message.header#/correlationId"},
                    "examples": [LEASE_NOTICE_EXAMPLE],
                },
                "DriftEvent": {
                    "name": "DriftEvent",
                    "title": f"An onboarding was undone (CloudEvent {DRIFT_TYPE})",
                    "summary": "Published when a sweep of the drift watch finds a membership newly wrong.",
                    "contentType": CLOUDEVENTS_JSON,
                    "headers": _headers(reply_to=False, content_types=[CLOUDEVENTS_JSON]),
                    "payload": {"$ref": "#/components/schemas/DriftEventCloudEvent"},
                    "correlationId": {"location": "$message.header#/correlationId"},
                    "examples": [DRIFT_EXAMPLE],
                },
                "OutcomeEvent": {
                    "name": "OutcomeEvent",
                    "title": "Outcome event (contract v1)",
                    "summary": "Exactly one per request (MessageId <request id>/outcome; a replay's run has its own).",
                    "contentType": "application/json",
                    "headers": _headers(reply_to=False, content_types=["application/json"]),
                    "payload": {"$ref": _REF.format(model="OutcomeEvent")},
                    "correlationId": {"location": "$message.header#/correlationId"},
                    "examples": [OUTCOME_EXAMPLE],
                },
            },
            "schemas": _schemas(OnboardingRequest, OutcomeEvent, LeaseNotice, DriftEvent)
            | {
                "OnboardingRequestCloudEvent": _cloudevent_schema(),
                "LeaseNoticeCloudEvent": _lease_notice_schema(),
                "DriftEventCloudEvent": _drift_event_schema(),
            },
            "securitySchemes": {
                "entraId": {
                    "type": "oauth2",
                    "description": "Microsoft Entra ID (a managed identity or app registration; use your tenant's "
                    "token endpoint in place of organizations). SAS connection strings work too; prefer identities.",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": "https://login.microsoftonline.com/organizations/oauth2/v2.0/token",
                            "availableScopes": {"https://servicebus.azure.net/.default": "Service Bus data access"},
                        }
                    },
                    "scopes": ["https://servicebus.azure.net/.default"],
                }
            },
        },
    }


def asyncapi_text() -> str:
    return json.dumps(asyncapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
