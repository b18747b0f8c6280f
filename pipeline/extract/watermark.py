"""Per-table extraction watermarks: versioned files, compare-and-swap, the maximum wins.

A watermark is saved only after the batch it covers is committed (data, then manifest).
Two extractions of the same table may run at once (R10), so a plain overwrite could move
the watermark backwards. Each save instead creates the next version,
`_state/<table>/watermark-<seq>.json`, with the lake's atomic create-if-absent: of two
writers racing for the same sequence number exactly one wins, the loser re-reads and
writes only if its state is still ahead. Readers take the highest sequence number.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime

from pipeline import layout
from pipeline.errors import TransientError
from pipeline.lake import Lake

KEEP_VERSIONS = 20  # older versions are pruned; readers only ever need the newest
MAX_ATTEMPTS = 50
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


def _versions(lake: Lake, table: str) -> list[int]:
    found = (_VERSION.search(k) for k in lake.list(layout.table_state(table)))
    return sorted(int(m.group(1)) for m in found if m)


def load(lake: Lake, table: str) -> Watermark | None:
    """The newest watermark of `table`, or None before its first committed extraction."""
    versions = _versions(lake, table)
    return Watermark.from_json(lake.read_json(_key(table, versions[-1]))) if versions else None


def read_watermark(lake: Lake, table: str) -> str | None:
    """The table's high-water `last_updated` as ISO text (for status displays), or None."""
    mark = load(lake, table)
    return iso_ms(mark.last_updated) if mark else None


def save(lake: Lake, mark: Watermark) -> Watermark:
    """Store `mark` unless the stored watermark is already at or beyond it; return the winner.

    Never moves a watermark backwards, whatever the interleaving of concurrent savers.
    """
    for _ in range(MAX_ATTEMPTS):
        current = load(lake, mark.table)
        if current is not None and current.order >= mark.order:
            return current
        seq = (current.seq if current else 0) + 1
        candidate = Watermark(**{**asdict(mark), "seq": seq})
        if lake.create_json(_key(mark.table, seq), candidate.to_json()):
            _prune(lake, mark.table, seq)
            return candidate
    raise WatermarkConflictError(
        f"table {mark.table!r}: could not save the watermark after {MAX_ATTEMPTS} attempts "
        "(other extractions of this table kept saving first); retry"
    )


def _prune(lake: Lake, table: str, newest: int) -> None:
    for seq in _versions(lake, table):
        if seq <= newest - KEEP_VERSIONS:
            lake.delete(_key(table, seq))
