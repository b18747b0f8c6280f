"""The bound estimate of `pipeline.extract.slices` from planner statistics (no database)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from pipeline.extract.slices import CursorStats

T0 = datetime(2024, 1, 1)
MS = timedelta(milliseconds=1)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def uniform(rows: float, days: int = 100) -> CursorStats:
    """`rows` spread evenly over `days` days: a histogram of one bucket per day."""
    return CursorStats(rows=rows, bounds=tuple(day(i) for i in range(days + 1)))


def test_a_uniform_histogram_puts_the_bound_where_the_rows_add_up() -> None:
    stats = uniform(1_000_000)  # 10,000 rows a day
    assert stats.rows_between(None, None) == pytest.approx(1_000_000)
    assert stats.rows_between(day(10), day(30)) == pytest.approx(200_000)
    assert abs(stats.bound(day(10), 200_000) - day(30)) < MS  # type: ignore[operator]
    assert abs(stats.bound(day(10.5), 5_000) - day(11)) < MS  # type: ignore[operator]
    assert abs(stats.bound(day(10.25), 5_000) - day(10.75)) < MS  # inside a bucket: linear
    assert abs(stats.bound(None, 250_000) - day(25)) < MS  # type: ignore[operator]


def test_no_bound_when_the_statistics_put_fewer_rows_above_the_start() -> None:
    stats = uniform(1_000_000)
    assert stats.bound(day(90), 100_001) is None  # 100,000 left
    assert stats.bound(day(100), 1) is None  # above the histogram: nothing known
    assert stats.bound(None, 1_000_001) is None  # a table smaller than the target


def test_a_common_value_counts_whole_on_the_side_it_falls() -> None:
    # 40% of the rows share one value at day 50; the rest spread over 100 days.
    stats = CursorStats(
        rows=1_000_000,
        bounds=tuple(day(i) for i in range(101)),
        common=((day(50), 0.4),),
    )
    assert stats.rows_between(day(50), day(51)) == pytest.approx(406_000)
    assert stats.rows_between(day(49), day(50)) == pytest.approx(6_000)
    # The bound passes just above the common value once it holds the target: its rows go
    # in this slice, never split across two.
    bound = stats.bound(day(49), 100_000)
    assert bound is not None and day(50) < bound <= day(50) + MS


def test_common_values_only() -> None:
    values = tuple((day(i), 0.1) for i in range(10))  # ten values, 100 rows each
    stats = CursorStats(rows=1000, common=values)
    assert stats.rows_between(day(2), day(5)) == pytest.approx(300)
    # A bound at a value the column holds: its rows start the next slice.
    assert stats.bound(day(2), 300) == day(5)
    assert stats.bound(day(2), 250) == day(5)
    assert stats.bound(day(2), 301) == day(6)
    assert stats.bound(day(2.5), 100) == day(4)
    assert stats.bound(day(9), 101) is None


def test_the_bound_always_lies_above_the_start() -> None:
    stats = uniform(1_000_000)
    for start in (day(0), day(3.25), day(50), day(99.999)):
        for target in (1, 10, 5_000, 50_000):
            bound = stats.bound(start, target)
            assert bound is None or bound > start
