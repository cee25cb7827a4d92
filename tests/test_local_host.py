"""The local host finds function_app.py's triggers as the Functions host would."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from standins.local_host import discover_triggers, host_options, load_function_app


def test_discovers_one_explicitly_settled_trigger_per_stage() -> None:
    triggers = {t.queue_name: t for t in discover_triggers(load_function_app())}
    stages = {"create-contact", "add-member", "verify-delivery"}
    assert set(triggers) == stages | {f"{stage}/$deadletterqueue" for stage in stages}
    for trigger in triggers.values():
        assert trigger.connection == "ServiceBusConnection"
        assert trigger.auto_complete is False
        assert trigger.message_parameter == "message"
        assert trigger.actions_parameter == "message_actions"
        queue, _, sub_queue = trigger.queue_name.partition("/")
        assert trigger.function_name == queue.replace("-", "_") + ("_dead_letters" if sub_queue else "")


def test_concurrency_and_lock_renewal_come_from_host_json(tmp_path: Path) -> None:
    service_bus = json.loads(Path("host.json").read_text())["extensions"]["serviceBus"]
    options = host_options()
    assert options.max_concurrent_calls == service_bus["maxConcurrentCalls"]
    assert options.max_auto_lock_renewal_duration == timedelta(minutes=5)
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"extensions": {"serviceBus": {"maxConcurrentCalls": 0}}}))
    with pytest.raises(ValueError, match="maxConcurrentCalls"):
        host_options(host_json)
    host_json.write_text(json.dumps({"extensions": {"serviceBus": {"maxAutoLockRenewalDuration": "soon"}}}))
    with pytest.raises(ValueError, match="maxAutoLockRenewalDuration"):
        host_options(host_json)
    defaults = host_options(tmp_path / "absent.json")
    assert (defaults.max_concurrent_calls, defaults.max_auto_lock_renewal_duration) == (16, timedelta(minutes=5))
