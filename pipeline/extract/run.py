"""The extract step: one table's new or changed rows into the ingestion zone.

Layout and result: docs/CONTRACTS.md. One call = one snapshot of the source (see
`pipeline.extract.source`), streamed as typed Parquet parts, committed by a manifest, then
logged in the batch log (`pipeline.ingest_log`, where readers find it), then the watermark.
The order matters (R5): a crash before the manifest leaves only unlisted parts,
which readers ignore and a re-run with the same run id overwrites at the same keys; a crash
after it is repaired by the replay, which re-saves the watermark the manifest records.

Which rows (the window, `plan`):
- first run: everything (mode `full`);
- later runs: from `min(watermark, run_started) - lag`, up to the source clock at the
  snapshot (mode `incremental`). The overlap re-reads the last `lag` (default 15 min) on
  purpose: a totesys transaction stamps `last_updated` when it writes but becomes visible
  when it commits, so a row can appear later with a timestamp at or below a saved
  watermark (R2), and rows sharing the watermark's millisecond arrive in separate
  transactions (R1). Any version that becomes visible within `lag` of its timestamp is
  delivered; the duplicates this re-read produces are removed downstream on
  (id, last_updated). Only the source's own clock is used, so client clock skew is moot;
  if the source's TimeZone is not UTC, a DST change moves naive timestamps back by an
  hour: a warning says so (use a lag above one hour there).
- `since`/`until`: a backfill of that window (mode `backfill`), watermark untouched;
- `max_rows`: stop after that many rows at a (last_updated, key) boundary, `more: true`;
  the next call, with `next_run_id`, resumes exactly after that row (no overlap, so a
  huge backlog always progresses). `stop`, asked after each streamed batch, ends the call
  the same way when it says so (the Lambda handler: its remaining time runs low), so a
  slow source hands over to the next invocation instead of hitting the function timeout.
  A resume record keyed by `next_run_id` carries the window, so continuations need no
  arguments but the table and that run id. A capped call also ends with `more` at a cursor
  bound estimated from the source's statistics once it has at least half its cap
  (`pipeline.extract.slices`: each call then sorts about its own rows, not the whole rest
  of an unindexed table); `window.bound` records that bound.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from pipeline import housekeeping, ingest_log, layout
from pipeline.catalog import Table, get_table
from pipeline.credentials import SOURCE, resolve
from pipeline.errors import ConfigurationError
from pipeline.extract import watermark
from pipeline.extract.drift import DriftReport, batch_schema
from pipeline.extract.drift import check as check_drift
from pipeline.extract.parts import (
    RunDay,
    Written,
    iso_us,
    schema_fingerprint,
    schema_json,
    write_parts,
)
from pipeline.extract.reconcile import due, reconcile_in, reconcile_table
from pipeline.extract.slices import SlicedRead
from pipeline.extract.source import SourceSnapshot, Window
from pipeline.extract.watermark import Watermark, iso_ms
from pipeline.lake import Lake, empty_table
from pipeline.layout import BatchLogEntry, IngestionManifest
from pipeline.settings import Settings

__all__ = ["ExtractResult", "extract_table", "plan", "read_batch"]

log = logging.getLogger(__name__)


# -- result ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractResult:
    """What one call did; `to_dict()` is the small JSON the state machine passes on."""

    table: str
    run_id: str
    status: str  # "ok" | "replayed"
    mode: str  # "full" | "incremental" | "backfill"
    rows: int
    files: list[str]
    manifest: str
    cursor: dict[str, str | None]
    warnings: list[str] = field(default_factory=list)
    more: bool = False
    next_run_id: str | None = None
    reconcile: dict[str, Any] | None = None  # the reconciliation this call ran, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "run_id": self.run_id,
            "status": self.status,
            "mode": self.mode,
            "rows": self.rows,
            "files": list(self.files),
            "manifest": self.manifest,
            "cursor": {"from": self.cursor.get("from"), "to": self.cursor.get("to")},
            "warnings": list(self.warnings),
            "more": self.more,
            "next_run_id": self.next_run_id,
            "reconcile": self.reconcile,
        }

    @classmethod
    def from_manifest(cls, key: str, manifest: IngestionManifest, status: str) -> ExtractResult:
        return cls(
            table=manifest["table"],
            run_id=manifest["run_id"],
            status=status,
            mode=manifest["mode"],
            rows=manifest["rows"],
            files=manifest["files"],
            manifest=key,
            cursor=manifest["cursor"],
            warnings=manifest["warnings"],
            more=manifest["more"],
            next_run_id=manifest["next_run_id"],
        )


# -- the window ------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    mode: str
    window: Window
    run_started: datetime  # source clock when this run's first segment started
    root: str  # the run id of the first segment; continuations are `<root>.<n>`
    segment: int


def naive_utc(value: datetime | str | None, name: str) -> datetime | None:
    """Parse a window bound: ISO text or datetime; aware values are converted to UTC."""
    if value is None or isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigurationError(f"{name} must be an ISO timestamp, got {value!r}") from None
    if parsed is not None and parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def plan(
    run_id: str,
    now: datetime,
    *,
    state: Watermark | None,
    resume: dict[str, Any] | None,
    since: datetime | None,
    until: datetime | None,
    lag: timedelta,
) -> Plan:
    """Decide which rows this call reads (pure: all inputs are explicit)."""
    if resume is not None:  # a continuation: exactly after the previous segment's last row
        end = naive_utc(resume["until"], "until")
        return Plan(
            mode=resume["mode"],
            window=Window(
                since=datetime.fromisoformat(resume["since"]),
                after_key=int(resume["after_key"]),
                until=min(end, now) if end else now,
            ),
            run_started=datetime.fromisoformat(resume["run_started"]),
            root=resume["root"],
            segment=int(resume["segment"]),
        )
    if since is not None or until is not None:
        if since is not None and until is not None and since >= until:
            raise ConfigurationError(f"backfill window is empty: since {since} >= until {until}")
        window = Window(since=since, until=min(until, now) if until else now)
        return Plan("backfill", window, now, run_id, 1)
    if state is None:
        return Plan("full", Window(since=None, until=now), now, run_id, 1)
    if state.more:  # an earlier run stopped at max_rows and was not continued
        window = Window(since=state.last_updated, after_key=state.key, until=now)
        return Plan("incremental", window, state.run_started, run_id, 1)
    start = min(state.last_updated, state.run_started) - lag
    return Plan("incremental", Window(since=start, until=now), now, run_id, 1)


@dataclass
class _Cap:
    """Passes at most `limit` rows on and notes whether the source had more: the query
    reads one row past the limit (`SourceSnapshot.batches`), so no second scan is needed.
    The stream is read to its end (that one row) so the session stays reusable."""

    limit: int | None
    taken: int = 0
    more: bool = False

    def apply(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if self.limit is not None and self.taken + batch.num_rows > self.limit:
                self.more = True
                batch = batch.slice(0, self.limit - self.taken)
            self.taken += batch.num_rows
            if batch.num_rows:
                yield batch


def _check_arguments(run_id: str, max_rows: int | None) -> None:
    layout.check_run_id(run_id)
    if max_rows is not None and max_rows < 1:
        raise ConfigurationError(f"max_rows must be at least 1, got {max_rows}")


def _finish(lake: Lake, key: str, manifest: IngestionManifest, *, replayed: bool) -> None:
    """The follow-ups of a committed manifest, idempotent and in this order: the log entry
    (readers find the batch), the resume record, then the watermark (only once the batch is
    findable may the next run start after its rows), then the table's summary (status)."""
    entry = ingest_log.log_batch(lake, key, manifest, replayed=replayed)
    if manifest["more"] and manifest["next_run_id"]:
        lake.create_json(
            layout.resume_record(manifest["table"], manifest["next_run_id"]), manifest["resume"]
        )
    if manifest["watermark"] is not None:
        watermark.save(lake, Watermark.from_json(manifest["watermark"]))
    if not replayed:
        _update_summary(lake, key, manifest, entry)


def _update_summary(
    lake: Lake, key: str, manifest: IngestionManifest, entry: BatchLogEntry | None
) -> None:
    """What `status` shows for the table, kept by the batches themselves (one small object,
    so status never reads history). Two concurrent extractions of a table may lose one
    count: the figures are for display."""
    summary_key = layout.table_summary(manifest["table"])
    summary = lake.read_json_or_none(summary_key) or {"batches": 0}
    if summary.get("last_committed_at", "") > manifest["committed_at"]:
        summary["batches"] = int(summary.get("batches", 0)) + 1
    else:
        summary.update(
            table=manifest["table"],
            batches=int(summary.get("batches", 0)) + 1,
            last_run=manifest["run_id"],
            last_rows=manifest["rows"],
            last_committed_at=manifest["committed_at"],
            last_manifest=key,
        )
    if entry is not None:
        summary["last_seq"] = max(int(summary.get("last_seq", 0)), int(entry["seq"]))
    lake.write_json(summary_key, summary)


def _log(result: ExtractResult, started: float) -> None:
    for warning in result.warnings:
        log.warning(warning, extra={"table": result.table, "run_id": result.run_id})
    log.info(
        "extract done",
        extra={
            "table": result.table,
            "run_id": result.run_id,
            "rows": result.rows,
            "duration_s": round(time.perf_counter() - started, 3),
            "status": result.status,
            "mode": result.mode,
            "more": result.more,
        },
    )


# -- the step --------------------------------------------------------------------------
def extract_table(
    table: str,
    run_id: str,
    settings: Settings,
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    stop: Callable[[], bool] | None = None,
    reconcile: bool | None = None,
    allow_mass_delete: bool = False,
    repair: bool = False,
) -> ExtractResult:
    """Extract `table` for `run_id` into the ingestion zone (see module doc).

    Reads `settings.ingest_url`, the source credentials, `extract_lag`, `extract_part_rows`
    and `extract_max_rows`; `since`/`until` make it a backfill of that window.

    An incremental (or first) extraction that is complete (`more` false) then reconciles
    the table in the same snapshot (`pipeline.extract.reconcile`) when `reconcile` says so
    (None: when `settings.reconcile_every` says it is due); `allow_mass_delete` and
    `repair` are that pass's options.
    """
    started = time.perf_counter()
    spec = get_table(table)
    max_rows = settings.extract_max_rows
    _check_arguments(run_id, max_rows)
    lake = settings.ingest_lake()
    key = layout.ingestion_manifest(spec.name, run_id)
    options = {"allow_mass_delete": allow_mass_delete, "repair_all": repair}
    recorded = lake.read_json_or_none(key)
    if recorded is not None:  # R8: this (run, table) is committed already
        _finish(lake, key, recorded, replayed=True)
        result = ExtractResult.from_manifest(key, recorded, "replayed")
        record = layout.reconcile_record(spec.name, run_id)
        if lake.exists(record):  # the first attempt reconciled too: its recorded result
            result = replace(result, reconcile=lake.read_json(record))
        elif _reconciles(recorded, reconcile, settings, lake, spec):  # in a snapshot of its own
            result = replace(
                result, reconcile=reconcile_table(spec.name, run_id, settings, **options).to_dict()
            )
        _log(result, started)
        return result

    resume = lake.read_json_or_none(layout.resume_record(spec.name, run_id))
    lower, upper = naive_utc(since, "since"), naive_utc(until, "until")
    backfill = resume["mode"] == "backfill" if resume else (lower or upper) is not None
    expire_legacy = functools.partial(housekeeping.expire_legacy_records, lake, settings, spec.name)
    state = None if backfill else watermark.load(lake, spec.name, on_listing=expire_legacy)
    db = resolve(SOURCE, settings)

    with SourceSnapshot.open(db, spec) as source:
        drift = check_drift(spec, source.columns())
        warnings = list(drift.warnings)
        if source.timezone.upper() not in {"UTC", "ETC/UTC", "GMT", "Z"}:
            warnings.append(
                f"source TimeZone is {source.timezone!r}, not UTC: naive timestamps repeat an "
                "hour when DST ends; set EXTRACT_LAG_SECONDS above 3600"
            )
        schema = batch_schema(spec, drift)
        todo = plan(
            run_id,
            source.now,
            state=state,
            resume=resume,
            since=lower,
            until=upper,
            lag=settings.extract_lag,
        )
        cap = _Cap(max_rows)
        keys = RunDay(lake, spec.name, run_id).keys()  # (after the drift check, lazily)
        read = SlicedRead(source, todo.window, max_rows, drift.added)
        with contextlib.closing(read.batches()) as stream:
            rows = cap.apply(stream)
            written = write_parts(lake, keys, schema, spec, rows, settings.extract_part_rows, stop)
            # `stop` ended the stream early: the rest is `more` if the stream has another row
            stopped_early = written.stopped and next(rows, None) is not None
        more = cap.more or read.bound is not None or stopped_early
        snapshot = {"from": iso_us(source.now), "to": iso_us(source.snapshot_to)}
        manifest = _manifest(
            spec, run_id, todo, written, schema, drift, warnings, more, state, snapshot, read.bound
        )
        manifest["log_from"] = ingest_log.head(lake)
        if not lake.create_json(key, manifest):  # a concurrent attempt committed first
            manifest = lake.read_json(key)
            status = "replayed"
        else:
            status = "ok"
        _finish(lake, key, manifest, replayed=status == "replayed")
        result = ExtractResult.from_manifest(key, manifest, status)
        if _reconciles(manifest, reconcile, settings, lake, spec, source.now):
            passed = reconcile_in(
                source, lake, spec, run_id, settings, drift=drift, own=key, **options
            )
            result = replace(result, reconcile=passed.to_dict())
    _log(result, started)
    return result


def _reconciles(
    manifest: IngestionManifest,
    asked: bool | None,
    settings: Settings,
    lake: Lake,
    spec: Table,
    now: datetime | None = None,
) -> bool:
    """Reconcile after this batch? Only after a complete incremental (or first) extraction,
    then when asked to, or when due by the settings."""
    if manifest["mode"] not in (layout.FULL_MODE, layout.INCREMENTAL_MODE) or manifest["more"]:
        return False
    if asked is not None:
        return asked
    return due(settings, lake, spec, now or datetime.fromisoformat(manifest["window"]["until"]))


def _manifest(
    spec: Table,
    run_id: str,
    todo: Plan,
    written: Written,
    schema: pa.Schema,
    drift: DriftReport,
    warnings: list[str],
    more: bool,
    state: Watermark | None,
    snapshot: dict[str, str],
    bound: datetime | None = None,
) -> IngestionManifest:
    """The commit record of this batch (docs/CONTRACTS.md), with what its follow-ups need."""
    next_run_id = f"{todo.root}.{todo.segment + 1}" if more else None
    mark = None
    if todo.mode != "backfill":
        if written.last is not None:
            mark = Watermark(
                spec.name, written.last, written.last_key or 0, todo.run_started, more, run_id
            )
        elif state is not None and state.more:  # the rest of a cut-off run had vanished
            mark = Watermark(
                spec.name, state.last_updated, state.key, state.run_started, False, run_id
            )
    window = todo.window
    resume = None
    if more:
        resume = {
            "table": spec.name,
            "run_id": next_run_id,
            "root": todo.root,
            "segment": todo.segment + 1,
            "mode": todo.mode,
            "since": written.last.isoformat(timespec="microseconds"),  # type: ignore[union-attr]
            "after_key": written.last_key,
            "until": iso_us(window.until) if todo.mode == "backfill" else None,
            "run_started": iso_us(todo.run_started),
        }
    return {
        "table": spec.name,
        "run_id": run_id,
        "files": written.files,
        "rows": written.rows,
        "cursor": {
            "from": iso_ms(written.first) if written.first else None,
            "to": iso_ms(written.last) if written.last else None,
            "to_key": written.last_key,
        },
        "window": {
            "since": iso_us(window.since) if window.since else None,
            "until": iso_us(window.until),
            "after_key": window.after_key,
            "bound": iso_us(bound) if bound else None,
        },
        "mode": todo.mode,
        "segment": todo.segment,
        "schema_fingerprint": schema_fingerprint(schema),
        "schema": schema_json(spec, schema, drift),
        "added_columns": [c.name for c in drift.added],
        "warnings": warnings,
        "more": more,
        "next_run_id": next_run_id,
        "resume": resume,
        "watermark": mark.to_json() if mark else None,
        "snapshot": snapshot,
        "committed_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "log_from": 0,  # set just before the commit
    }


def read_batch(lake: Lake, manifest: IngestionManifest) -> pa.Table:
    """All catalog columns of one committed batch, read from its manifest-listed files only
    (columns the source added are in the files too; `Lake.read_parquet` without a schema
    returns them)."""
    spec = get_table(manifest["table"])
    data = lake.read_parquet(manifest["files"]) if manifest["files"] else None
    if data is None:
        return empty_table(spec.arrow_schema)
    return data.select(list(spec.column_names)).cast(spec.arrow_schema)
