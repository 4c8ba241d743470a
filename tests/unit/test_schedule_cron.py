"""Cron expressions in a time zone: which minutes fire."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from model.campaign import ScheduleSpec
from model.schedule import due_times


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_a_nightly_cron_fires_once_a_night_at_local_time() -> None:
    dues = due_times("0 2 * * *", "Europe/Berlin", _utc(2026, 11, 1), _utc(2026, 11, 4))
    assert dues == [_utc(2026, 11, 1, 1), _utc(2026, 11, 2, 1), _utc(2026, 11, 3, 1)]  # 02:00 CET = 01:00 UTC


def test_the_window_is_open_at_its_start_and_closed_at_its_end() -> None:
    assert due_times("30 * * * *", "UTC", _utc(2026, 11, 1, 10, 30), _utc(2026, 11, 1, 11, 30)) == [
        _utc(2026, 11, 1, 11, 30)
    ]


def test_steps_lists_ranges_and_weekdays() -> None:
    dues = due_times("*/20 9 * * 1-5", "UTC", _utc(2026, 11, 27, 8), _utc(2026, 11, 30, 10))  # Fri .. Mon
    assert [d.strftime("%a %H:%M") for d in dues] == [
        "Fri 09:00",
        "Fri 09:20",
        "Fri 09:40",
        "Mon 09:00",
        "Mon 09:20",
        "Mon 09:40",
    ]
    assert due_times("0 0 * * 7", "UTC", _utc(2026, 11, 28), _utc(2026, 11, 30)) == [_utc(2026, 11, 29)]  # 7 is Sunday


def test_daylight_saving_skips_the_missing_hour_and_fires_the_repeated_one_once() -> None:
    spring = due_times("30 2 * * *", "Europe/Berlin", _utc(2026, 3, 28), _utc(2026, 3, 30))
    assert spring == [_utc(2026, 3, 28, 1, 30)]  # 29 March 02:30 does not exist in Berlin
    autumn = due_times("30 2 * * *", "Europe/Berlin", _utc(2026, 10, 24, 12), _utc(2026, 10, 25, 12))
    assert autumn == [_utc(2026, 10, 25, 0, 30)]  # 02:30 CEST, not again at 02:30 CET


@pytest.mark.parametrize(
    ("cron", "tz", "message"),
    [
        ("0 2 * *", "UTC", "5 fields"),
        ("0 25 * * *", "UTC", "0..23"),
        ("0 2 * * mon", "UTC", "use numbers"),
        ("0 2 * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_schedules_are_refused(cron: str, tz: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScheduleSpec(cron=cron, timezone=tz)
