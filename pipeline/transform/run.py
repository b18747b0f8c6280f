"""`transform(run_id, ...)`: new ingestion batches -> star-schema Parquet + run manifest.

Commit protocol (docs/CONTRACTS.md, processed zone): outputs, quarantine files and state
snapshots are written under run-specific keys, then `_state/head.json`, then the run
manifest with `create_json` (the commit record), then the batch's entry in the processed
batch log (`pipeline.processed_log`). A crash anywhere before the manifest leaves the
previous committed state in force, and a re-run rewrites the same keys; a crash after it
leaves the entry to the next transform, which re-creates it first.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline import housekeeping, layout, processed_log
from pipeline.catalog import TABLES
from pipeline.lake import Lake, lake_error
from pipeline.layout import ProcessedManifest
from pipeline.settings import Settings
from pipeline.transform import content, deletes
from pipeline.transform import state as st
from pipeline.transform.current import LOOKUP_TABLES, empty_state, merge
from pipeline.transform.dim_date import build_dim_date, referenced_dates
from pipeline.transform.dimensions import ROW_LOCAL_TABLES, build_dimensions
from pipeline.transform.facts import (
    FACT_SPECS,
    FactSpec,
    empty_pending,
    empty_seen,
    grow_seen,
    transform_fact,
)
from pipeline.transform.history import History
from pipeline.transform.inputs import (
    Batch,
    IngestCursor,
    check_row_count,
    legacy_cursor,
    pending_batches,
    scan_batches,
)
from pipeline.transform.lease import Lease, leased
from pipeline.transform.output import (
    write_deletion_marks,
    write_quarantine,
    write_warehouse_table,
)
from pipeline.transform.quality import RULE, annotate, key_rules, quarantine_frame, row_rules
from pipeline.transform.result import TransformResult
from pipeline.warehouse_schema import PROCESSED_TABLES

log = logging.getLogger(__name__)

CONSUMED = "consumed"  # the state kind that listed consumed manifests before the cursor
# Time budget of one call when the caller says how long it has left (`time_left`, the
# Lambda's remaining time): a call is sized to finish with RESERVE_S to spare at an assumed
# floor throughput far below the measured one (README: 8.6M rows in 5 s on 2 cores), so
# time is what limits a call only when little is left (e.g. after reading a huge backlog's
# manifests), and then the rest continues in the next call like a transform_max_rows cut.
RESERVE_S = 120.0
FLOOR_ROWS_PER_S = 20_000
_EMPTY_CONSUMED = pl.DataFrame(schema={"key": pl.String, "run_id": pl.String})


def transform(
    run_id: str, settings: Settings, *, time_left: Callable[[], float] | None = None
) -> TransformResult:
    """Consume the committed, not yet consumed ingestion batches, in commit order, up to
    `settings.transform_max_rows` rows (`more` says whether some were left).

    `time_left` (seconds) lowers that bound to what fits in the time left (see RESERVE_S)."""
    started = time.monotonic()
    layout.check_run_id(run_id)  # a key part: checked before any lake is opened
    ingest, processed = settings.ingest_lake(), settings.processed_lake()
    result = _replay(processed, run_id) or _nothing_to_do(ingest, processed, run_id)
    if result is None:
        with leased(processed, run_id, settings.transform_lease_seconds) as lease:
            result = _replay(processed, run_id)
            if result is None:
                head = st.read_head(processed)
                cursor, migrated = ingest_cursor(ingest, processed, head.committed)
                pending, truncated = pending_batches(ingest, cursor)
                batches, more = take_batches(pending, _row_limit(settings, time_left))
                work = Round(run_id, head, cursor, batches, more or truncated, migrated)
                try:
                    result = (
                        execute_round(ingest, processed, work, lease, settings)
                        if batches or migrated
                        else TransformResult(run_id, "nothing_to_do", more=work.more)
                    )
                except (OSError, pa.ArrowException) as exc:
                    # A lake fault in the middle of a Polars scan (Polars passes pyarrow's
                    # OSError on): typed like any lake error, so S3 throttling is retried.
                    raise lake_error(exc, ingest.uri(""), "reading") from exc
    log.info(
        "transform %s",
        result.status,
        extra={
            "step": "transform",
            "run_id": run_id,
            "status": result.status,
            "inputs": len(result.inputs),
            "rows_in": sum(result.rows_in.values()),
            "rows_out": sum(result.rows_out.values()),
            "quarantined": sum(result.quarantined.values()),
            "duplicates": sum(result.duplicates.values()),
            "duration_s": round(time.monotonic() - started, 3),
        },
    )
    return result


def _replay(processed: Lake, run_id: str) -> TransformResult | None:
    key = layout.processed_manifest(run_id)
    manifest = processed.read_json_or_none(key)
    return None if manifest is None else TransformResult.from_manifest(manifest, key)


def _nothing_to_do(ingest: Lake, processed: Lake, run_id: str) -> TransformResult | None:
    """Answer an idle run without taking the lease (nothing is written)."""
    cursor, migrated = ingest_cursor(ingest, processed, st.committed_state(processed))
    if migrated or pending_batches(ingest, cursor)[0]:
        return None
    return TransformResult(run_id, "nothing_to_do")


def ingest_cursor(
    ingest: Lake, processed: Lake, base: st.StatePointers
) -> tuple[IngestCursor, bool]:
    """How far the committed state has consumed the ingestion zone. Derived by one listing
    for a new processed zone, and for state from before the cursor: True then, and the run
    commits the cursor even if it has nothing else to do, so the listing happens once."""
    if base.ingest is not None:
        return base.ingest, False
    consumed = st.read_state(processed, base, CONSUMED, _EMPTY_CONSUMED)
    return legacy_cursor(ingest, set(consumed["key"].to_list())), base.run_id is not None


def _row_limit(settings: Settings, time_left: Callable[[], float] | None) -> int:
    """Rows this call may take: `transform_max_rows`, or less if the time left says so
    (0: none at all)."""
    if time_left is None:
        return settings.transform_max_rows
    by_time = max(0, int((time_left() - RESERVE_S) * FLOOR_ROWS_PER_S))
    return min(settings.transform_max_rows, by_time)


def take_order(batches: list[Batch]) -> list[Batch]:
    """The order a run takes batches in: the lookup tables' first, each in commit order."""
    return sorted(batches, key=lambda b: b.table not in LOOKUP_TABLES)  # stable


def take_batches(batches: list[Batch], limit: int) -> tuple[list[Batch], bool]:
    """The oldest batches up to `limit` rows, so a long backlog is worked off over several
    runs in bounded memory; True if some were left for later. A batch bigger than the
    limit is taken in slices of `limit` rows, one slice per run.

    A `limit` of 0 (no time left, see `_row_limit`) takes nothing and says `more`, so the
    next call (a fresh invocation) starts the work.

    Lookup-table batches go first (each table keeps its commit order): when the cap splits
    a backlog, the dimensions a deferred fact batch needs are in place before it, instead of
    facts being quarantined and held pending for dimension rows deferred to the next run.
    """
    if limit == 0:
        return [], bool(batches)
    taken: list[Batch] = []
    rows = 0
    for batch in take_order(batches):
        if rows + batch.remaining > limit:
            if not taken:  # (deleted keys are read whole: a tombstone batch is never cut)
                taken.append(batch if batch.is_tombstones else batch.slice(limit))
            return taken, True
        taken.append(batch)
        rows += batch.remaining
    return taken, False


@dataclass(frozen=True)
class Rederiving:
    """A run that writes an earlier processed batch again (`pipeline.transform.rederive`):
    at the moment it ran, with the manifest it recorded; the head, the log and
    housekeeping left alone."""

    now: dt.datetime
    manifest: dict[str, Any]  # the recorded manifest


@dataclass
class Round:
    """What one transform call works on: its batches and the state it builds on."""

    run_id: str
    head: st.Head
    cursor: IngestCursor
    batches: list[Batch]
    more: bool
    migrated: bool  # the cursor was derived: the legacy `consumed` snapshot is dropped
    rederiving: Rederiving | None = None

    @property
    def base(self) -> st.StatePointers:
        return self.head.committed


def execute_round(
    ingest: Lake, processed: Lake, round_: Round, lease: Lease, settings: Settings
) -> TransformResult:
    """Transform the round's batches on its base state and commit them as processed batch
    `round_.run_id`."""
    run_id, batches = round_.run_id, round_.batches
    by_table: dict[str, list[tuple[int, Batch]]] = defaultdict(list)
    tombstones: dict[str, list[Batch]] = defaultdict(list)  # deleted keys, not rows
    for ordinal, batch in enumerate(batches):
        if batch.is_tombstones:
            tombstones[batch.table].append(batch)
        else:
            by_table[batch.table].append((ordinal, batch))
    store = st.StateStore(processed, round_.base, run_id)
    work = _Work(ingest, store, by_table, TransformResult(run_id, "ok"))
    if round_.rederiving is not None:
        work.now = round_.rederiving.now
    work.result.inputs = [b.key for b in batches]
    work.result.more = round_.more
    states, changed = work.lookups()
    dims = build_dimensions(states, changed)
    # Release the lookup states (a big batch reads all 2.8M transaction rows) before the
    # facts and the writes; the store keeps the ones it must flush.
    del states, changed
    for table, bad in dims.quarantine.items():
        work.quarantine[table].append(bad)
    outputs: dict[str, pl.DataFrame] = {**dims.rows, **work.facts(dims.valid_keys)}
    outputs["dim_date"] = build_dim_date(
        referenced_dates({f.name: outputs[f.name] for f in FACT_SPECS if outputs[f.name].height})
    )
    if round_.migrated:
        store.replace(CONSUMED, pl.DataFrame())  # (an empty frame drops the kind)

    # A table's rows of this round are read again only where a delete may be undone (a
    # table with deleted keys), not a second copy of every batch next to the outputs.
    def rows(table: str) -> pl.LazyFrame | None:
        return scan_batches(ingest, table, by_table[table]) if table in by_table else None

    ordinals = {o: b.observed[0] for pairs in by_table.values() for o, b in pairs}
    deletions = deletes.resolve(
        ingest, store, tombstones, rows, ordinals, deletes.emitted_keys(outputs)
    )
    work.result.deleted = deletions.counts
    outputs.update(work.history.build(*work.history.deletions(deletions.marks, rows, ordinals)))
    commit = _Commit(processed, round_, store, lease, settings, work.now)
    return commit.write(work.result, outputs, work.quarantine, deletions)


@dataclass
class _Work:
    """One run's inputs and what it has produced so far (counts, quarantine, state updates).

    State is read by id bucket (state.py): the `seen` buckets of the fact ids received, the
    `current` buckets of the row-local lookup tables for the ids received or referenced by
    this run's fact rows (new and pending), and the small joined lookup tables whole.
    """

    ingest: Lake
    store: st.StateStore
    by_table: dict[str, list[tuple[int, Batch]]]
    result: TransformResult
    quarantine: dict[str, list[pl.DataFrame]] = field(default_factory=lambda: defaultdict(list))
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    raw: dict[str, pl.LazyFrame] = field(default_factory=dict)  # fact source -> new rows
    pending: dict[str, pl.DataFrame] = field(default_factory=dict)  # fact source -> pending
    # buckets to read (None: all): of `seen` per fact source, of `current` per lookup table
    seen_buckets: dict[str, set[int] | None] = field(default_factory=dict)
    lookup_buckets: dict[str, set[int] | None] = field(default_factory=lambda: defaultdict(set))
    history: History = field(init=False)

    def __post_init__(self) -> None:
        self.history = History(self.store)
        for spec in FACT_SPECS:
            source = spec.source
            self.pending[source] = self.store.read_whole(f"pending/{source}", empty_pending(source))
            self.raw[source] = scan_batches(self.ingest, source, self.by_table.get(source, []))
            self._touch(spec)

    def _touch(self, spec: FactSpec) -> None:
        """Buckets of the fact's new ids and of the row-local lookup ids its rows reference.

        Always by the ids: a big batch is read in slices, and each slice's ids (serial, and
        read in `last_updated` order) cover a slice of the buckets, so the state a run
        reads grows with the run, not with the table.
        """
        source, pk = spec.source, TABLES[spec.source].primary_key
        batches = self.by_table.get(source, [])
        refs = {c: t for c, t in spec.references.items() if t in ROW_LOCAL_TABLES}
        rows = self.pending[source].lazy().select(list(refs))
        if batches:
            rows = pl.concat([rows, self.raw[source].select(list(refs))])
        if refs:
            found = rows.select(
                self.store.bucket_of(c).unique().implode().alias(c) for c in refs
            ).collect()
            for column, target in refs.items():
                wanted = self.lookup_buckets[target]
                if wanted is not None:
                    wanted |= set(found[column][0].drop_nulls().to_list())
        ids = self.raw[source].select(self.store.bucket_of(pk).unique()).collect()
        self.seen_buckets[source] = set(ids[st.BUCKET].drop_nulls().to_list())

    def lookups(self) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
        """Check new lookup rows and fold them into the current state: (states, changed)."""
        states, changed = {}, {}
        for table in LOOKUP_TABLES:
            kind, pk = f"current/{table}", TABLES[table].primary_key
            checked = None
            if table in self.by_table:
                rules = key_rules(table) + row_rules(table)
                raw = scan_batches(self.ingest, table, self.by_table[table])
                checked = annotate(raw, rules).collect()
                check_row_count(table, self.by_table[table], checked.height)
                bad = checked.filter(pl.col(RULE).is_not_null())
                self.quarantine[table].append(quarantine_frame(table, bad, rules))
                if bad.height:  # (filtering copies every row: skipped when all are good)
                    checked = checked.filter(pl.col(RULE).is_null())
                self.result.rows_in[table] = checked.height + bad.height
            buckets = None  # all
            if table in ROW_LOCAL_TABLES and self.lookup_buckets[table] is not None:
                buckets = set(self.lookup_buckets[table] or ())
                if checked is not None:
                    buckets |= self.store.buckets_in(checked[pk])
            current = self.store.read(kind, empty_state(table), pk, buckets)
            states[table], changed[table] = current, current.clear()
            if checked is None:
                continue
            merged = merge(table, current, checked)
            self.history.add(table, checked)
            del checked
            states[table], changed[table] = merged.state, merged.changed
            self.store.update(kind, merged.state, pk, self.store.buckets_in(merged.changed[pk]))
            self.result.duplicates[table] = merged.duplicates
            self.result.corrected[table] = merged.corrected
        return states, changed

    def facts(self, valid_keys: dict[str, pl.Series]) -> dict[str, pl.DataFrame]:
        """Fact rows of new batches and of pending rows whose dimensions may have arrived."""
        out = {}
        for spec in FACT_SPECS:
            source = spec.source
            t = TABLES[source]
            pending = self.pending[source]
            if source not in self.by_table and pending.height == 0:
                out[spec.name] = pl.DataFrame()
                continue
            kind = f"seen/{source}"
            # Fingerprints from another hash function (content.py) are forgotten once:
            # every bucket is read and rewritten with unknown fingerprints.
            fresh = self.store.content.get(kind) == content.algorithm()
            buckets = self.seen_buckets[source] if fresh else None
            seen = self.store.read(kind, empty_seen(source), t.primary_key, buckets)
            if not fresh:
                seen = content.forget(seen)
            fact = transform_fact(
                spec,
                self.raw.pop(source),  # (released once built: the next fact's rows need room)
                seen=seen,
                pending=pending,
                valid_keys=valid_keys,
                now=self.now,
            )
            out[spec.name] = fact.rows
            self.quarantine[source].append(fact.quarantine)
            if fact.new_seen.height or not fresh:  # rewrite the buckets that changed
                bucket = self.store.bucket_of(t.primary_key)
                grown = grow_seen(seen, fact.new_seen, bucket, t.cursor, replace=fact.corrected > 0)
                dirty = (
                    self.store.buckets_in(fact.new_seen[t.primary_key])
                    if seen.height and fresh
                    else None
                )
                self.store.update(kind, grown, t.primary_key, dirty)
                self.store.content[kind] = content.algorithm()
            counts = fact.pending_counts
            if counts["new"] or counts["resolved"] or counts["expired"]:
                self.store.replace(f"pending/{source}", fact.pending)
            if source in self.by_table:
                check_row_count(source, self.by_table[source], fact.rows_in)
                self.result.rows_in[source] = fact.rows_in
                self.result.duplicates[source] = fact.duplicates
                self.result.corrected[source] = fact.corrected
            self.result.pending[source] = fact.pending_counts
        return out


def _committed_at(processed: Lake, base: st.StatePointers) -> str:
    """Now, but never before the previous run's `committed_at`: the load applies batches in
    that order, and a host whose clock lags must not reorder SCD1 dimension updates."""
    now = dt.datetime.now(dt.UTC)
    previous = base.committed_at
    if previous is None and base.run_id:  # (committed before the pointers recorded it)
        previous = processed.read_json(layout.processed_manifest(base.run_id))["committed_at"]
    if previous is not None:
        now = max(now, dt.datetime.fromisoformat(previous) + dt.timedelta(microseconds=1))
    return now.isoformat(timespec="microseconds")


def _released(head: st.Head, new: st.StatePointers) -> list[str]:
    """Snapshots no state from this run on refers to: the base's that this run replaced,
    and those a crashed run wrote and never committed. Deleted after the retention period."""
    keep = set(new.files.values())
    old = list(head.committed.files.values())
    if head.abandoned is not None:
        old += head.abandoned.files.values()
    return sorted(set(old) - keep)


@dataclass
class _Commit:
    """Writes one run's outputs and commits them (docs/CONTRACTS.md, processed zone)."""

    processed: Lake
    round_: Round
    store: st.StateStore
    lease: Lease
    settings: Settings
    now: dt.datetime

    def write(
        self,
        result: TransformResult,
        outputs: dict[str, pl.DataFrame],
        quarantine: dict[str, list[pl.DataFrame]],
        deletions: deletes.Deletions,
    ) -> TransformResult:
        """Write data, quarantine and state; then the head; then the manifest (commit
        point); then the batch's log entry.

        Re-deriving an earlier batch writes the same keys with its recorded bookkeeping
        (cursor, log number, commit time) but leaves the head, the log and housekeeping
        alone; it replaces the manifest only if what was written now differs from what it
        lists (the batch was not loaded in that form anyway: the load refuses files that
        disagree with their manifest)."""
        processed, round_, store = self.processed, self.round_, self.store
        run_id, base, again = round_.run_id, round_.base, round_.rederiving
        written = {
            name: write_warehouse_table(processed, name, run_id, outputs.get(name, pl.DataFrame()))
            for name in PROCESSED_TABLES
        }
        marks = {
            name: write_deletion_marks(processed, name, run_id, df)
            for name, df in sorted(deletions.marks.items())
        }
        quarantine_files = {}
        for table, frames in sorted(quarantine.items()):
            rejected = [f for f in frames if f.height]
            result.quarantined[table] = sum(f.height for f in rejected)
            if rejected:
                bad = pl.concat(rejected, how="vertical_relaxed")
                quarantine_files[table] = write_quarantine(processed, table, run_id, bad)
        pointers = store.flush()  # only the snapshots that changed; the others carry forward
        if again is not None:
            recorded = st.StatePointers.from_json(again.manifest["state"])
            pointers.ingest, pointers.log_seq = recorded.ingest, recorded.log_seq
            pointers.committed_at, pointers.housekept = recorded.committed_at, recorded.housekept
        else:
            processed_log.repair(processed, base.run_id, base.log_seq)
            pointers.ingest = round_.cursor.advanced(round_.batches)
            pointers.log_seq = (base.log_seq or 0) + 1
            pointers.committed_at = _committed_at(processed, base)
            if round_.migrated and base.run_id:
                keep = {*pointers.files.values(), *base.files.values()}  # (base: if we crash)
                housekeeping.expire_legacy_state(processed, self.settings, keep=keep)
            pointers.housekept = housekeeping.expire_processed(processed, base, self.settings)
        result.rows_out = {name: w["rows"] for name, w in written.items()}
        manifest: ProcessedManifest = {
            "run_id": run_id,
            "inputs": result.inputs,
            "slices": [[b.key, b.seq, b.offset, b.taken] for b in round_.batches],
            "outputs": written,
            "rows_in": result.rows_in,
            "quarantined": result.quarantined,
            "quarantine_files": quarantine_files,
            "duplicates": result.duplicates,
            "corrected": result.corrected,
            "deletes": marks,
            "deleted": result.deleted,
            "pending": result.pending,
            "more": result.more,
            "state": pointers.to_json(),
            "base_run_id": base.run_id,
            "transform_at": self.now.isoformat(timespec="microseconds"),
            "committed_at": str(pointers.committed_at),
            "seq": int(pointers.log_seq or 0),
            "previous": base.run_id,
            "released": (
                list(again.manifest.get("released", []))
                if again
                else _released(round_.head, pointers)
            ),
        }
        self.lease.assert_held()
        key = layout.processed_manifest(run_id)
        if again is not None:
            if _outputs_of(again.manifest) != _outputs_of(manifest):
                processed.write_json(key, manifest)
            result.manifest = key
            return result
        st.write_head(processed, pointers, base)
        if not processed.create_json(key, manifest):  # the same run id committed meanwhile
            return TransformResult.from_manifest(processed.read_json(key), key)
        processed_log.log_commit(processed, key, manifest)
        result.manifest = key
        return result


def _outputs_of(manifest: Any) -> Any:
    return {k: manifest.get(k) for k in ("outputs", "deletes", "quarantine_files", "state")}
