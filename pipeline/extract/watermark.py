"""Per-table extraction watermarks: versioned files, compare-and-swap, the maximum wins.

A watermark is saved only after the batch it covers is committed (data, then manifest).
Two extractions of the same table may run at once (R10), so a plain overwrite could move
the watermark backwards. Each save instead creates the next version,
`_state/<table>/watermark-<seq>.json`, with the lake's atomic create-if-absent: of two
writers racing for the same sequence number exactly one wins, the loser re-reads and
writes only if its state is still ahead. The newest version is the watermark.

Finding the newest without listing: after creating a version the writer copies it to
`_state/<table>/watermark.json`. That pointer can lag (a writer stopped before copying, or
an older copy landed last), so a reader takes the pointer's version and then probes the
next numbers until one is missing: two reads whatever the history. A table written before
the pointer existed is found by listing once; its first save writes the pointer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from pipeline import layout
from pipeline.errors import CorruptBatchError, TransientError
from pipeline.lake import Lake

log = logging.getLogger(__name__)

KEEP_VERSIONS = 20  # older versions are pruned; readers only ever need the newest
MAX_ATTEMPTS = 50
MAX_PROBES = 1_000  # versions past a lagging pointer before a reader gives up
_VERSION = re.compile(r"watermark-(\d{10})\.json$")


class WatermarkConflictError(TransientError):
    """Too many concurrent writers kept winning the race for the next watermark version."""


@dataclass(frozen=True)
class Watermark:
    """How far a table has been extracted.

    `last_updated`/`key`: the (cursor, primary key) of the last row delivered, in the order
    rows are read; every earlier row version visible to that run was delivered. `more`:
    the run stopped at `max_rows`, so the next call resumes exactly after the key (no
    overlap, so a backlog always makes progress). `run_started`: the source clock when
    that run's first segment began; the overlap window of the next run starts from the
    earlier of it and `last_updated` (see `pipeline.extract`).
    """

    table: str
    last_updated: datetime
    key: int
    run_started: datetime
    more: bool
    run_id: str
    seq: int = 0

    @property
    def order(self) -> tuple[datetime, int, int]:
        """Sort key: later cursor wins; at the same cursor a finished run beats `more`."""
        return (self.last_updated, self.key, 0 if self.more else 1)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["last_updated"] = iso_ms(self.last_updated)
        data["run_started"] = self.run_started.isoformat(timespec="microseconds")
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Watermark:
        return cls(
            table=str(data["table"]),
            last_updated=datetime.fromisoformat(str(data["last_updated"])),
            key=int(data["key"]),  # type: ignore[call-overload]
            run_started=datetime.fromisoformat(str(data["run_started"])),
            more=bool(data["more"]),
            run_id=str(data["run_id"]),
            seq=int(data["seq"]),  # type: ignore[call-overload]
        )


def iso_ms(value: datetime) -> str:
    """ISO text with exactly millisecond precision (the source's timestamp(3)); never rounds."""
    if value.microsecond % 1000:
        raise ValueError(f"{value.isoformat()} has sub-millisecond digits; cursor values are ms")
    return value.isoformat(timespec="milliseconds")


def _key(table: str, seq: int) -> str:
    return layout.watermark(table, seq)


Listed = Callable[[list[tuple[str, datetime]]], None]


def _listed_versions(lake: Lake, table: str, on_listing: Listed | None) -> list[int]:
    """Every stored version, by listing (only for state written before the pointer)."""
    listed = lake.list_with_times(layout.table_state(table))
    if on_listing is not None:
        on_listing(listed)
    found = (_VERSION.search(k) for k, _ in listed)
    return sorted(int(m.group(1)) for m in found if m)


def load(lake: Lake, table: str, *, on_listing: Listed | None = None) -> Watermark | None:
    """The newest watermark of `table`, or None before its first committed extraction.

    `on_listing` sees the listing of `_state/<table>/` when the pointer is missing (a table
    written before it, or never extracted), so a caller can clean up what that era left.
    An unreadable pointer or version (a damaged file) is skipped: the versions are listed
    instead of the pointer, the one before a damaged version is taken. The next extraction
    then starts a little earlier and re-reads what it must; with none left it starts over
    with a full extraction; both are re-deliveries the transform drops.
    """
    newest = _readable(lake, table, layout.watermark_pointer(table))
    if newest is None:
        for seq in reversed(_listed_versions(lake, table, on_listing)):
            newest = _readable(lake, table, _key(table, seq))
            if newest is not None:
                break
        else:
            return None
    probe = newest.seq + 1
    for _ in range(MAX_PROBES):  # versions the pointer does not know of yet
        if not lake.exists(_key(table, probe)):
            return newest
        later = _readable(lake, table, _key(table, probe))
        if later is not None:
            newest = later
        probe += 1
    raise WatermarkConflictError(
        f"table {table!r}: more than {MAX_PROBES} watermark versions past "
        f"{layout.watermark_pointer(table)}; retry"
    )


def _readable(lake: Lake, table: str, key: str) -> Watermark | None:
    """The watermark stored at `key`; None if it is missing or damaged (logged)."""
    try:
        data = lake.read_json_or_none(key)
        return None if data is None else Watermark.from_json(data)
    except (CorruptBatchError, KeyError, TypeError, ValueError) as exc:
        log.warning(
            "unreadable watermark file skipped",
            extra={"table": table, "key": key, "error": str(exc)},
        )
        return None


def read_watermark(lake: Lake, table: str) -> str | None:
    """The table's high-water `last_updated` as ISO text (for status displays), or None."""
    mark = load(lake, table)
    return iso_ms(mark.last_updated) if mark else None


def save(lake: Lake, mark: Watermark) -> Watermark:
    """Store `mark` unless the stored watermark is already at or beyond it; return the winner.

    Never moves a watermark backwards, whatever the interleaving of concurrent savers.
    """
    floor = 0  # past a damaged version that holds the next number
    for _ in range(MAX_ATTEMPTS):
        current = load(lake, mark.table)
        if current is not None and current.order >= mark.order:
            return current
        seq = max((current.seq if current else 0) + 1, floor)
        candidate = Watermark(**{**asdict(mark), "seq": seq})
        if lake.create_json(_key(mark.table, seq), candidate.to_json()):
            _point_at(lake, candidate)
            _prune(lake, mark.table, seq)
            return candidate
        if _readable(lake, mark.table, _key(mark.table, seq)) is None:
            floor = seq + 1
    raise WatermarkConflictError(
        f"table {mark.table!r}: could not save the watermark after {MAX_ATTEMPTS} attempts "
        "(other extractions of this table kept saving first); retry"
    )


def _point_at(lake: Lake, mark: Watermark) -> None:
    """Copy `mark` to the pointer unless a newer version is there already: the check makes
    a lagging pointer need a writer to stall between two requests, not across its save
    (a pointer that lags past the pruned versions reads an older watermark: rows are read
    again, never skipped)."""
    key = layout.watermark_pointer(mark.table)
    pointed = _readable(lake, mark.table, key)
    if pointed is None or pointed.seq < mark.seq:
        lake.write_json(key, mark.to_json())


def _prune(lake: Lake, table: str, newest: int) -> None:
    """Keep the newest `KEEP_VERSIONS`: each save deletes the one that falls out (no
    listing). Superseded versions are history only; nothing reads them."""
    lake.delete(_key(table, newest - KEEP_VERSIONS))
