"""The local host reads a timer's NCRONTAB schedule as the Functions host documents it (standins/ncrontab.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from functions.triggers import DEAD_LETTER_SWEEP_SCHEDULE
from standins.ncrontab import Schedule


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "fires"),
    [
        # Microsoft's examples (functions-bindings-timer, "CRON examples")
        ("0 */5 * * * *", "2026-12-07 18:55:00", "2026-12-07 19:00:00"),
        ("0 */5 * * * *", "2026-12-07 18:56:59.9", "2026-12-07 19:00:00"),
        ("0 0 * * * *", "2026-12-07 18:00:00", "2026-12-07 19:00:00"),
        ("0 0 */2 * * *", "2026-12-07 19:00:00", "2026-12-07 20:00:00"),
        ("0 0 9-17 * * *", "2026-12-07 17:30:00", "2026-12-08 09:00:00"),
        ("0 30 9 * * 1-5", "2026-12-11 10:00:00", "2026-12-14 09:30:00"),  # Friday -> Monday
        ("0 30 9 * Jan Mon", "2026-12-07 10:00:00", "2027-01-04 09:30:00"),
        ("5,8,10 * * * * *", "2026-12-07 10:00:08", "2026-12-07 10:00:10"),
        ("0 0 0 29 Feb *", "2026-03-01 00:00:00", "2028-02-29 00:00:00"),
        ("0 0 12 * * Sunday", "2026-12-07 00:00:00", "2026-12-13 12:00:00"),
    ],
)
def test_next_occurrence(expression: str, after: str, fires: str) -> None:
    assert Schedule.parse(expression).next_after(at(after)) == at(fires)


def test_the_sweep_schedule_fires_every_five_minutes() -> None:
    schedule = Schedule.parse(DEAD_LETTER_SWEEP_SCHEDULE)
    first = schedule.next_after(at("2026-12-07 10:02:13"))
    assert (first, schedule.next_after(first)) == (at("2026-12-07 10:05:00"), at("2026-12-07 10:10:00"))


@pytest.mark.parametrize(
    "expression",
    [
        "*/5 * * * *",  # five fields: the second is missing
        "0 60 * * * *",
        "0 */0 * * * *",
        "0 10-5 * * * *",
        "0 0 0 * Foo *",
        "0 0 0 1 * Mon",  # day of the month and of the week at once: not modelled
        "00:05:00",  # a TimeSpan: dedicated plans only
    ],
)
def test_what_it_cannot_read_is_refused(expression: str) -> None:
    with pytest.raises(ValueError, match="NCRONTAB"):
        Schedule.parse(expression)
