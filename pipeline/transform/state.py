"""The transform's own state in the processed zone, committed together with the run manifest.

Every run writes its state snapshots under run-specific keys and points at them from
`_state/head.json` (written just before the run manifest). A reader trusts the head only
if the head's run manifest exists; otherwise that run crashed before committing and the
head's `previous` pointer is the committed state. So state and outputs commit atomically
with the manifest, a crashed run's files are ignored, and no listing is needed.

State kinds (keys in `StatePointers.files`):
- `current/<table>/b<n>`: latest valid version per primary key of each lookup source table;
- `seen/<table>/b<n>`: fact row versions already handled (skip re-deliveries);
- `pending/<table>`: fact rows waiting for a missing dimension row.

Next to the snapshots the pointers carry, as small JSON: how far the ingestion batch log is
consumed (`ingest`, an `IngestCursor`: this replaced the `consumed` snapshot of every
manifest key ever consumed, which grew and was rewritten by every run), the run's number
in the processed zone's batch log (`log_seq`), its `committed_at`, and how far housekeeping
has gone through that log (`housekept`).

`current` and `seen` are split into buckets of `bucket_ids` consecutive primary keys
(bucket `n` holds ids `n * bucket_ids .. (n + 1) * bucket_ids - 1`), so a run reads only
the buckets of the ids it touches and rewrites only the buckets that changed; the other
pointers are carried forward unchanged. Source ids are serial, and updates and overlap
re-deliveries cluster on recent ids, so a small batch touches few buckets. The width is
recorded in the pointers and never changes for a processed zone. State written before
buckets existed (one file per kind) is read and re-written as buckets on the next run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipeline import layout, processed_log
from pipeline.errors import CorruptBatchError, rederive_hint
from pipeline.lake import Lake
from pipeline.transform.inputs import IngestCursor

log = logging.getLogger(__name__)

BUCKET_IDS = 65_536  # ids per state bucket (new processed zones; existing ones keep theirs)
BUCKET = "__bucket"
IO_THREADS = 8  # state files are small: reads and writes are latency-bound on S3


@dataclass
class StatePointers:
    """Keys of the state files of one committed run (empty on the very first run)."""

    run_id: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # "current/staff/b0" -> lake key
    bucket_ids: int | None = None  # None: no state yet (or state from before buckets)
    ingest: IngestCursor | None = None  # None: no state yet, or from before the batch log
    log_seq: int | None = None  # None: no run yet, or committed before the batch log
    committed_at: str | None = None
    housekept: int = 0  # processed batch log entries whose expired records are deleted
    # kind -> the hash function its content fingerprints come from (transform/content.py)
    content: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "bucket_ids": self.bucket_ids,
            "files": dict(sorted(self.files.items())),
            "ingest": None if self.ingest is None else self.ingest.to_json(),
            "log_seq": self.log_seq,
            "committed_at": self.committed_at,
            "housekept": self.housekept,
            "content": dict(sorted(self.content.items())),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> StatePointers:
        if not obj:
            return cls()
        width = obj.get("bucket_ids")
        ingest = obj.get("ingest")
        log_seq = obj.get("log_seq")
        return cls(
            run_id=obj.get("run_id"),
            files=dict(obj.get("files", {})),
            bucket_ids=int(width) if width else None,
            ingest=None if ingest is None else IngestCursor.from_json(ingest),
            log_seq=None if log_seq is None else int(log_seq),
            committed_at=obj.get("committed_at"),
            housekept=int(obj.get("housekept") or 0),
            content=dict(obj.get("content") or {}),
        )


@dataclass
class Head:
    """`_state/head.json` as read: the committed state, and the state a crashed run wrote
    but never committed (its snapshots are garbage once a later run commits)."""

    committed: StatePointers
    abandoned: StatePointers | None = None


def read_head(lake: Lake) -> Head:
    """The state of the last committed run: the head, or its predecessor if it crashed.

    A head that is missing or unreadable while runs were committed (a lost file) is
    recovered from the newest committed batch's manifest, which records the same pointers
    (the newest manifest never expires)."""
    try:
        committed, abandoned = processed_log.read_head(lake)
    except CorruptBatchError:
        committed, abandoned = {}, None
    if not committed.get("run_id") and abandoned is None:
        recovered = _from_newest_batch(lake)
        if recovered is not None:
            return Head(recovered)
    return Head(
        StatePointers.from_json(committed),
        None if abandoned is None else StatePointers.from_json(abandoned),
    )


def committed_state(lake: Lake) -> StatePointers:
    """The state of the last committed run: the head, or its predecessor if it crashed."""
    return read_head(lake).committed


def _from_newest_batch(lake: Lake) -> StatePointers | None:
    """The pointers the newest committed batch recorded: the last entry of the batch log
    (reading forward from its hint), or for a zone from before the log the newest manifest
    listed. None: nothing was ever committed."""
    log_ = processed_log.batch_log(lake)
    newest = None
    hint = log_.head()
    for entry in log_.read_after(max(0, hint - 1)):
        newest = entry
    if newest is not None:
        manifest = lake.read_json(str(newest["manifest"]))
    else:
        manifests = []
        for key in lake.list(layout.MANIFESTS):
            run_id = layout.processed_run_id(key)
            if run_id is not None:
                doc = lake.read_json(key)
                manifests.append((str(doc["committed_at"]), run_id, doc))
        if not manifests:
            return None
        manifest = max(manifests, key=lambda m: m[:2])[2]
    log.warning("transform state head recovered from batch %s", manifest.get("run_id"))
    return StatePointers.from_json(manifest["state"])


def write_head(lake: Lake, new: StatePointers, base: StatePointers) -> None:
    lake.write_json(layout.STATE_HEAD, {"current": new.to_json(), "previous": base.to_json()})


def read_state(lake: Lake, pointers: StatePointers, kind: str, empty: pl.DataFrame) -> pl.DataFrame:
    """A whole (unbucketed) state snapshot as a DataFrame, or `empty` if there is none."""
    key = pointers.files.get(kind)
    return empty if key is None else _read(lake, [key], empty)


def write_state(lake: Lake, run_id: str, kind: str, df: pl.DataFrame) -> str:
    """Write a snapshot; dictionary-encode only text columns (ids and times gain nothing)."""
    key = layout.state_snapshot(kind, run_id)
    text = [c for c, dtype in df.schema.items() if dtype == pl.String]
    lake.write_parquet(key, df.to_arrow(), use_dictionary=text or False)
    return key


def _split(df: pl.DataFrame, buckets: set[int] | None) -> dict[int, pl.DataFrame]:
    """The rows of each wanted bucket (all if None) by the `BUCKET` column (dropped): zero-copy
    slices of one sort (partition_by gathers every column per group, several times slower)."""
    if buckets is not None and not set(df[BUCKET].unique().to_list()) <= buckets:
        df = df.filter(pl.col(BUCKET).is_in(_ints(buckets)))  # (a copy: skipped if it keeps all)
    if not df[BUCKET].is_sorted():  # (current state is sorted by key already)
        df = df.sort(BUCKET)  # row order within a bucket does not matter
    runs = df[BUCKET].rle()
    df = df.drop(BUCKET)
    parts, offset = {}, 0
    for length, value in zip(runs.struct.field("len"), runs.struct.field("value"), strict=True):
        parts[value] = df.slice(offset, length)
        offset += length
    return parts


def _read_one(lake: Lake, key: str) -> Any:
    try:
        return lake.read_parquet([key])
    except CorruptBatchError as exc:
        writer = key.rsplit("/run=", 1)[-1].removesuffix(".parquet")
        raise CorruptBatchError(f"transform state file: {exc}; {rederive_hint(writer)}") from None


def _read(lake: Lake, keys: list[str], empty: pl.DataFrame) -> pl.DataFrame:
    if len(keys) > 1 and not lake.is_local:
        with ThreadPoolExecutor(min(len(keys), IO_THREADS)) as pool:
            tables = list(pool.map(lambda k: _read_one(lake, k), keys))
    else:
        tables = [_read_one(lake, k) for k in keys]
    frames = []
    for table in tables:
        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
        added = [pl.lit(None, t).alias(c) for c, t in empty.schema.items() if c not in df.columns]
        if added:  # state written before the column existed (its value is unknown)
            df = df.with_columns(added).select(empty.columns)
        frames.append(df.cast(empty.schema))  # the stored file may carry looser Arrow types
    return pl.concat(frames) if frames else empty


def _ints(values: Iterable[int]) -> pl.Series:
    return pl.Series(sorted(values), dtype=pl.Int64).implode()


def bucket_kind(kind: str, bucket: int) -> str:
    return f"{kind}/b{bucket}"


class StateStore:
    """One run's view of the committed state and the updates it will commit.

    Reads go to the base (committed) snapshots; `update`/`replace` record new snapshots,
    written by `flush` at commit time under this run's keys. `read_keys` lists every state
    file read, so tests can check a small batch reads a small part of the state.
    """

    def __init__(self, lake: Lake, base: StatePointers, run_id: str) -> None:
        self.lake, self.base, self.run_id = lake, base, run_id
        self.width = base.bucket_ids or BUCKET_IDS
        self.read_keys: list[str] = []
        self._whole: dict[str, pl.DataFrame | None] = {}  # kind -> new snapshot (None: drop)
        self._buckets: dict[str, tuple[pl.DataFrame, str, set[int]]] = {}
        self._legacy: dict[str, tuple[pl.DataFrame, str]] = {}  # pre-bucket whole snapshots
        self.content = dict(base.content)  # kind -> fingerprint function, as flushed

    # -- bucket arithmetic ------------------------------------------------------------
    def bucket_of(self, column: str) -> pl.Expr:
        return (pl.col(column).cast(pl.Int64) // self.width).alias(BUCKET)

    def buckets_in(self, ids: pl.Series) -> set[int]:
        """The buckets of the (non-null) ids given."""
        ids = ids.drop_nulls()
        if ids.len() == 0:
            return set()
        return set((ids.cast(pl.Int64) // self.width).unique().to_list())

    def stored_buckets(self, kind: str) -> dict[int, str]:
        prefix = f"{kind}/b"
        return {
            int(k[len(prefix) :]): key
            for k, key in self.base.files.items()
            if k.startswith(prefix) and k[len(prefix) :].lstrip("-").isdigit()
        }

    # -- reads ------------------------------------------------------------------------
    def read_whole(self, kind: str, empty: pl.DataFrame) -> pl.DataFrame:
        key = self.base.files.get(kind)
        if key is None:
            return empty
        self.read_keys.append(key)
        return _read(self.lake, [key], empty)

    def read(
        self, kind: str, empty: pl.DataFrame, key_column: str, buckets: Iterable[int] | None = None
    ) -> pl.DataFrame:
        """The rows of the given buckets of a bucketed kind (all buckets if None)."""
        if kind in self.base.files:  # state from before buckets: read it whole, once
            if kind not in self._legacy:
                self._legacy[kind] = (self.read_whole(kind, empty), key_column)
            whole = self._legacy[kind][0]
            if buckets is None:
                return whole
            return whole.filter(self.bucket_of(key_column).is_in(_ints(buckets)))
        stored = self.stored_buckets(kind)
        chosen = sorted(stored) if buckets is None else sorted(set(buckets) & set(stored))
        keys = [stored[b] for b in chosen]
        self.read_keys.extend(keys)
        return _read(self.lake, keys, empty) if keys else empty

    # -- updates (written by flush) ---------------------------------------------------
    def replace(self, kind: str, df: pl.DataFrame) -> None:
        """A new whole snapshot of an unbucketed kind (an empty frame drops the kind)."""
        self._whole[kind] = df if df.height else None

    def update(
        self, kind: str, df: pl.DataFrame, key_column: str, dirty: Iterable[int] | None
    ) -> None:
        """New contents of the `dirty` buckets of `kind` (None: every bucket `df` has rows in):
        `df` holds every row they keep (rows of other buckets are ignored)."""
        if kind in self.base.files and kind not in self._legacy:  # migrate it whole (flush)
            self.read(kind, df.clear(), key_column)
        if dirty is None:
            dirty = self.buckets_in(df[key_column])
        if dirty:
            self._buckets[kind] = (df, key_column, set(dirty))

    def flush(self) -> StatePointers:
        """Write every updated snapshot under this run's keys; the next pointers (their
        `files`, the other fields are the caller's)."""
        files = dict(self.base.files)
        jobs: list[tuple[str, pl.DataFrame]] = []
        for kind, new in self._whole.items():
            if new is None:
                files.pop(kind, None)
            else:
                jobs.append((kind, new))
        for kind, (old, key_column) in self._legacy.items():
            files.pop(kind)
            df, _, dirty = self._buckets.get(kind, (old.clear(), key_column, set()))
            updated = self.bucket_of(key_column).is_in(_ints(dirty))
            keep = old.filter(~updated)
            everything = self.buckets_in(keep[key_column]) | dirty
            self._buckets[kind] = (pl.concat([keep, df.filter(updated)]), key_column, everything)
        for kind, (df, key_column, dirty) in self._buckets.items():
            parts = _split(df.with_columns(self.bucket_of(key_column)), dirty)
            for bucket in sorted(dirty):
                name = bucket_kind(kind, bucket)
                if bucket in parts:
                    jobs.append((name, parts[bucket]))
                else:  # every row of the bucket is gone
                    files.pop(name, None)
        threads = min(len(jobs), (os.cpu_count() or 1) if self.lake.is_local else IO_THREADS)
        if threads > 1:  # pyarrow encodes and writes without the GIL
            with ThreadPoolExecutor(threads) as pool:
                keys = list(pool.map(lambda job: write_state(self.lake, self.run_id, *job), jobs))
        else:
            keys = [write_state(self.lake, self.run_id, *job) for job in jobs]
        files.update({kind: key for (kind, _), key in zip(jobs, keys, strict=True)})
        return StatePointers(self.run_id, files, self.width, content=dict(self.content))
