"""When a cron expression fires, in its own time zone: pure logic, no clock of its own.

``due_times(cron, tz, after, until)`` lists the UTC instants in ``(after, until]`` whose
local wall-clock minute matches the expression. Walking UTC minutes and converting each
to local time handles daylight saving time the way a lab expects: a wall-clock time
skipped in spring does not fire; one repeated in autumn fires once (the second occurrence
is dropped). Fields: minute, hour, day of month, month, day of week (0 and 7 are Sunday);
as in cron(8), when both day fields are restricted a day matching either fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from model.campaign import check_cron

MAX_SPAN = timedelta(days=31)  # a longer gap (beat down a month) is looked at from its end
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expr: str) -> Cron:
        """Parse a validated expression (model.campaign.check_cron's rules)."""
        fields = check_cron(expr).split()
        sets = [_field(text, low, high) for text, (low, high) in zip(fields, _RANGES, strict=True)]
        weekdays = frozenset(0 if day == 7 else day for day in sets[4])
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays, fields[2] == "*", fields[4] == "*")

    def matches(self, local: datetime) -> bool:
        """Whether the local wall-clock minute ``local`` fires."""
        if local.minute not in self.minutes or local.hour not in self.hours or local.month not in self.months:
            return False
        day = local.day in self.days
        weekday = (local.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day and weekday
        return day or weekday


def _field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step = part.partition("/")
        start, end = (low, high) if span == "*" else _span(span)
        values.update(range(start, end + 1, int(step) if step else 1))
    return frozenset(values)


def _span(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    return int(first), int(last or first)


def due_times(cron: str, timezone: str, after: datetime, until: datetime) -> list[datetime]:
    """The UTC minutes in ``(after, until]`` at which ``cron`` fires in ``timezone``."""
    expr, zone = Cron.parse(cron), ZoneInfo(timezone)
    after = max(after.astimezone(UTC), until.astimezone(UTC) - MAX_SPAN)
    minute = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    seen: set[tuple[int, int, int, int, int]] = set()
    out = []
    while minute <= until:
        local = minute.astimezone(zone)
        wall = (local.year, local.month, local.day, local.hour, local.minute)
        if wall not in seen and expr.matches(local):
            out.append(minute)
        seen.add(wall)
        minute += timedelta(minutes=1)
    return out
