"""A hostile corpus among valid requests, sent as an upstream system would: each message ends in
exactly one outcome with its documented reason, hostile names are stored literally, and the host
keeps running. Through the real azure-servicebus SDK, the emulator, the sandbox and the local host; the
outcome queue keeps every message sent to it, so a second outcome is counted whatever its MessageId.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.amqp import AmqpAnnotatedMessage, AmqpMessageProperties

from shared.contracts import DeadLetterReason, OutcomeStatus
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import local_stack
from tests.fixtures.pipeline import keeping_every_outcome
from tests.samples import PARTNERS
from tests.test_one_outcome import run_host_until

pytestmark = pytest.mark.stack  # starts the stand-ins and the local host

# Distribution, mail-enabled security, Microsoft 365 (a guest, not a contact).
GROUP_KINDS = (PARTNERS, "suppliers-secure@contoso.com", "project-falcon@contoso.com")
LONG_BAD_ID = "bad/" + "x" * 124
DLQ = "add-member/$deadletterqueue"

OK, WARNED, FAILED = OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS, OutcomeStatus.FAILED
INVALID = DeadLetterReason.INVALID_REQUEST
HOSTILE_NAMES = (
    "Robert'); DROP TABLE contacts;--",
    "$(Remove-Mailbox -Identity * -Confirm:$false)",
    '"; Set-DistributionGroup -Identity x -ManagedBy me; "',
    "Zoë 李 \u202eevil\u202c",
    "🙂 Smile O'Neil",
)


def request(case: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "external_email": f"{case}@fabrikam.example",
        "display_name": f"Person {case}",
        "group": {"smtp_address": PARTNERS},
        "source_system": "demo-hr",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def data(case: str, body: bytes | dict[str, Any], **envelope: Any) -> ServiceBusMessage:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ServiceBusMessage(raw, message_id=envelope.pop("message_id", case), **envelope)


Case = tuple[str, ServiceBusMessage | AmqpAnnotatedMessage, OutcomeStatus, DeadLetterReason | None]


def corpus() -> list[Case]:
    bad_bodies: dict[str, bytes | dict[str, Any]] = {
        "empty": b"",
        "not-json": b"not json",
        "truncated": b'{"external_email": ',
        "null": b"null",
        "array": b"[]",
        "number": b"42",
        "string": b'"a string"',
        "not-utf8": b"\xff\xfe{}",
        "email-number": request("email-number", external_email=123),
        "name-list": request("name-list", display_name=[]),
        "group-string": request("group-string", group=PARTNERS),
        "senders-maybe": request("senders-maybe", allow_external_senders="maybe"),
        "source-number": request("source-number", source_system=5),
        "first-object": request("first-object", first_name={"a": 1}),
        "group-mail-number": request("group-mail-number", group={"smtp_address": 5}),
        "group-id-not-uuid": request("group-id-not-uuid", group={"object_id": "not-a-uuid"}),
        "no-email": request("no-email", external_email=...),
        "no-name": request("no-name", display_name=...),
        "no-group": request("no-group", group=...),
        "no-source": request("no-source", source_system=...),
        "group-empty": request("group-empty", group={}),
        "group-both": request("group-both", group={"smtp_address": PARTNERS, "object_id": str(uuid.uuid4())}),
        "unknown-field": request("unknown-field", admin=True),
        "group-unknown-field": request("group-unknown-field", group={"smtp_address": PARTNERS, "owner": "me"}),
        "version-2": request("version-2", contract_version="2"),
        "name-257": request("name-257", display_name="n" * 257),
        "first-65": request("first-65", first_name="f" * 65),
        "last-65": request("last-65", last_name="l" * 65),
        "source-65": request("source-65", source_system="s" * 65),
        "source-injection": request("source-injection", source_system="hr; drop"),
        "request-id-129": request("request-id-129", request_id="r" * 129),
        "request-id-slash": request("request-id-slash", request_id="hr/2026/1"),
        "request-id-space": request("request-id-space", request_id="hr 1"),
        "name-blank": request("name-blank", display_name="   "),
        "name-line-break": request("name-line-break", display_name="New\nLine"),
        "name-tab": request("name-tab", first_name="Ta\tb"),
        "name-escape": request("name-escape", last_name="x\x1b[31m"),
        "email-bad": request("email-bad", external_email="not-an-address"),
        "email-no-dot": request("email-no-dot", external_email="a@b"),
        "email-two-ats": request("email-two-ats", external_email="a@b@fabrikam.example"),
        "email-header-injection": request("email-header-injection", external_email="a@fabrikam.example\r\nBcc: x@e.x"),
        "email-zero-width": request("email-zero-width", external_email="a\u200b@fabrikam.example"),
        "version-number": request("version-number", contract_version=1),
        "request-id-number": request("request-id-number", request_id=5),
        "request-id-query": request("request-id-query", request_id="a?b#c"),
        "name-200k": request("name-200k", display_name="n" * 200_000),
        "nan": json.dumps(request("nan", first_name=None)).replace("null", "NaN").encode(),
    }
    cases: list[Case] = [(case, data(case, body), FAILED, INVALID) for case, body in bad_bodies.items()]
    refused = {
        "internal-domain": (request("internal-domain", external_email="x@contoso.com"), "AddressInUseInternally"),
        "blocked-domain": (request("blocked-domain", external_email="x@blocked.example"), "PolicyDenied"),
        "blocked-subdomain": (request("blocked-subdomain", external_email="x@mail.blocked.example"), "PolicyDenied"),
        "blocked-upper-case": (request("blocked-upper-case", external_email="x@BLOCKED.Example"), "PolicyDenied"),
        "unknown-source": (request("unknown-source", source_system="crm"), "PolicyDenied"),
        "group-not-allowed": (
            request("group-not-allowed", group={"smtp_address": "board@contoso.com"}),
            "PolicyDenied",
        ),
        "unknown-group": (request("unknown-group", group={"smtp_address": "nobody@contoso.com"}), "GroupNotFound"),
        "unknown-group-id": (request("unknown-group-id", group={"object_id": str(uuid.uuid4())}), "GroupNotFound"),
        "dynamic-group": (
            request("dynamic-group", group={"smtp_address": "all-staff@contoso.com"}),
            "UnsupportedGroupKind",
        ),
        "security-group": (
            request("security-group", group={"object_id": "7c1d2e3f-0004-4b5c-8d9e-0f1a2b3c4d04"}),
            "UnsupportedGroupKind",
        ),
        "internal-user": (
            request(
                "internal-user",
                external_email="adele.vance@contoso.com",
                group={"smtp_address": "project-falcon@contoso.com"},
            ),
            "AddressInUseInternally",
        ),
    }
    cases += [(case, data(case, body), FAILED, DeadLetterReason(reason)) for case, (body, reason) in refused.items()]
    value_body = AmqpAnnotatedMessage(
        value_body={"external_email": "x"}, properties=AmqpMessageProperties(message_id="amqp-value")
    )
    sequence_body = AmqpAnnotatedMessage(
        sequence_body=[[1, 2]], properties=AmqpMessageProperties(message_id="amqp-sequence")
    )
    cases += [
        ("amqp-value", value_body, FAILED, INVALID),
        ("amqp-sequence", sequence_body, FAILED, INVALID),
        ("id/slash", data("id-slash", request("id-slash"), message_id="id/slash"), FAILED, INVALID),
        ("id#hash", data("id-hash", request("id-hash"), message_id="id#hash"), FAILED, INVALID),
        ("id space", data("id-space", request("id-space"), message_id="id space"), FAILED, INVALID),
        # 128 characters that cannot be a request id: the refusal's own MessageIds must still fit.
        (LONG_BAD_ID, data("long-bad", request("long-bad"), message_id=LONG_BAD_ID), FAILED, INVALID),
        ("reply-dead-letters", data("reply-dead-letters", request("reply-dead-letters"), reply_to=DLQ), WARNED, None),
        ("reply-too-long", data("reply-too-long", request("reply-too-long"), reply_to="q" * 300), WARNED, None),
        # The body's request_id is the identity, whatever the MessageId; ids need not be ASCII.
        ("hr-body-id", data("body-id", request("body-id", request_id="hr-body-id"), message_id="sb-123"), OK, None),
        ("ид-1", data("unicode-id", request("unicode-id"), message_id="ид-1"), OK, None),
        # Valid requests in hostile envelopes: they succeed, with a warning where the envelope was wrong.
        ("reply-loop", data("reply-loop", request("reply-loop"), reply_to="create-contact"), WARNED, None),
        ("reply-bad-name", data("reply-bad-name", request("reply-bad-name"), reply_to="no such queue"), WARNED, None),
        ("reply-missing", data("reply-missing", request("reply-missing"), reply_to="gone-queue"), WARNED, None),
        (
            "spoofed",
            data(
                "spoofed",
                request("spoofed"),
                application_properties={"onboarding-request-id": "someone-else", "onboarding-attempt": "999"},
            ),
            OK,
            None,
        ),
        ("L" * 128, data("long", request("long"), message_id="L" * 128), OK, None),
    ]
    for index, name in enumerate(HOSTILE_NAMES):
        case = f"name-{index}"
        group = {"smtp_address": GROUP_KINDS[index % len(GROUP_KINDS)]}  # contacts and guests alike
        cases.append((case, data(case, request(case, display_name=name, group=group)), OK, None))
    return cases


async def test_every_hostile_message_ends_in_exactly_one_outcome_with_its_reason() -> None:
    cases = corpus()
    assert len([case for case in cases if case[2] is FAILED]) >= 50
    with local_stack(emulator_config=keeping_every_outcome()) as stack:
        async with (
            ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
            client.get_queue_sender("create-contact") as sender,
        ):
            for _, message, _, _ in cases:
                await sender.send_messages(message)
        outcomes = await run_host_until(stack, [case[0] for case in cases], within_seconds=150)
        directory = stack.sandbox.directory
        stored = {c.external_email_address: c.display_name for c in directory.contacts.values()}
        stored |= {u.mail: u.display_name for u in directory.users.values() if u.user_type == "Guest"}
    counted: dict[str, int] = {}
    for outcome in outcomes:
        counted[outcome.request_id] = counted.get(outcome.request_id, 0) + 1
    assert {rid: n for rid, n in counted.items() if n != 1} == {}, "each message has exactly one outcome"
    by_id = {o.request_id: o for o in outcomes}
    wrong = {
        case: (by_id[case].status, by_id[case].reason) if case in by_id else "no outcome"
        for case, _, status, reason in cases
        if case not in by_id or (by_id[case].status, by_id[case].reason) != (status, reason)
    }
    assert wrong == {}
    assert set(by_id) == {case[0] for case in cases}
    for index, name in enumerate(HOSTILE_NAMES):
        assert stored[f"name-{index}@fabrikam.example"] == name, "stored literally"
