"""The local host finds function_app.py's triggers as the Functions host would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from standins.local_host import discover_triggers, load_function_app, max_concurrent_calls


def test_discovers_one_explicitly_settled_trigger_per_stage() -> None:
    triggers = {t.queue_name: t for t in discover_triggers(load_function_app())}
    assert set(triggers) == {"create-contact", "add-member", "verify-delivery"}
    for trigger in triggers.values():
        assert trigger.connection == "ServiceBusConnection"
        assert trigger.auto_complete is False
        assert trigger.message_parameter == "message"
        assert trigger.actions_parameter == "message_actions"
        assert trigger.function_name == trigger.queue_name.replace("-", "_")


def test_concurrency_comes_from_host_json(tmp_path: Path) -> None:
    assert (
        max_concurrent_calls()
        == json.loads(Path("host.json").read_text())["extensions"]["serviceBus"]["maxConcurrentCalls"]
    )
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"extensions": {"serviceBus": {"maxConcurrentCalls": 0}}}))
    with pytest.raises(ValueError, match="maxConcurrentCalls"):
        max_concurrent_calls(host_json)
    assert max_concurrent_calls(tmp_path / "absent.json") == 16
