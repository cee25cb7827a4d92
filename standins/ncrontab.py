"""NCRONTAB schedules, as the Functions timer trigger reads them, for the local host.

Six fields, `{second} {minute} {hour} {day} {month} {day-of-week}`, each a value, a range (`5-7`), a
list (`5,8,10`), `*`, or any of these with an interval (`*/5`, `0-30/10`); days of the week 0-6 from
Sunday, months 1-12, both also by English name or its first three letters. Times are UTC, the
host's default without WEBSITE_TIME_ZONE, which the app does not set (docs/functions-host.md, "Timer
trigger"). What this reading does not model (a schedule that restricts both the day of the month and
the day of the week, or a TimeSpan, which only dedicated plans take) is refused rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# name, lowest, highest, names (the first three letters, in order from `lowest`)
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)
# Long enough for a schedule that fires on 29 February only.
_HORIZON = timedelta(days=4 * 366)


@dataclass(frozen=True)
class Schedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        parts = expression.split()
        if len(parts) != len(_FIELDS):
            raise ValueError(f"NCRONTAB {expression!r}: six fields expected (second minute hour day month day-of-week)")
        sets = [_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        if parts[3] != "*" and parts[5] != "*":
            raise ValueError(
                f"NCRONTAB {expression!r}: a day of the month and a day of the week at once is not modelled"
            )
        return cls(expression, *sets)

    def next_after(self, moment: datetime) -> datetime:
        """The first time after `moment` (aware, UTC) that the schedule fires, to the second."""
        at = moment.replace(microsecond=0) + timedelta(seconds=1)
        end = at + _HORIZON
        while at < end:
            if at.month not in self.months:
                at = (at.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
            elif at.day not in self.days or (at.weekday() + 1) % 7 not in self.weekdays:
                at = at.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif at.hour not in self.hours:
                at = at.replace(minute=0, second=0) + timedelta(hours=1)
            elif at.minute not in self.minutes:
                at = at.replace(second=0) + timedelta(minutes=1)
            elif at.second not in self.seconds:
                at += timedelta(seconds=1)
            else:
                return at
        raise ValueError(f"NCRONTAB {self.expression!r} never fires")


def _field(text: str, name: str, lowest: int, highest: int, names: tuple[str, ...]) -> frozenset[int]:
    def value(word: str) -> int:
        if word.isdigit():
            number = int(word)
        elif names and word.isalpha() and word[:3].lower() in names:
            number = lowest + names.index(word[:3].lower())
        else:
            raise ValueError(f"NCRONTAB {name} {word!r} is not a number" + (" or a name" if names else ""))
        if not lowest <= number <= highest:
            raise ValueError(f"NCRONTAB {name} {number} is outside {lowest}-{highest}")
        return number

    chosen: set[int] = set()
    for part in text.split(","):
        span, slash, interval = part.partition("/")
        step = int(interval) if interval.isdigit() and int(interval) > 0 else 0
        if slash and not step:
            raise ValueError(f"NCRONTAB {name} {part!r}: the interval must be a positive number")
        if span == "*":
            first, last = lowest, highest
        elif "-" in span:
            start, _, stop = span.partition("-")
            first, last = value(start), value(stop)
        else:
            first = value(span)
            last = highest if slash else first
        if first > last:
            raise ValueError(f"NCRONTAB {name} {part!r}: the range runs backwards")
        chosen.update(range(first, last + 1, step or 1))
    return frozenset(chosen)
