"""The upstream contract as an AsyncAPI 3 document: generated from the pydantic contracts, valid for the
official parser (@asyncapi/parser from npm), and its example requests really onboard when sent."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from cli.asyncapi import asyncapi_text
from cli.upstream import collect_outcomes
from shared.contracts import DriftEvent, LeaseNotice, OnboardingRequest, OutcomeEvent, OutcomeStatus, StageName
from shared.settings import SERVICEBUS_CONNECTION
from standins.servicebus_emulator import EmulatorConfig, QueueConfig
from standins.stack import LocalStack, local_stack, running_host
from tests.tools import require_tool

DOCUMENT = Path("contracts/asyncapi.json")
PARSER_HOME = Path(".venv/asyncapi/node_modules")
VALIDATOR = Path(__file__).with_name("validate_asyncapi.cjs")
ERROR = 0  # the parser's DiagnosticSeverity.Error


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT.read_text())
    return loaded


def request_examples() -> list[dict[str, Any]]:
    messages = document()["components"]["messages"]
    return [*messages["OnboardingRequest"]["examples"], *messages["OnboardingRequestCloudEvent"]["examples"]]


def diagnostics(path: Path) -> list[dict[str, Any]]:
    require_tool(
        (PARSER_HOME / "@asyncapi" / "parser").is_dir(),
        "@asyncapi/parser is not installed: `make test` installs it into .venv/asyncapi",
    )
    ran = subprocess.run(  # noqa: S603
        ["node", str(VALIDATOR), str(PARSER_HOME), str(path)],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: list[dict[str, Any]] = json.loads(ran.stdout)
    return found


def test_the_checked_in_document_is_what_the_contracts_generate() -> None:
    assert DOCUMENT.read_text() == asyncapi_text(), "run: .venv/bin/onboard asyncapi --output contracts/asyncapi.json"


@pytest.mark.stack  # node, about 6 s
def test_the_official_parser_finds_no_error() -> None:
    errors = [d for d in diagnostics(DOCUMENT) if d["severity"] == ERROR]
    assert errors == []


@pytest.mark.stack  # node, about 6 s
def test_the_parser_check_can_fail(tmp_path: Path) -> None:
    broken = document()
    broken["operations"]["submitRequest"]["channel"] = {"$ref": "#/channels/missing"}
    del broken["components"]["messages"]["OutcomeEvent"]["payload"]
    broken["servers"]["servicebus"]["protocol"] = 42
    copy = tmp_path / "broken.json"
    copy.write_text(json.dumps(broken))
    paths = {tuple(d["path"][:3]) for d in diagnostics(copy) if d["severity"] == ERROR}
    assert ("operations", "submitRequest", "channel") in paths
    assert ("servers", "servicebus", "protocol") in paths


def test_every_example_is_valid_for_the_models_the_pipeline_uses() -> None:
    messages = document()["components"]["messages"]
    for example in messages["OnboardingRequest"]["examples"]:
        OnboardingRequest.model_validate(example["payload"])
    for example in messages["OnboardingRequestCloudEvent"]["examples"]:
        event = example["payload"]
        data = event.get("data") or json.loads(base64.b64decode(event["data_base64"]))
        OnboardingRequest.model_validate(data)
    for example in messages["OutcomeEvent"]["examples"]:
        OutcomeEvent.model_validate(example["payload"])
    for example in messages["LeaseNotice"]["examples"]:
        LeaseNotice.model_validate(example["payload"]["data"])
    for example in messages["DriftEvent"]["examples"]:
        assert example["payload"]["type"] == "org.m365-external-onboarding.drift.detected.v1"
        DriftEvent.model_validate(example["payload"]["data"])


@pytest.fixture
def stack_with_reply_queues() -> Iterator[LocalStack]:
    """The demo stack plus every ReplyTo queue the examples name, as an upstream system would have."""
    reply_queues = {e["headers"]["replyTo"] for e in request_examples() if "replyTo" in e["headers"]}
    config = EmulatorConfig.default()
    extra = tuple(
        QueueConfig.model_validate({"Name": name, "RequiresDuplicateDetection": True}) for name in reply_queues
    )
    with local_stack(emulator_config=EmulatorConfig(queues=config.queues + extra)) as running:
        yield running


@pytest.mark.stack
async def test_every_example_request_onboards_through_the_pipeline(stack_with_reply_queues: LocalStack) -> None:
    examples = request_examples()
    connection = stack_with_reply_queues.environment[SERVICEBUS_CONNECTION]
    async with (
        running_host(stack_with_reply_queues.environment),
        ServiceBusClient.from_connection_string(connection) as client,
    ):
        async with client.get_queue_sender(StageName.CREATE_CONTACT.value) as sender:
            for example in examples:
                headers = example["headers"]
                await sender.send_messages(
                    ServiceBusMessage(
                        json.dumps(example["payload"]).encode(),
                        message_id=headers["messageId"],
                        reply_to=headers.get("replyTo"),
                        content_type=headers.get("contentType", "application/json"),
                    )
                )
        outcomes: dict[str, OutcomeEvent] = {}
        for queue in {e["headers"].get("replyTo", "onboarding-outcomes") for e in examples}:
            wanted = [
                e["headers"]["messageId"]
                for e in examples
                if e["headers"].get("replyTo", "onboarding-outcomes") == queue
            ]
            outcomes |= await collect_outcomes(client, queue, wanted, within_seconds=40)
    assert {e["name"]: outcomes[e["headers"]["messageId"]].status for e in examples} == {
        e["name"]: OutcomeStatus.SUCCEEDED for e in examples
    }
