"""Contract v1: the checked-in JSON Schema matches the models, and the models enforce it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cli.main import app
from shared import envelope
from shared.contracts import OnboardingRequest, RequestAction, StageMessage, StageName
from shared.progress import Progress
from tests.fakes import FakeReceivedMessage

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "contracts" / "onboarding-v1.schema.json"


def test_checked_in_schema_matches_onboard_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(SCHEMA_FILE.read_text()), (
        "contracts/ is stale: run `.venv/bin/onboard schema --output contracts/onboarding-v1.schema.json`"
    )


def test_schema_forbids_unknown_fields_and_bounds_names() -> None:
    request_schema = json.loads(SCHEMA_FILE.read_text())["OnboardingRequest"]
    assert request_schema["additionalProperties"] is False
    assert request_schema["properties"]["display_name"]["anyOf"][0]["maxLength"] == 256
    assert set(request_schema["required"]) == {"external_email", "group", "source_system"}
    # display_name is required unless the action is offboard: the validator's rule, in the schema too
    assert request_schema["if"]["properties"]["action"] == {"const": "offboard"}
    assert request_schema["else"] == {"required": ["display_name"]}


def test_minimal_request_gets_defaults() -> None:
    request = OnboardingRequest.model_validate(
        {
            "external_email": "Jordan.Reyes@Fabrikam.example",
            "display_name": "  Jordan Reyes ",
            "group": {"object_id": "3f2b8c1e-0d5a-4c7b-9e6f-1a2b3c4d5e6f"},
            "source_system": "hr",
        }
    )
    assert request.display_name == "Jordan Reyes"
    assert request.allow_external_senders is True
    assert request.request_id is None
    assert (request.contract_version, request.action) == ("1.1", RequestAction.ONBOARD)


def test_a_contract_1_0_request_keeps_its_meaning() -> None:
    earlier = {
        "contract_version": "1",
        "external_email": "a@fabrikam.example",
        "display_name": "A",
        "group": {"smtp_address": "g@contoso.com"},
        "source_system": "hr",
    }
    assert OnboardingRequest.model_validate(earlier).action is RequestAction.ONBOARD


@pytest.mark.parametrize(
    ("action", "change"),
    [
        ("offboard", {}),  # an offboard needs no names
        ("offboard", {"display_name": "A"}),  # and ignores them when a bulk file sends them along
        ("update", {"display_name": "A B", "first_name": "A"}),
        ("update", {"display_name": "A", "new_external_email": "b@fabrikam.example"}),  # refused by its stage
    ],
)
def test_each_action_takes_the_fields_it_reads(action: str, change: dict[str, object]) -> None:
    body = {"external_email": "a@fabrikam.example", "group": {"smtp_address": "g@contoso.com"}, "source_system": "hr"}
    assert OnboardingRequest.model_validate(body | change | {"action": action}).action == action


@pytest.mark.parametrize(
    "change",
    [
        {"source_system": "hr; drop"},
        {"request_id": "x" * 129},
        {"request_id": "hr/2026/1"},
        {"first_name": "y" * 65},
        {"contract_version": "2"},
        {"group": {}},
        {"action": "delete"},
        {"display_name": None},  # onboard needs a display name
        {"action": "update", "display_name": None},
        {"new_external_email": "b@fabrikam.example"},  # only an update names a new address
    ],
)
def test_request_rejects_out_of_contract_values(change: dict[str, object]) -> None:
    body = {
        "external_email": "a@fabrikam.example",
        "display_name": "A",
        "group": {"smtp_address": "g@contoso.com"},
        "source_system": "hr",
        **change,
    }
    with pytest.raises(ValidationError):
        OnboardingRequest.model_validate(body)


LONG_DOMAIN = ".".join(["d" * 63] * 3) + "." + "e" * 57  # 249 octets: 4 labels within 63, RFC 1035's 253 whole


@pytest.mark.parametrize(
    ("address", "fits"),
    [
        ("a" * 64 + "@fabrikam.example", True),
        ("a" * 65 + "@fabrikam.example", False),  # RFC 5321 4.5.3.1.1: local part at most 64 octets
        ("\u00fc" * 32 + "@fabrikam.example", True),  # 64 octets in UTF-8
        ("\u00fc" * 33 + "@fabrikam.example", False),  # 33 characters, 66 octets
        ("a@" + LONG_DOMAIN, True),
        ("a" * 5 + "@" + LONG_DOMAIN, False),  # 255 octets: over the 254 of a whole path's address
    ],
)
def test_addresses_keep_to_rfc_5321_lengths_in_octets(address: str, fits: bool) -> None:
    for field in ("external_email", "group"):
        body: dict[str, object] = {
            "external_email": "a@fabrikam.example",
            "display_name": "A",
            "group": {"smtp_address": "g@contoso.com"},
            "source_system": "hr",
        }
        body[field] = address if field == "external_email" else {"smtp_address": address}
        if fits:
            OnboardingRequest.model_validate(body)
        else:
            with pytest.raises(ValidationError, match=r"octets|too long"):  # email-validator checks the whole
                OnboardingRequest.model_validate(body)


# A stage message as versions before the envelope's copies were dropped wrote it (add-member's queue).
EARLIER_STAGE_MESSAGE: dict[str, Any] = {
    "contract_version": "1",
    "request": {
        "contract_version": "1",
        "external_email": "jordan.reyes@fabrikam.example",
        "display_name": "Jordan Reyes",
        "group": {"smtp_address": "partners@contoso.com"},
        "allow_external_senders": True,
        "request_id": "hr-2026-0042",
        "source_system": "demo-hr",
    },
    "request_id": "hr-2026-0042",
    "group": {"id": "g-1", "display_name": "Partners", "mail": "partners@contoso.com", "kind": "Distribution"},
    "recipient": {"kind": "MailContact", "id": "c-1", "created": True},
    "reply_to": "hr-outcomes",
    "accepted_at": "2026-01-05T09:00:00Z",
    "changes": [],
    "warnings": [],
    "welcome": None,
}


def test_an_earlier_versions_stage_message_is_accepted_and_its_envelope_copies_are_not_written_again() -> None:
    message = FakeReceivedMessage(
        json.dumps(EARLIER_STAGE_MESSAGE).encode(),
        message_id="hr-2026-0042/add-member",
        reply_to="hr-outcomes",
        application_properties={envelope.REQUEST_ID.encode(): b"hr-2026-0042"},
    )
    inbound = envelope.decode_from(StageName.ADD_MEMBER, message, datetime.now(UTC))
    assert (inbound.delivery.request_id, inbound.delivery.reply_to) == ("hr-2026-0042", "hr-outcomes")
    assert isinstance(inbound.payload, StageMessage)
    passed_on = Progress.of(inbound.payload).stage_message()
    assert passed_on.group.display_name == "Partners" and passed_on.newly_added is True
    assert not {"request_id", "reply_to"} & set(json.loads(passed_on.model_dump_json()))
