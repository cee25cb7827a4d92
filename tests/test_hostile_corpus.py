"""A hostile corpus among valid requests, sent as an upstream system would: each message ends in
exactly one outcome with its documented reason, hostile names are stored literally, the host keeps
running, and no log line holds a person's address, a token or a key in any spelling. Through the
real azure-servicebus SDK, the emulator, the sandbox and the local host; the outcome queue keeps
every message sent to it, so a second outcome is counted whatever its MessageId.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.amqp import AmqpAnnotatedMessage, AmqpMessageProperties
from pydantic_core import from_json

from shared.cloudevents import REQUEST_TYPE, REQUEST_TYPES
from shared.contracts import DeadLetterReason, OutcomeEvent, OutcomeStatus, RequestAction
from shared.logs import LOG_FORMAT, THIRD_PARTY_LOGGERS
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import local_stack
from tests.fixtures.pipeline import indexed_app, keeping_every_outcome, whereabouts
from tests.samples import PARTNERS
from tests.test_logs import spellings
from tests.test_one_outcome import run_host_until
from tools.demo import DEMO_POLICY

pytestmark = pytest.mark.stack  # starts the stand-ins and the local host

# Distribution, mail-enabled security, Microsoft 365 (a guest, not a contact).
GROUP_KINDS = (PARTNERS, "suppliers-secure@contoso.com", "project-falcon@contoso.com")
LONG_BAD_ID = "bad/" + "x" * 124
DLQ = "add-member/$deadletterqueue"

OK, WARNED, FAILED = OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS, OutcomeStatus.FAILED
INVALID = DeadLetterReason.INVALID_REQUEST
# Blocked in the corpus's policy as written there; requests spell the same domains the other way.
BLOCKED_PUNYCODE, BLOCKED_UNICODE = "xn--mller-kva.example", "bl\u00f6cked.example"
# A contact planted with this Name and another person's address: Get-MailContact -Identity finds it.
NAMED_LIKE = "named-like@fabrikam.example"
BINARY_ID = b"\xff\x00\xfe"
DEEP = 100_000
HOSTILE_NAMES = (
    "Robert'); DROP TABLE contacts;--",
    "$(Remove-Mailbox -Identity * -Confirm:$false)",
    '"; Set-DistributionGroup -Identity x -ManagedBy me; "',
    "Zoë 李 \u202eevil\u202c",
    "🙂 Smile O'Neil",
)


FALCON = {"smtp_address": "project-falcon@contoso.com"}


def deep_event() -> bytes:
    """A structured CloudEvent whose data is nested DEEP arrays deep (json.loads: RecursionError)."""
    deep = "[" * DEEP + "]" * DEEP
    return f'{{"specversion": "1.0", "id": "deep", "source": "/hr", "type": "{REQUEST_TYPE}", "data": {deep}}}'.encode()


def request(case: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "external_email": f"{case}@fabrikam.example",
        "display_name": f"Person {case}",
        "group": {"smtp_address": PARTNERS},
        "source_system": "demo-hr",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def offboard_event(case: str) -> dict[str, Any]:
    """A CloudEvent of the offboard type carrying a request without an action (an onboarding)."""
    return {
        "specversion": "1.0",
        "id": case,
        "source": "/hr",
        "type": REQUEST_TYPES[RequestAction.OFFBOARD],
        "data": request(case),
    }


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
        # Contract 1.1's action and the fields each action reads.
        "action-unknown": request("action-unknown", action="delete"),
        "action-number": request("action-number", action=1),
        "action-null": request("action-null", action=None),
        "update-no-name": request("update-no-name", action="update", display_name=...),
        "offboard-new-address": request("offboard-new-address", action="offboard", new_external_email="n@x.example"),
        "new-address-bad": request("new-address-bad", action="update", new_external_email="not-an-address"),
        "request-id-number": request("request-id-number", request_id=5),
        "request-id-query": request("request-id-query", request_id="a?b#c"),
        "name-200k": request("name-200k", display_name="n" * 200_000),
        "nan": json.dumps(request("nan", first_name=None)).replace("null", "NaN").encode(),
        # RFC 5321's lengths, in octets: 65 ASCII, and 33 two-octet letters before the @.
        "email-local-65": request("email-local-65", external_email="a" * 65 + "@fabrikam.example"),
        "email-local-66-octets": request("email-local-66-octets", external_email="\u00fc" * 33 + "@fabrikam.example"),
        "group-local-65": request("group-local-65", group={"smtp_address": "g" * 65 + "@contoso.com"}),
        # A lease's end and a guest's sponsors (issue 26): only an aware time, only up to five object ids.
        "expires-naive": request("expires-naive", expires_at="2027-03-31T17:00:00"),
        "expires-not-a-time": request("expires-not-a-time", expires_at="tomorrow"),
        "expires-number": request("expires-number", expires_at=1e308),
        "expires-year-10000": request("expires-year-10000", expires_at="10000-01-01T00:00:00Z"),
        "expires-past": request("expires-past", expires_at="2001-01-01T00:00:00Z"),
        "expires-far": request("expires-far", expires_at="2999-01-01T00:00:00+14:00"),
        "expires-on-offboard": request("expires-on-offboard", action="offboard", expires_at="2030-01-01T00:00:00Z"),
        "sponsors-six": request("sponsors-six", sponsors=[str(uuid.uuid4()) for _ in range(6)]),
        "sponsors-not-uuid": request("sponsors-not-uuid", sponsors=["adele.vance@contoso.com"]),
        "sponsors-string": request("sponsors-string", sponsors=str(uuid.uuid4())),
        "sponsors-1000": request("sponsors-1000", sponsors=[str(uuid.uuid4())] * 1000),
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
        "address-change": (
            request("address-change", action="update", new_external_email="moved@northwind.example"),
            "AddressChangeRefused",
        ),
        "update-nobody": (request("update-nobody", action="update"), "DirectoryRejected"),
        "offboard-blocked": (
            request("offboard-blocked", action="offboard", external_email="x@blocked.example"),
            "PolicyDenied",
        ),
        "offboard-not-allowed": (
            request("offboard-not-allowed", action="offboard", group={"smtp_address": "board@contoso.com"}),
            "PolicyDenied",
        ),
        "unknown-group-id": (request("unknown-group-id", group={"object_id": str(uuid.uuid4())}), "GroupNotFound"),
        "dynamic-group": (
            request("dynamic-group", group={"smtp_address": "all-staff@contoso.com"}),
            "UnsupportedGroupKind",
        ),
        "security-group": (
            request("security-group", group={"object_id": "7c1d2e3f-0004-4b5c-8d9e-0f1a2b3c4d04"}),
            "UnsupportedGroupKind",
        ),
        "blocked-punycode-entry": (
            request("blocked-punycode-entry", external_email="x@m\u00fcller.example"),
            "PolicyDenied",
        ),
        "blocked-unicode-entry": (
            request("blocked-unicode-entry", external_email="x@xn--blcked-xxa.example"),
            "PolicyDenied",
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
    binary_id = AmqpAnnotatedMessage(
        data_body=[json.dumps(request("binary-id")).encode()], properties=AmqpMessageProperties(message_id=BINARY_ID)
    )
    binary_id_with_body_id = AmqpAnnotatedMessage(
        data_body=[json.dumps(request("binary-body-id", request_id="binary-body-id")).encode()],
        properties=AmqpMessageProperties(message_id=BINARY_ID + b"\x01"),
    )
    cases += [
        ("\\binary:sha256-" + hashlib.sha256(BINARY_ID).hexdigest(), binary_id, FAILED, INVALID),
        ("binary-body-id", binary_id_with_body_id, OK, None),
        ("deep-event", data("deep-event", deep_event(), content_type="application/cloudevents+json"), FAILED, INVALID),
        ("deep-event-untyped", data("deep-event-untyped", deep_event()), FAILED, INVALID),
        # An offboard event whose request onboards: the type and the body must agree.
        ("type-mismatch", data("type-mismatch", offboard_event("type-mismatch")), FAILED, INVALID),
        ("offboard-nobody", data("offboard-nobody", request("offboard-nobody", action="offboard")), OK, None),
        # Valid requests whose addresses a log line could spell many ways (the log test looks for each).
        (
            "unicode",
            data("unicode", request("unicode", external_email="j\u00fcrgen@m\u00fcller-partner.example")),
            OK,
            None,
        ),
        (
            "quoted",
            data("quoted", request("quoted", external_email="o'hara\u2018x@fabrikam.example", group=FALCON)),
            OK,
            None,
        ),
        (
            "ann.lee@fabrikam.example",
            data(
                "ann", request("ann", external_email="ann.lee@fabrikam.example", request_id="ann.lee@fabrikam.example")
            ),
            OK,
            None,
        ),
        (
            "correlated",
            data("correlated", request("correlated"), correlation_id="correlated@fabrikam.example"),
            OK,
            None,
        ),
        # Get-MailContact -Identity finds the planted contact by its Name: not this person's.
        (
            NAMED_LIKE,
            data("named-like", request("named-like", external_email=NAMED_LIKE, request_id=NAMED_LIKE)),
            OK,
            None,
        ),
    ]
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


@dataclass(frozen=True)
class CorpusRun:
    cases: list[Case]
    outcomes: list[OutcomeEvent]
    stored: dict[str, str]  # address -> display name, of every contact and guest
    impostor_in_partners: bool
    log_lines: list[str]
    missing: dict[str, list[str]]  # where each request without an outcome is: the journal and the queues
    secrets: list[str]  # what no log line may hold: the connection string and its key


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusRun]:
    """The corpus, once, through the stack, with every log line of every logger at DEBUG: the third
    parties too, which the app keeps to warnings, so the masking alone must hold."""
    policy = json.loads(DEMO_POLICY.read_text())
    policy["blocked_domains"] += [BLOCKED_PUNYCODE, BLOCKED_UNICODE]
    policy_file = tmp_path_factory.mktemp("corpus") / "policy.json"
    policy_file.write_text(json.dumps(policy))
    indexed_app()  # its import quiets the third parties: turned up again below, for this run
    root, handler = logging.getLogger(), _Lines()
    levels = {name: logging.getLogger(name).level for name in ("", *THIRD_PARTY_LOGGERS)}
    root.addHandler(handler)
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield asyncio.run(_run_corpus(policy_file, handler))
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


async def _run_corpus(policy_file: Path, handler: _Lines) -> CorpusRun:
    cases = corpus()
    with local_stack(emulator_config=keeping_every_outcome(), policy_file=policy_file) as stack:
        directory = stack.sandbox.directory
        impostor = directory.add_contact(NAMED_LIKE, "Someone Else", "someone.else@tailspin.example", None, None)
        connection = stack.environment[SERVICEBUS_CONNECTION]
        async with (
            ServiceBusClient.from_connection_string(connection) as client,
            client.get_queue_sender("create-contact") as sender,
        ):
            for _, message, _, _ in cases:
                await sender.send_messages(message)
        outcomes = await run_host_until(stack, [case[0] for case in cases], within_seconds=300)
        stored = {c.external_email_address: c.display_name for c in directory.contacts.values()}
        stored |= {u.mail: u.display_name for u in directory.users.values() if u.user_type == "Guest"}
        partners = directory.group_by_identity(PARTNERS)
        impostor_in_partners = partners is not None and impostor.guid in partners.members
        answered = {outcome.request_id for outcome in outcomes}
        sent_as = {case: _message_id(message) for case, message, _, _ in cases if case not in answered}
        missing = await whereabouts(stack, list(sent_as), sent_as)
    key = next(part.split("=", 1)[1] for part in connection.split(";") if part.startswith("SharedAccessKey="))
    return CorpusRun(cases, outcomes, stored, impostor_in_partners, handler.lines, missing, [connection, key])


def _message_id(message: ServiceBusMessage | AmqpAnnotatedMessage) -> object:
    if isinstance(message, ServiceBusMessage):
        return message.message_id
    return message.properties.message_id if message.properties else None


def test_every_hostile_message_ends_in_exactly_one_outcome_with_its_reason(corpus_run: CorpusRun) -> None:
    cases, outcomes, stored = corpus_run.cases, corpus_run.outcomes, corpus_run.stored
    assert len([case for case in cases if case[2] is FAILED]) >= 50
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
    strangers = sorted(set(by_id) - {case[0] for case in cases})  # an outcome under an id no case has
    assert wrong == {}, f"outcomes under other ids: {strangers}; where those without one are: {corpus_run.missing}"
    assert strangers == []
    for index, name in enumerate(HOSTILE_NAMES):
        assert stored[f"name-{index}@fabrikam.example"] == name, "stored literally"
    assert stored[NAMED_LIKE] == "Person named-like", "the person got a contact of their own"
    assert not corpus_run.impostor_in_partners, "the contact only named like the address was not added"


def test_no_log_line_holds_an_address_a_token_or_a_key_in_any_spelling(corpus_run: CorpusRun) -> None:
    lines = corpus_run.log_lines
    assert len(lines) > len(corpus_run.cases), "the run was logged"
    assert any("%40" in line or "%2540" in line for line in lines), "URLs with addresses were logged (masked)"
    persons = {
        address
        for _, message, _, _ in corpus_run.cases
        if isinstance(message, ServiceBusMessage)
        for address in _external_emails(b"".join(message.body))
    }
    assert len(persons) > 40
    leaks = {
        (address, form)
        for address in persons
        for form, text in spellings(address).items()
        if any(text in line for line in lines)
    }
    assert leaks == set()
    assert [line for line in lines if "eyJ" in line or any(secret in line for secret in corpus_run.secrets)] == []
    assert [line for line in lines if "Bearer " in line and "Bearer ***" not in line] == []


def _external_emails(body: bytes) -> list[str]:
    try:
        parsed = from_json(body)  # json.loads would raise RecursionError on the deep events
    except ValueError:
        return []
    address = parsed.get("external_email") if isinstance(parsed, dict) else None
    return [address] if isinstance(address, str) and "@" in address else []
