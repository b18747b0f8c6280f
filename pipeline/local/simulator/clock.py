"""Business time: weekdays 08:00-19:00, morning payment batches, all in epoch milliseconds.

Timestamps are plain `int64` milliseconds since 1970-01-01 (no time zone, like the source's
`timestamp(3)` columns), so whole histories are generated with numpy instead of per-row
`datetime` objects.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
OPEN_MS = 8 * HOUR_MS  # first order of a day
CLOSE_MS = 19 * HOUR_MS  # no orders from 19:00
# The settlement job of the real system runs each weekday between 07:55:10.915 and
# 07:55:12.380 and stamps every payment it settles with the same moment (one UPDATE): in
# the real snapshot up to 37 payments share one `last_updated`. `batch_time_ms` gives each
# day its own moment in that range.
BATCH_MS = 7 * HOUR_MS + 55 * 60_000 + 10_915
BATCH_SPREAD_MS = 1_466
_HASH_MULTIPLIER = 2_654_435_761  # Knuth's multiplicative hash spreads day numbers evenly
_HASH_MODULUS = 2**32

_EPOCH = datetime(1970, 1, 1)
_EPOCH_DATE = date(1970, 1, 1)


def to_ms(moment: datetime) -> int:
    """Naive datetime -> epoch milliseconds (truncated, as `timestamp(3)` stores it)."""
    return (moment.replace(tzinfo=None) - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(ms))


def day_of(ms: int | np.ndarray) -> int | np.ndarray:
    """Epoch day number (days since 1970-01-01) of a millisecond timestamp."""
    return ms // DAY_MS


def day_to_date(day: int) -> date:
    return _EPOCH_DATE + timedelta(days=int(day))


def is_weekday(day: int | np.ndarray) -> bool | np.ndarray:
    """1970-01-01 was a Thursday, so (day + 3) % 7 is 0 for Monday ... 6 for Sunday."""
    return (day + 3) % 7 < 5


def batch_time_ms(day: np.ndarray) -> np.ndarray:
    """When the morning batch of each epoch `day` runs: one moment for all its payments."""
    day = np.asarray(day, dtype=np.int64)
    jitter = (day.astype(np.uint64) * np.uint64(_HASH_MULTIPLIER)) % np.uint64(_HASH_MODULUS)
    return day * DAY_MS + BATCH_MS + (jitter % np.uint64(BATCH_SPREAD_MS)).astype(np.int64)


def open_windows(start_ms: int, end_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Business-hour windows (starts, ends) inside [start_ms, end_ms), one per weekday."""
    days = np.arange(int(day_of(start_ms)), int(day_of(end_ms)) + 1, dtype=np.int64)
    days = days[is_weekday(days)]
    starts = np.maximum(days * DAY_MS + OPEN_MS, start_ms)
    ends = np.minimum(days * DAY_MS + CLOSE_MS, end_ms)
    keep = ends > starts
    return starts[keep], ends[keep]


def business_times(rng: np.random.Generator, n: int, start_ms: int, end_ms: int) -> np.ndarray:
    """`n` sorted timestamps spread uniformly over the business hours in [start_ms, end_ms).

    Uniform over open time gives the flat hour-of-day and weekday profile of the real data.
    """
    starts, ends = open_windows(start_ms, end_ms)
    lengths = ends - starts
    total = int(lengths.sum())
    if n == 0 or total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.sort(rng.integers(0, total, size=n, dtype=np.int64))
    cumulative = np.cumsum(lengths)
    window = np.searchsorted(cumulative, offsets, side="right")
    return np.asarray(starts[window] + offsets - (cumulative[window] - lengths[window]))
