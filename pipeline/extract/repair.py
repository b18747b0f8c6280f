"""Broken ingestion batches: found while folding, taken back, extracted again.

A batch is broken when its manifest is unreadable, or a file it lists is missing, unreadable
or holds another number of rows than the manifest says (a truncated upload, a deleted
object). No command is needed to recover the rows, only the source: the next
reconciliation of the table (every run by default)

1. takes the broken batch back: its manifest moves to `_retracted/<table>/<run_id>.json`
   with the reason, so no reader uses the batch any more (its batch log entry stays; the
   transform and the fold skip an entry with a retraction record, so the transform stops
   failing on it and nothing half-read is ever consumed);
2. extracts the batch's window again from the source as a new batch of mode `repair`:
   the rows whose `last_updated` lies in the window (`since`, `after_key`, `until`, or
   `bound` when the batch stopped there: `pipeline.extract.slices`) or,
   for a batch without a time window (a reconciliation's), whose key lies in the batch's
   key range. Rows updated since have left the window and were delivered by later
   batches; a re-delivery of a row the transform already has changes nothing.

A batch broken after it was folded (a file deleted later) is only noticed by a reader: the
transform's `CorruptBatchError` names `totesys-etl reconcile --tables <t> --repair`, which
checks every committed batch of the table whose manifest is still there (`check_all`: one
listing, and the held state's archived fold entries) and repairs the broken ones. A lost
manifest alone loses nothing: readers find a batch by its log entry, which lists its files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from pipeline import ingest_log, layout
from pipeline.catalog import Table
from pipeline.errors import CorruptBatchError
from pipeline.extract import held as held_state
from pipeline.extract.drift import SourceColumn
from pipeline.extract.held import Folded, Keys
from pipeline.extract.source import SourceSnapshot, Window
from pipeline.lake import Lake

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Damage:
    """A batch to take back and extract again."""

    key: str  # its manifest key
    run_id: str
    reason: str
    window: dict[str, Any]  # since, until, after_key, min_key, max_key, mode (what is known)
    manifest: dict[str, Any] | None = None  # None: unreadable

    def describe(self) -> str:
        return (
            f"ingestion batch {self.key} {self.reason}; it was taken back and its window "
            "extracted again"
        )


def _window(manifest: dict[str, Any], keys: Keys | None) -> dict[str, Any]:
    window = dict(manifest.get("window") or {})
    out = {k: window.get(k) for k in ("since", "until", "after_key", "bound")}
    out["mode"] = manifest.get("mode")
    if keys is not None and len(keys):
        out["min_key"], out["max_key"] = int(keys.key.min()), int(keys.key.max())
    return out


def _listed(lake: Lake, spec: Table) -> list[str]:
    """The table's committed manifest keys (one listing of its manifest prefix: only for
    state from before the batch log, and for `check_all`)."""
    return [k for k in lake.list(layout.ingestion_manifests(spec.name)) if k.endswith(".json")]


def _entries(lake: Lake, spec: Table, after: int) -> tuple[list[dict[str, Any]], int]:
    """The batch log entries of the table after number `after`, and the number read up to."""
    entries = ingest_log.batch_log(lake).read_after(after)
    through = int(entries[-1]["seq"]) if entries else after
    return [e for e in entries if e.get("table") == spec.name], through


def unfolded(lake: Lake, spec: Table, state: held_state.HeldState) -> list[str]:
    """Committed batches of the table not folded into `state` yet (their manifest keys)."""
    done = state.folded_keys()
    entries, _ = _entries(lake, spec, state.log_through or 0)
    return [str(e["manifest"]) for e in entries if e["manifest"] not in done]


def _as_manifest(lake: Lake, entry: dict[str, Any]) -> dict[str, Any]:
    """What folding needs of a logged batch: its manifest, or (lost, expired) the entry."""
    key = str(entry["manifest"])
    manifest = lake.read_json_or_none(key)
    if isinstance(manifest, dict):
        return manifest
    return {**entry, "window": {}}


def pending(
    lake: Lake, spec: Table, state: held_state.HeldState, *, check_all: bool = False
) -> tuple[list[Folded], list[Damage]]:
    """The batches to fold (read and checked) and the damaged ones to repair: new batches
    that are broken and, with `check_all`, folded batches whose files are broken now.

    New batches are the table's batch log entries after the state's position (the whole
    log for a new or rebuilt state); a state from before the log also lists the manifests
    once, for the batches committed before it. A batch taken back (`retract`) is skipped:
    its window was extracted again into another batch. Sets `state.log_through`.
    `check_all` needs the state opened with its archive (`HeldState.open(archive=True)`)."""
    if check_all and state.archive is None:
        raise ValueError("checking every batch needs the held state's archive read")
    done = state.folded_keys()
    entries, through = _entries(lake, spec, state.log_through or 0)
    candidates: list[tuple[str, dict[str, Any] | None]] = [
        (str(e["manifest"]), e) for e in entries if e["manifest"] not in done
    ]
    if state.log_through is None or check_all:
        logged = {key for key, _ in candidates}
        candidates += [
            (key, None)
            for key in _listed(lake, spec)
            if key not in logged and (check_all or key not in done)
        ]
    fresh: list[Folded] = []
    damaged: list[Damage] = []
    for key, entry in candidates:
        run_id = key.rsplit("/", 1)[1].removesuffix(".json")
        if lake.exists(layout.retraction(spec.name, run_id)):
            continue
        manifest: dict[str, Any] | None = None
        try:
            manifest = _as_manifest(lake, entry) if entry is not None else lake.read_json(key)
            if not isinstance(manifest, dict):
                raise CorruptBatchError("its manifest is not a JSON object")
            if entry is None and manifest.get("log_from") is not None and key not in done:
                continue  # committed with the log: found there (or folded already)
            keys = held_state.batch_keys(lake, spec, manifest)
        except (CorruptBatchError, KeyError, TypeError, ValueError) as exc:
            usable = manifest if isinstance(manifest, dict) and manifest.get("window") else None
            folded = [r for r in state.records() if r["key"] == key]
            window = _from_fold(folded) if folded else _window(usable or {}, None)
            damaged.append(Damage(key, run_id, _reason(exc), window, usable))
            continue
        if key not in done:
            fresh.append((key, manifest, keys))
    state.log_through = through
    return fresh, damaged


def _reason(exc: Exception) -> str:
    text = str(exc)
    return f"is broken ({text})" if text else f"is broken ({type(exc).__name__})"


def _from_fold(records: list[dict[str, Any]]) -> dict[str, Any]:
    if not records:
        return {}
    r = records[-1]
    return {k: r.get(k) for k in ("since", "until", "after_key", "min_key", "max_key", "mode")}


def retract(lake: Lake, damage: Damage) -> None:
    """Move the batch's manifest aside with the reason (idempotent); readers stop seeing it."""
    table = damage.key.split("/")[1]
    record = {
        "manifest_key": damage.key,
        "reason": damage.reason,
        "retracted_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "manifest": damage.manifest,
        "window": damage.window,
    }
    lake.create_json(layout.retraction(table, damage.run_id), record)
    lake.delete(damage.key)
    log.warning("ingestion batch taken back", extra={"table": table, "batch": damage.key})


def rows(
    source: SourceSnapshot, damage: Damage, added: tuple[SourceColumn, ...] = ()
) -> tuple[Iterator[pa.RecordBatch], list[tuple[int, int]] | None]:
    """The source rows that stand in for the damaged batch (see the module docstring)."""
    w = damage.window
    timed = w.get("mode") not in (layout.RECONCILE_MODE, layout.REPAIR_MODE) and w.get("until")
    if timed:
        ends = [datetime.fromisoformat(w[k]) for k in ("until", "bound") if w.get(k)]
        window = Window(
            since=datetime.fromisoformat(w["since"]) if w.get("since") else None,
            until=min(*ends, source.now),
            after_key=w.get("after_key"),
        )
        return source.batches(window, None, added), None
    if w.get("min_key") is None:  # nothing known about it: the comparison recovers its rows
        return iter(()), []
    ranges = [(int(w["min_key"]), int(w["max_key"]))]
    return source.rows_in(ranges, added), ranges
