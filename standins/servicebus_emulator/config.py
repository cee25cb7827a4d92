"""Queue configuration in the Config.json format of Microsoft's Service Bus emulator.

Accepting the same file lets a user switch between that emulator (Docker) and this one unchanged.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_CONFIG = Path(__file__).with_name("config.json")
_ISO_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_iso_duration(text: str) -> timedelta:
    """ISO 8601 durations as Service Bus uses them (days and time parts: P14D, PT1M, PT0.5S)."""
    match = _ISO_DURATION.match(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration such as PT1M or P14D")
    parts = {name: float(value) for name, value in match.groupdict().items() if value}
    return timedelta(**parts)


class QueueConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    name: str = Field(alias="Name", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,259}$")
    max_delivery_count: int = Field(default=10, ge=1, alias="MaxDeliveryCount")
    lock_duration: timedelta = Field(default=timedelta(minutes=1), alias="LockDuration")
    default_message_time_to_live: timedelta = Field(default=timedelta(days=14), alias="DefaultMessageTimeToLive")
    dead_lettering_on_message_expiration: bool = Field(default=False, alias="DeadLetteringOnMessageExpiration")
    requires_duplicate_detection: bool = Field(default=False, alias="RequiresDuplicateDetection")
    duplicate_detection_history_time_window: timedelta = Field(
        default=timedelta(minutes=10), alias="DuplicateDetectionHistoryTimeWindow"
    )

    @field_validator(
        "lock_duration", "default_message_time_to_live", "duplicate_detection_history_time_window", mode="before"
    )
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_iso_duration(value) if isinstance(value, str) else value

    @field_validator("lock_duration")
    @classmethod
    def _lock_limit(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(minutes=5):
            raise ValueError("LockDuration must be more than 0 and at most 5 minutes (Service Bus limit)")
        return value


class EmulatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    queues: tuple[QueueConfig, ...]

    @classmethod
    def default(cls) -> EmulatorConfig:
        return cls.load(DEFAULT_CONFIG)

    @classmethod
    def load(cls, path: Path) -> EmulatorConfig:
        document = _read_json(path)
        try:
            entries = [q for ns in document["UserConfig"]["Namespaces"] for q in ns.get("Queues", [])]
            named = [(str(q["Name"]), q.get("Properties", {})) for q in entries]
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{path}: expected UserConfig.Namespaces[].Queues[] with a Name each ({type(error).__name__}: {error})"
            ) from error
        queues = []
        for name, properties in named:
            try:
                queues.append(QueueConfig.model_validate({"Name": name, **properties}))
            except (ValidationError, TypeError) as error:
                raise ValueError(f"{path}: queue {name!r} is invalid: {error}") from error
        return cls(queues=tuple(queues))

    def with_overrides(self, **changes: Any) -> EmulatorConfig:
        """The same queues with some properties changed (tests: short locks, few deliveries)."""
        return EmulatorConfig(queues=tuple(q.model_copy(update=changes) for q in self.queues))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ValueError(f"emulator config {path} does not exist") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"emulator config {path} is not JSON: {error}") from error
