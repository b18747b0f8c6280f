"""Reconciliation: prove, per bucket of primary keys, that the lake holds what the source has.

The overlap window of the incremental extract (`pipeline.extract.run`) catches the usual
late commits; this step checks the result instead of trusting it. For one table, inside
one source snapshot:

1. The source side: one scan of the key and cursor columns gives, per bucket of
   `held.COMPARE_BUCKET_IDS` consecutive keys, the row count and the XOR of a hash of every
   `(key, last_updated)` (`pipeline.extract.keyhash`), and the count of rows stamped more
   than the overlap window ahead of the source's clock.
2. The lake side: the held state (`pipeline.extract.held`): the committed batches not folded
   in yet are folded (their key and cursor columns only), and its stored per-bucket counts
   and XORs are compared with the source's.
3. Only buckets that differ are read further (keys and cursors from both sides):
   - a row the lake never saw, or a newer version of it, is *recovered*: re-extracted into
     an ordinary batch of mode `reconcile` (`<run_id>.reconcile`), whatever its
     `last_updated` (a commit later than any window, a lost batch, a row restored after a
     delete, a row stamped in the future). Rows after the table's watermark (and not in the
     future) are the next extraction's and left to it;
   - a key the lake holds and the source no longer has is *deleted*: one tombstone batch
     (`<run_id>.tombstones`, `layout.tombstone_schema`) records the keys and when the
     deletion was detected. A key that only a batch from a later snapshot delivered (a
     concurrent extraction) is not a deletion and is left to the next pass;
   - the mass-delete guard: more than `reconcile_max_delete_share` of the keys held
     tombstoned in one pass records nothing for the table and raises `MassDeleteError`,
     unless the pass is run with `allow_mass_delete`.
4. The new batches are folded in and the held state saved; the result is recorded under the
   run id, so a repeated call replays it (idempotent per run and table).

Run alone by `reconcile_table` (`totesys-etl reconcile`), or by `extract_table` right after
an incremental extraction, in the same snapshot (`reconcile_in`): then the comparison is
exact, every difference a real loss or delete. Batches the fold finds broken are taken
back and re-extracted by `pipeline.extract.repair`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import arrays, ingest_log, layout
from pipeline.catalog import Table, get_table
from pipeline.credentials import SOURCE, resolve
from pipeline.errors import MassDeleteError
from pipeline.extract import held as held_state
from pipeline.extract import keyhash, repair, watermark
from pipeline.extract.drift import DriftReport, batch_schema
from pipeline.extract.drift import check as check_drift
from pipeline.extract.parts import (
    RunDay,
    iso_us,
    schema_fingerprint,
    schema_json,
    write_parts,
)
from pipeline.extract.source import SourceSnapshot
from pipeline.extract.watermark import Watermark, iso_ms
from pipeline.lake import Lake
from pipeline.layout import IngestionManifest, SchemaColumn
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SHIFT = int(np.log2(held_state.COMPARE_BUCKET_IDS))  # bucket = key >> SHIFT
assert 1 << SHIFT == held_state.COMPARE_BUCKET_IDS


@dataclass
class ReconcileResult:
    """What one pass found and did (`to_dict()` is small: counts and manifest keys)."""

    table: str
    run_id: str
    status: str  # "ok" | "replayed" | "skipped"
    buckets_compared: int = 0
    buckets_differed: int = 0
    rows_recovered: int = 0
    keys_deleted: int = 0
    keys_ahead: int = 0  # the lake holds a newer version than the source (see the docs)
    future_rows: int = 0  # source rows stamped more than the overlap window ahead of its clock
    reconciled_at: str | None = None  # the source's clock at the compared snapshot
    manifests: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # broken batches re-extracted
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], status: str) -> ReconcileResult:
        return cls(**{**data, "status": status})


def due(settings: Settings, lake: Lake, spec: Table, now: datetime) -> bool:
    """Whether a pass is due by `settings.reconcile_every`: every run, every N runs (N
    batches committed since the last pass), every N hours (of the source's clock), never."""
    every = settings.reconcile_every
    if every.kind == "off":
        return False
    if every.kind == "runs" and every.count <= 1:
        return True
    state = held_state.HeldState.open(lake, spec)
    last = state.head.last_pass
    if not last or not last.get("reconciled_at"):
        return True
    if every.kind == "hours":
        at = datetime.fromisoformat(str(last["reconciled_at"]))
        return now - at >= timedelta(hours=every.count)
    return len(repair.unfolded(lake, spec, state)) >= every.count


# -- the step ------------------------------------------------------------------------------
def reconcile_table(
    table: str,
    run_id: str,
    settings: Settings,
    *,
    allow_mass_delete: bool = False,
    repair_all: bool = False,
) -> ReconcileResult:
    """Reconcile `table` in a snapshot of its own (see the module docstring).

    `repair_all` also checks every committed batch's files (not only the new ones) and
    re-extracts the windows of broken ones: the recovery a `CorruptBatchError` of the
    transform names.
    """
    spec = get_table(table)
    layout.check_run_id(run_id)
    lake = settings.ingest_lake()
    recorded = _recorded(lake, spec, run_id)
    if recorded is not None:
        return recorded
    with SourceSnapshot.open(resolve(SOURCE, settings), spec) as source:
        return reconcile_in(
            source,
            lake,
            spec,
            run_id,
            settings,
            drift=check_drift(spec, source.columns()),
            allow_mass_delete=allow_mass_delete,
            repair_all=repair_all,
        )


def _recorded(lake: Lake, spec: Table, run_id: str) -> ReconcileResult | None:
    key = layout.reconcile_record(spec.name, run_id)
    if not lake.exists(key):
        return None
    return ReconcileResult.from_dict(lake.read_json(key), "replayed")


def reconcile_in(
    source: SourceSnapshot,
    lake: Lake,
    spec: Table,
    run_id: str,
    settings: Settings,
    *,
    drift: DriftReport,
    allow_mass_delete: bool = False,
    repair_all: bool = False,
    own: str | None = None,
) -> ReconcileResult:
    """One pass inside the open snapshot `source` (`drift`: its table's drift check; `own`:
    the manifest key of the batch the caller extracted in this same snapshot, committed
    already)."""
    started = time.perf_counter()
    recorded = _recorded(lake, spec, run_id)
    if recorded is not None:
        return recorded
    keyhash.check_source_hash(int(source.scalar(keyhash.probe_sql())))
    snapshot = {"from": iso_us(source.now), "to": iso_us(source.snapshot_to)}
    result = ReconcileResult(spec.name, run_id, "ok", reconciled_at=snapshot["from"])
    state = held_state.HeldState.open(lake, spec, archive=repair_all)
    writer = _Writer(source, lake, spec, run_id, drift, snapshot, settings)

    # 1. Fold what was committed since the last pass; re-extract what is broken.
    fresh, broken = repair.pending(lake, spec, state, check_all=repair_all)
    state.fold(fresh)
    for damage in broken:
        result.repaired.append(damage.key)
        result.warnings.append(damage.describe())
        state.fold(writer.repair(damage))

    # 2. Compare, bucket by bucket.
    mark = watermark.load(lake, spec.name)
    if mark is None:  # nothing extracted yet: there is nothing to compare with
        result.status = "skipped"
        result.warnings.append(f"table {spec.name!r} has not been extracted yet")
        return _finish(lake, state, result, started)
    future_after = source.now + settings.extract_lag
    theirs = source.key_fingerprints(SHIFT, keyhash.row_hash_sql(spec), future_after)
    differ = _differing(theirs, state.summary)
    result.future_rows = int(arrays.column(theirs, "future").sum())
    result.buckets_compared = len(np.union1d(arrays.column(theirs, "bucket"), state.summary.bucket))
    result.buckets_differed = len(differ)
    if result.future_rows:
        result.warnings.append(
            f"table {spec.name!r}: {result.future_rows} rows have a last_updated more than "
            f"{settings.extract_lag} ahead of the source's clock ({iso_ms(_ms(future_after))}); "
            "incremental extraction reaches them only when the clock does (reconciliation "
            "delivers them now)"
        )

    # 3. Diff the keys of the buckets that differ.
    if len(differ):
        diff = _diff(source, state, spec, differ.tolist(), mark, source.now)
        result.keys_ahead = diff.ahead
        deleted = _not_deleted_elsewhere(lake, spec, state, diff.deleted, snapshot, own)
        _guard(spec, len(deleted), state.held_count, settings, allow_mass_delete)
        new = []
        if diff.missing:
            new.append(writer.recovered(diff.missing))
            result.rows_recovered = len(new[-1][2])
        if len(deleted):
            new.append(writer.tombstones(deleted))
            result.keys_deleted = len(deleted)
        state.fold(new)
        result.manifests = [key for key, _, _ in new]
    return _finish(lake, state, result, started)


def _finish(
    lake: Lake,
    state: held_state.HeldState,
    result: ReconcileResult,
    started: float,
) -> ReconcileResult:
    result.duration_s = round(time.perf_counter() - started, 3)
    last_pass = {
        "run_id": result.run_id,
        "reconciled_at": result.reconciled_at if result.status == "ok" else None,
        **{
            k: getattr(result, k)
            for k in ("buckets_compared", "buckets_differed", "rows_recovered", "keys_deleted")
        },
    }
    if not state.save(last_pass):
        result.warnings.append(
            "another reconciliation of this table saved its state first; the next pass "
            "folds this one's batches"
        )
    lake.create_json(layout.reconcile_record(result.table, result.run_id), result.to_dict())
    for warning in result.warnings:
        log.warning(warning, extra={"table": result.table, "run_id": result.run_id})
    log.info(
        "reconcile done",
        extra={
            "table": result.table,
            "run_id": result.run_id,
            **last_pass,
            "status": result.status,
        },
    )
    return result


# -- comparing keys --------------------------------------------------------------------------
def _differing(theirs: pa.Table, ours: held_state.Summary) -> np.ndarray:
    """The compared buckets whose row count or XOR differs (or that one side lacks)."""
    bucket = arrays.column(theirs, "bucket")
    rows = arrays.column(theirs, "rows")
    xor = arrays.column(theirs, "xor").view(np.uint64)  # bit_xor is a signed bigint
    common, mine, other = np.intersect1d(bucket, ours.bucket, return_indices=True)
    same = (rows[mine] == ours.rows[other]) & (xor[mine] == ours.xor[other])
    return np.setdiff1d(np.union1d(bucket, ours.bucket), common[same])


@dataclass
class _Diff:
    missing: list[tuple[int, int]]  # key ranges of source rows to recover
    deleted: held_state.Keys  # what the lake holds of keys the source no longer has
    ahead: int


def _ranges(buckets: list[int]) -> list[tuple[int, int]]:
    """Consecutive compared buckets as inclusive key ranges."""
    out: list[tuple[int, int]] = []
    for b in buckets:
        lo, hi = b << SHIFT, ((b + 1) << SHIFT) - 1
        if out and out[-1][1] + 1 == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _ms_of(value: datetime) -> int:
    return int((value - datetime(1970, 1, 1)).total_seconds() * 1000)


def _diff(
    source: SourceSnapshot,
    state: held_state.HeldState,
    spec: Table,
    buckets: list[int],
    mark: Watermark,
    now: datetime,
) -> _Diff:
    theirs = held_state.Keys.of(source.keys_in(_ranges(buckets)), spec)  # sorted by key
    coarse = {b // held_state.PER_KEY_BUCKET for b in buckets}
    ours = state.keys(coarse)
    ours = ours.take(np.isin(ours.key >> SHIFT, np.asarray(buckets, dtype=np.int64)))
    # Where each source key stands in what the lake holds.
    at = np.searchsorted(ours.key, theirs.key)
    found = at < len(ours)
    found[found] = ours.key[at[found]] == theirs.key[found]
    held_stamp = np.full(len(theirs), np.iinfo(np.int64).min)
    held_stamp[found] = ours.stamp[at[found]]
    # Rows after the watermark are the next extraction's, unless stamped in the future
    # (incremental extraction reaches those only when the clock does).
    mark_ms = _ms_of(mark.last_updated)
    after = (theirs.stamp > mark_ms) | ((theirs.stamp == mark_ms) & (theirs.key > mark.key))
    pending = after & (theirs.stamp < _ms_of(now))
    missing = ~pending & (theirs.stamp > held_stamp)
    ahead = int((found & (theirs.stamp < held_stamp)).sum())
    gone = ~np.isin(ours.key, theirs.key, assume_unique=True)
    # Recover by key ranges: runs of consecutive source keys that are all missing.
    edges = np.diff(np.r_[0, missing.astype(np.int8), 0])
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    ranges = [(int(theirs.key[a]), int(theirs.key[b])) for a, b in zip(starts, stops, strict=True)]
    return _Diff(missing=ranges, deleted=ours.take(gone), ahead=ahead)


def _not_deleted_elsewhere(
    lake: Lake,
    spec: Table,
    state: held_state.HeldState,
    candidates: held_state.Keys,
    snapshot: dict[str, str],
    own: str | None,
) -> held_state.Keys:
    """Drop candidate deletions that a batch from a snapshot not before ours delivered: a
    concurrent extraction saw those rows after our snapshot was taken (inserted since, or
    restored), so their absence here is not a delete. Such batches are few (concurrent), and
    among the state's recent fold entries (`held.FOLD_RECENT`)."""
    if len(candidates) == 0:
        return candidates
    for record in state.folded:
        key = record["key"]
        if record["observed_to"] <= snapshot["from"] or record["mode"] == layout.TOMBSTONE_MODE:
            continue
        if key == own or not lake.exists(key):
            continue
        seen = held_state.batch_keys(lake, spec, lake.read_json(key))
        candidates = candidates.take(~np.isin(candidates.key, seen.key))
    return candidates


def _guard(
    spec: Table, deleted: int, held: int, settings: Settings, allow_mass_delete: bool
) -> None:
    share = settings.reconcile_max_delete_share
    if deleted and not allow_mass_delete and deleted > share * held:
        raise MassDeleteError(spec.name, deleted, held, share)


def _ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _at(ms: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(milliseconds=ms)


# -- writing the batches ---------------------------------------------------------------------
@dataclass
class _Writer:
    """Commits the batches a pass produces, each with its own manifest (create-if-absent:
    a repeated pass under the same run id finds them committed and reuses them)."""

    source: SourceSnapshot
    lake: Lake
    spec: Table
    run_id: str
    drift: DriftReport  # recovered rows carry the columns the source added, like any batch
    snapshot: dict[str, str]
    settings: Settings

    @property
    def schema(self) -> pa.Schema:
        return batch_schema(self.spec, self.drift)

    def recovered(self, ranges: list[tuple[int, int]]) -> held_state.Folded:
        """The current rows of the missing keys' ranges, as a `reconcile` batch."""
        batch = layout.reconcile_run_id(self.run_id)
        rows = self.source.rows_in(ranges, self.drift.added)
        return self._rows(batch, layout.RECONCILE_MODE, rows, ranges)

    def repair(self, damage: repair.Damage) -> list[held_state.Folded]:
        """Take a broken batch back and extract its window again (`repair` mode)."""
        repair.retract(self.lake, damage)
        batch = layout.repair_run_id(self.run_id, damage.run_id)
        rows, ranges = repair.rows(self.source, damage, self.drift.added)
        return [self._rows(batch, layout.REPAIR_MODE, rows, ranges, repairs=damage.key)]

    def _rows(
        self,
        batch: str,
        mode: str,
        rows: Any,
        ranges: list[tuple[int, int]] | None,
        repairs: str | None = None,
    ) -> held_state.Folded:
        key = layout.ingestion_manifest(self.spec.name, batch)
        manifest = self.lake.read_json_or_none(key)
        fresh = manifest is None
        if manifest is None:
            written = write_parts(
                self.lake,
                RunDay(self.lake, self.spec.name, batch).keys(),
                self.schema,
                self.spec,
                rows,
                self.settings.extract_part_rows,
            )
            columns = schema_json(self.spec, self.schema, self.drift)
            manifest = self._manifest(
                batch,
                mode,
                written.files,
                written.rows,
                written.first,
                written.last,
                self.schema,
                columns,
            )
            manifest["added_columns"] = [c.name for c in self.drift.added]
            manifest["window"]["ranges"] = len(ranges or [])
            if repairs:
                manifest["window"]["repairs"] = repairs
        return self._commit(key, manifest, layout.BATCH_ROWS, fresh=fresh)

    def tombstones(self, deleted: held_state.Keys) -> held_state.Folded:
        """One tombstone batch of the deleted keys, detected at this snapshot."""
        batch = layout.tombstone_run_id(self.run_id)
        key = layout.ingestion_manifest(self.spec.name, batch)
        manifest = self.lake.read_json_or_none(key)
        fresh = manifest is None
        if manifest is None:
            schema = layout.tombstone_schema(self.spec.name)
            detected = _ms_of(_ms(datetime.fromisoformat(self.snapshot["from"])))
            order = np.argsort(deleted.key)
            keys = deleted.take(order)
            table = pa.Table.from_arrays(
                [
                    arrays.fixed_width(keys.key, pa.int32()),
                    arrays.fixed_width(keys.stamp, pa.timestamp("ms")),
                    arrays.fixed_width(np.full(len(keys), detected), pa.timestamp("ms")),
                ],
                schema=schema,
            )
            part = next(RunDay(self.lake, self.spec.name, batch).keys())
            self.lake.write_parquet(part, table)
            first, last = (_at(int(keys.stamp.min())), _at(int(keys.stamp.max())))
            manifest = self._manifest(
                batch,
                layout.TOMBSTONE_MODE,
                [part],
                len(keys),
                first,
                last,
                schema,
                _tombstone_schema_json(schema),
            )
        return self._commit(key, manifest, layout.BATCH_TOMBSTONES, fresh=fresh)

    def _commit(self, key: str, manifest: Any, kind: str, *, fresh: bool) -> held_state.Folded:
        """Commit a batch like the extract does: the manifest (`fresh`: not committed by
        an earlier attempt of this pass), then its batch log entry, where readers find it."""
        replayed = not fresh
        if fresh:
            manifest["log_from"] = ingest_log.head(self.lake)
            if not self.lake.create_json(key, manifest):  # a concurrent attempt was first
                manifest, replayed = self.lake.read_json(key), True
        ingest_log.log_batch(self.lake, key, manifest, replayed=replayed, kind=kind)
        return key, manifest, held_state.batch_keys(self.lake, self.spec, manifest)

    def _manifest(
        self,
        batch: str,
        mode: str,
        files: list[str],
        rows: int,
        first: Any,
        last: Any,
        schema: pa.Schema,
        columns: list[SchemaColumn],
    ) -> IngestionManifest:
        """`columns`: the files' `schema` (`added_columns` empty unless the caller sets it)."""
        return {
            "table": self.spec.name,
            "run_id": batch,
            "files": files,
            "rows": rows,
            "cursor": {
                "from": iso_ms(first) if first else None,
                "to": iso_ms(last) if last else None,
                "to_key": None,
            },
            "window": {"since": None, "until": self.snapshot["from"], "after_key": None},
            "mode": mode,
            "segment": 1,
            "schema_fingerprint": schema_fingerprint(schema),
            "schema": columns,
            "added_columns": [],
            "warnings": [],
            "more": False,
            "next_run_id": None,
            "resume": None,
            "watermark": None,
            "snapshot": dict(self.snapshot),
            "committed_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "log_from": 0,  # set just before the commit
        }


def _tombstone_schema_json(schema: pa.Schema) -> list[SchemaColumn]:
    """The `schema` of a tombstone batch's files: not read from the source's columns."""
    source_types = {"int32": "integer", "timestamp[ms]": "timestamp(3) without time zone"}
    return [
        {
            "name": f.name,
            "type": str(f.type),
            "nullable": f.nullable,
            "source_type": source_types[str(f.type)],
            "in_catalog": f.name != layout.DELETED_AT,
        }
        for f in schema
    ]
