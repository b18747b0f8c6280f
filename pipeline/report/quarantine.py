"""Quarantined rows by rule, read from the processed zone (the warehouse never sees them).

The transform writes rejected rows to `_quarantine/<source_table>/run=<run_id>.parquet`
with a `_rule` column and lists the file in its run's manifest (docs/CONTRACTS.md). Only
files a committed manifest lists count: a file without one is the leftover of a crashed
transform. The listing of `_quarantine/` finds the few runs that rejected anything, so the
cost follows the runs with quarantined rows, not every run ever made; only the `_rule`
column of each file is read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import layout, processed_log
from pipeline.errors import CorruptBatchError
from pipeline.lake import Lake
from pipeline.report.window import ReportWindow
from pipeline.transform.quality import RULE


@dataclass(frozen=True)
class QuarantineCount:
    committed_on: date  # UTC day the transform run committed
    source_table: str
    rule: str
    rows: int


def quarantine_counts(lake: Lake, window: ReportWindow) -> list[QuarantineCount]:
    """Quarantined rows per (commit day, source table, rule) of runs committed in `window`."""
    runs: dict[str, set[str]] = {}
    for key in lake.list(layout.QUARANTINE):
        parsed = layout.quarantine_file_of(key)
        if parsed is not None:
            runs.setdefault(parsed[1], set()).add(key)
    counts: Counter[tuple[date, str, str]] = Counter()
    logged: dict[str, dict[str, Any]] | None = None
    for run_id, keys in sorted(runs.items()):
        mkey = layout.processed_manifest(run_id)
        doc = lake.read_json_or_none(mkey)
        if doc is None:  # expired after the retention period (its log entry says), or never
            if logged is None:  # committed: the transform crashed before its manifest
                logged = processed_log.committed_batches(lake)
            doc = logged.get(run_id)
            if doc is None:
                continue
        committed_on, files, expected = _manifest_quarantine(doc, mkey)
        if not window.contains(committed_on):
            continue
        for table, key in sorted(files.items()):
            if key not in keys:
                raise CorruptBatchError(
                    f"processed manifest {lake.uri(mkey)} lists quarantine file {key}, which "
                    "does not exist; re-run the transform that wrote it"
                )
            rules = _rules(lake, key)
            if sum(rules.values()) != expected.get(table):
                raise CorruptBatchError(
                    f"quarantine file {lake.uri(key)} holds {sum(rules.values())} rows, its "
                    f"manifest says {expected.get(table)}; re-run the transform that wrote it"
                )
            for rule, n in rules.items():
                counts[(committed_on, table, rule)] += n
    return [
        QuarantineCount(day, table, rule, n) for (day, table, rule), n in sorted(counts.items())
    ]


def _manifest_quarantine(doc: Any, key: str) -> tuple[date, dict[str, str], dict[str, int]]:
    """(commit day, {table: quarantine key}, {table: rows}) of one processed manifest."""
    try:
        committed_on = datetime.fromisoformat(doc["committed_at"]).date()
        files = {str(t): str(k) for t, k in doc.get("quarantine_files", {}).items()}
        rows = {str(t): int(n) for t, n in doc["quarantined"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptBatchError(f"processed manifest {key} is malformed: {exc!r}") from None
    return committed_on, files, rows


def _rules(lake: Lake, key: str) -> Counter[str]:
    """Rows per rule in one quarantine file (only its `_rule` column is read)."""
    try:
        with pq.ParquetFile(lake.path(key), filesystem=lake.fs) as pf:
            column = pf.read(columns=[RULE]).column(RULE)
    except (OSError, KeyError, pa.ArrowInvalid) as exc:
        raise CorruptBatchError(
            f"quarantine file {lake.uri(key)} is unreadable ({exc}); re-run the transform"
        ) from None
    counts: Counter[str] = Counter()
    for entry in pc.value_counts(column.fill_null("unknown")).to_pylist():
        counts[str(entry["values"])] += int(entry["counts"])
    return counts
