"""A replay is a new run of its request (shared/envelope.replay_message): its own MessageIds and outcome,
a fresh attempt budget, the same request id and body. Pure: the path through the emulator is tests/test_dlq.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage

from shared import envelope
from shared.contracts import OnboardingRequest, StageName
from tests.fakes import FakeReceivedMessage
from tests.samples import sample_request_json

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _received(sent: ServiceBusMessage) -> FakeReceivedMessage:
    """A message as the pipeline built it, read back as the host hands it over (property keys as bytes)."""
    properties: dict[str | bytes, Any] = {
        (k.encode() if isinstance(k, str) else k): v for k, v in (sent.application_properties or {}).items()
    }
    return FakeReceivedMessage(
        body=b"".join(sent.body),
        message_id=sent.message_id,
        correlation_id=sent.correlation_id,
        reply_to=sent.reply_to,
        application_properties=properties,
    )


def test_a_replayed_upstream_request_is_a_new_run_of_the_same_request() -> None:
    upstream = FakeReceivedMessage(body=sample_request_json(), message_id="req-7", reply_to="replies")
    first = envelope.decode(upstream, OnboardingRequest, NOW - timedelta(days=2))

    again = envelope.replay_message(StageName.CREATE_CONTACT, first.body, first.delivery, NOW)
    assert again.message_id == "demo-hr/req-7/replay-1/create-contact/1"  # scoped by the request's source
    replayed = envelope.decode(_received(again), OnboardingRequest, NOW)
    assert (replayed.delivery.request_id, replayed.delivery.replay, replayed.delivery.attempt) == ("req-7", 1, 1)
    assert replayed.delivery.first_attempt_at == NOW  # the age budget starts again
    assert replayed.delivery.reply_to == "replies"
    assert replayed.body == first.body

    # Everything the run sends next is its own: duplicate detection cannot confuse it with the first run.
    assert envelope.retry_message(StageName.CREATE_CONTACT, replayed.body, replayed.delivery).message_id == (
        "demo-hr/req-7/replay-1/create-contact/2"
    )
    assert envelope.outcome_message_id("req-7", 1) == "req-7/replay-1/outcome" != envelope.outcome_message_id("req-7")
    twice = envelope.replay_message(StageName.CREATE_CONTACT, replayed.body, replayed.delivery, NOW)
    assert twice.message_id == "demo-hr/req-7/replay-2/create-contact/1"


def test_upstream_cannot_claim_a_replay_without_the_matching_message_id() -> None:
    spoofed = FakeReceivedMessage(
        body=sample_request_json(),
        message_id="req-8",
        application_properties={b"onboarding-replay": "5", b"onboarding-attempt": "1"},
    )
    assert envelope.decode(spoofed, OnboardingRequest, NOW).delivery.replay == 0


@pytest.mark.parametrize("value", ["-1", "x", "1000"])
def test_a_replay_number_out_of_range_is_an_unusable_envelope(value: str) -> None:
    message = FakeReceivedMessage(application_properties={b"onboarding-replay": value})
    with pytest.raises(envelope.EnvelopeError, match="onboarding-replay"):
        envelope.read_delivery(message, NOW)


def test_replays_are_bounded() -> None:
    delivery = envelope.read_delivery(FakeReceivedMessage(application_properties={b"onboarding-replay": "999"}), NOW)
    with pytest.raises(envelope.EnvelopeError, match="replayed 999 times"):
        envelope.replay_message(StageName.ADD_MEMBER, b"{}", delivery, NOW)
