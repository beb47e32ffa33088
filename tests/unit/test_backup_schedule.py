"""When scheduled backups are due (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.backup.schedule import Due, next_backup

T0 = datetime(2026, 11, 24, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("full", "incr", "after", "expected"),
    [
        ("0 1 * * *", None, T0, Due(datetime(2026, 11, 24, 1, tzinfo=UTC), "full")),
        ("0 1 * * *", None, T0.replace(hour=1), Due(datetime(2026, 11, 25, 1, tzinfo=UTC), "full")),
        (None, "*/15 * * * *", T0, Due(datetime(2026, 11, 24, 0, 45, tzinfo=UTC), "incr")),
        ("0 1 * * *", "0 * * * *", T0, Due(datetime(2026, 11, 24, 1, tzinfo=UTC), "full")),
        ("0 1 * * 0", "0 1 * * *", T0, Due(datetime(2026, 11, 24, 1, tzinfo=UTC), "incr")),
        (None, None, T0, None),
    ],
)
def test_next_backup(full: str | None, incr: str | None, after: datetime, expected: Due) -> None:
    assert next_backup(full, incr, after) == expected


def test_schedules_are_utc_whatever_zone_now_is_given_in() -> None:
    tokyo = T0.astimezone(timezone(timedelta(hours=9)))
    assert next_backup("0 1 * * *", None, tokyo) == next_backup("0 1 * * *", None, T0)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        next_backup("0 1 * * *", None, datetime(2026, 11, 24))


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_the_next_run_is_always_later_and_within_a_day(naive: datetime) -> None:
    now = naive.replace(tzinfo=UTC)
    due = next_backup("0 1 * * *", "30 */6 * * *", now)
    assert due is not None
    assert now < due.at <= now + timedelta(days=1)
