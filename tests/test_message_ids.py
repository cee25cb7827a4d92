"""Every MessageId names its own request: two different MessageIds never share a request id, so never a
journal row, a journal key or an outcome MessageId, whatever AMQP type they come as."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from shared import envelope
from shared.contracts import OnboardingRequest, StageName
from shared.journal.model import Transition, TransitionKind
from shared.journal.table_storage import partition_key
from tests.fakes import FakeReceivedMessage
from tests.samples import sample_request_json

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
# AMQP allows a message-id of type string, binary, uuid or ulong; the SDK hands over a binary one that
# is not UTF-8 as bytes, a uuid as UUID and a ulong as int (ServiceBusReceivedMessage.message_id).
RAW_IDS: list[Any] = [
    b"\xff\xfe",
    b"\xff\xfd",
    "b'\\xff\\xfe'",  # the Python text of the first one
    None,
    "",
    "seq-1",  # what a missing MessageId used to become on the message with sequence number 1
    uuid.UUID(int=5),
    str(uuid.UUID(int=5)),
    7,
    "7",
    "\\none:seq-1",
    "\\\\none:seq-1",
    "a/b",
    "a%2Fb",
]


def request_id_of(raw: Any) -> str:
    body = json.dumps({k: v for k, v in json.loads(sample_request_json()).items() if k != "request_id"})
    message = FakeReceivedMessage(body=body.encode(), message_id=raw, sequence_number=1)
    try:
        return envelope.decode(message, OnboardingRequest, NOW).delivery.request_id
    except envelope.UnreadableMessage as unreadable:
        return unreadable.delivery.request_id


def test_different_message_ids_never_share_a_request_id_nor_a_journal_key() -> None:
    ids = [request_id_of(raw) for raw in RAW_IDS]
    assert all(isinstance(request_id, str) for request_id in ids)
    assert len(set(ids)) == len(RAW_IDS), dict(zip(map(repr, RAW_IDS), ids, strict=True))
    assert len({partition_key(request_id) for request_id in ids}) == len(RAW_IDS)
    for request_id in ids:  # every one can be journalled
        Transition(
            request_id=request_id,
            stage=StageName.CREATE_CONTACT,
            decision=TransitionKind.DEAD_LETTERED,
            attempt=1,
            at=NOW,
        )


def test_a_binary_message_id_is_named_by_a_digest_of_all_of_it() -> None:
    raw = b"\xff" * 100 + b"\x00"
    assert request_id_of(raw) == "\\binary:sha256-" + hashlib.sha256(raw).hexdigest()
    assert request_id_of(raw[:-1]) != request_id_of(raw)


def test_a_string_message_id_is_kept_whole_and_only_a_leading_backslash_is_doubled() -> None:
    assert request_id_of("hr-2026-1") == "hr-2026-1"
    assert request_id_of("id/with/slash") == "id/with/slash"
    assert request_id_of("\\x") == "\\\\x"


@pytest.mark.parametrize("claimed", [b"\xff", b"\xfe", "\ufffd"])
def test_request_ids_claimed_in_properties_stay_apart_too(claimed: bytes | str) -> None:
    message = FakeReceivedMessage(body=b"{}", application_properties={envelope.REQUEST_ID.encode(): claimed})
    others = {b"\xff", b"\xfe", "\ufffd"} - {claimed}
    mine = envelope.claimed_request_id(message)
    for other in others:
        other_message = FakeReceivedMessage(body=b"{}", application_properties={envelope.REQUEST_ID.encode(): other})
        assert envelope.claimed_request_id(other_message) != mine
