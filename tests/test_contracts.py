"""Contract v1: the checked-in JSON Schema matches the models, and the models enforce it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cli.main import app
from shared.contracts import OnboardingRequest

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
    assert request_schema["properties"]["display_name"]["maxLength"] == 256
    assert set(request_schema["required"]) == {"external_email", "display_name", "group", "source_system"}


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
    assert request.contract_version == "1"


@pytest.mark.parametrize(
    "change",
    [
        {"source_system": "hr; drop"},
        {"request_id": "x" * 129},
        {"request_id": "hr/2026/1"},
        {"first_name": "y" * 65},
        {"contract_version": "2"},
        {"group": {}},
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
