"""What the lake holds of a source table: the lake side of reconciliation.

For every key the ingestion zone has delivered and not tombstoned, the newest
`last_updated` delivered, kept in the ingestion zone itself (`_reconcile/<table>/`, see
`pipeline.layout`) and maintained by folding committed ingestion batches in. Why a state of
its own rather than the transform's `seen`/`current` state in the processed zone:

- it is exactly what was delivered, whatever the transform did with it: quarantined rows
  count as delivered (they must not be re-extracted on every pass), and a backlog the
  transform has not reached yet is not mistaken for rows the lake lacks;
- every batch it folds carries its source snapshot (manifest `snapshot`), so a key only a
  batch from a later snapshot holds is never mistaken for a deleted row (below);
- the extract role never reads the processed zone (each step keeps to its own zones);
- it costs what the new batches cost: a pass reads only the key and cursor columns of the
  batches committed since the last pass and rewrites only the key files they touch.

Numpy and Arrow only (the extract step never imports Polars or pandas). State of one table
(all immutable files under writer-unique names, one versioned head):
- key files, one per `KEY_BUCKET_IDS` consecutive ids: `(key, last_updated)` sorted by key;
- a summary: per `COMPARE_BUCKET_IDS` consecutive ids (the unit compared with the source)
  the number of keys held and the XOR of their `pipeline.extract.keyhash` hashes;
- the fold record: one entry per batch folded (manifest key, mode, source snapshot, window,
  key range), so a batch found broken later can be re-extracted (`pipeline.extract.repair`),
  appended as one small JSON file per pass; the head records how far the ingestion batch
  log (`pipeline.ingest_log`) is folded, so a pass reads only the entries after it. A pass
  needs the entries of recent batches only (those a concurrent extraction may have
  committed: `FOLD_RECENT`); older ones move to the archive, which only
  `reconcile --repair` reads (it checks every batch), so what a pass reads of the record
  stays the same after a year of runs;
- `head-<seq>.json`, created with compare-and-swap like the watermark: the newest wins, a
  pass that loses the race leaves its files unreferenced (the next pass folds again).

The state is derived data: when a file of it is missing or unreadable it is rebuilt from
the batch log (a full fold: entries are never deleted, so batches whose manifests expired
are folded too) and the pass carries on.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import arrays, layout
from pipeline.catalog import Table
from pipeline.errors import CorruptBatchError
from pipeline.extract import keyhash
from pipeline.lake import Lake

log = logging.getLogger(__name__)

KEY_BUCKET_IDS = 65_536  # ids per key file
COMPARE_BUCKET_IDS = 1_024  # ids per compared bucket: a differing one reads at most this many
PER_KEY_BUCKET = KEY_BUCKET_IDS // COMPARE_BUCKET_IDS
KEEP_HEADS = 5
FOLD_CHUNK_KEYS = 1_000_000  # incoming keys folded at once (the fold's memory follows it)
FOLD_FILES = 32  # fold record files a head lists before they are compacted into one
# Fold entries of batches observed this long before the newest one go to the archive: far
# longer than any pass runs (a Lambda stops at 15 minutes), so no pass still running took
# its snapshot before them (`reconcile._not_deleted_elsewhere` reads the recent entries).
FOLD_RECENT = dt.timedelta(days=1)
FORMAT = 1
_HEAD = re.compile(r"head-(\d{10})\.json$")
_NEVER = np.iinfo(np.int64).min


@dataclass(frozen=True)
class Keys:
    """Keys with one `last_updated` each (int64 milliseconds since 1970)."""

    key: np.ndarray
    stamp: np.ndarray

    @classmethod
    def empty(cls) -> Keys:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def of(cls, table: pa.Table, spec: Table) -> Keys:
        return cls(arrays.column(table, spec.primary_key), arrays.milliseconds(table, spec.cursor))

    def __len__(self) -> int:
        return len(self.key)

    def take(self, selector: np.ndarray | slice) -> Keys:
        return Keys(self.key[selector], self.stamp[selector])

    def to_arrow(self, spec: Table) -> pa.Table:
        return pa.Table.from_arrays(
            [
                arrays.fixed_width(self.key, pa.int32()),
                arrays.fixed_width(self.stamp, pa.timestamp("ms")),
            ],
            names=[spec.primary_key, spec.cursor],
        )

    @staticmethod
    def concat(parts: list[Keys]) -> Keys:
        if not parts:
            return Keys.empty()
        return Keys(
            np.concatenate([p.key for p in parts]), np.concatenate([p.stamp for p in parts])
        )


@dataclass
class Summary:
    """Per compared bucket holding keys: the bucket, its key count and XOR of hashes."""

    bucket: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    xor: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_arrays(
            [
                arrays.fixed_width(self.bucket, pa.int64()),
                arrays.fixed_width(self.rows, pa.int64()),
                arrays.fixed_width(self.xor, pa.uint64()),
            ],
            names=["bucket", "rows", "xor"],
        )

    @classmethod
    def of(cls, table: pa.Table) -> Summary:
        return cls(
            arrays.column(table, "bucket"),
            arrays.column(table, "rows"),
            arrays.column(table, "xor", np.uint64),
        )


@dataclass
class Head:
    """One committed version of a table's held state (`head-<seq>.json`)."""

    table: str
    seq: int = 0
    keys: dict[int, str] = field(default_factory=dict)  # key bucket -> key file
    summary: str | None = None
    folded: list[str] = field(default_factory=list)  # fold record files, appended, compacted
    archived: list[str] = field(default_factory=list)  # the archive's files, compacted too
    held: int = 0  # keys held
    last_pass: dict[str, Any] | None = None  # the last reconciliation's counts and time
    # the ingestion batch log is folded up to this entry (None: a state from before the log)
    log_through: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "table": self.table,
            "seq": self.seq,
            "key_bucket_ids": KEY_BUCKET_IDS,
            "compare_bucket_ids": COMPARE_BUCKET_IDS,
            "hash": "timestamp_hash_extended",
            "keys": {str(b): k for b, k in sorted(self.keys.items())},
            "summary": self.summary,
            "folded": self.folded,
            "archived": self.archived,
            "held": self.held,
            "last_pass": self.last_pass,
            "log_through": self.log_through,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Head:
        if (
            obj.get("format") != FORMAT
            or obj.get("key_bucket_ids") != KEY_BUCKET_IDS
            or obj.get("compare_bucket_ids") != COMPARE_BUCKET_IDS
        ):
            raise CorruptBatchError(f"held state of {obj.get('table')!r} has another format")
        return cls(
            table=str(obj["table"]),
            seq=int(obj["seq"]),
            keys={int(b): str(k) for b, k in obj["keys"].items()},
            summary=obj.get("summary"),
            folded=list(obj.get("folded") or []),
            archived=list(obj.get("archived") or []),
            held=int(obj.get("held", 0)),
            last_pass=obj.get("last_pass"),
            log_through=None if obj.get("log_through") is None else int(obj["log_through"]),
        )


def _versions(lake: Lake, table: str) -> list[int]:
    found = (_HEAD.search(k) for k in lake.list(layout.reconcile_heads(table)))
    return sorted(int(m.group(1)) for m in found if m)


def load_head(lake: Lake, table: str) -> Head | None:
    """The newest readable head, or None (no state yet, or none readable: rebuild)."""
    for seq in reversed(_versions(lake, table)):
        try:
            return Head.from_json(lake.read_json(layout.reconcile_head(table, seq)))
        except (CorruptBatchError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning(
                "unreadable held-state head skipped", extra={"table": table, "error": str(exc)}
            )
    return None


def last_pass(lake: Lake, table: str) -> dict[str, Any] | None:
    """The last reconciliation's counts and time, from the head pointer (for status: one
    read); None before the first pass."""
    try:
        pointed = lake.read_json_or_none(layout.reconcile_pointer(table))
    except CorruptBatchError:
        return None
    return pointed.get("last_pass") if isinstance(pointed, dict) else None


def save_head(lake: Lake, head: Head) -> bool:
    """Create the next head version (compare-and-swap); False if another pass won. The
    pointer is a copy for readers that must not list (status), moved forward only."""
    head.seq += 1
    if not lake.create_json(layout.reconcile_head(head.table, head.seq), head.to_json()):
        return False
    pointer = layout.reconcile_pointer(head.table)
    try:
        pointed = lake.read_json_or_none(pointer)
    except CorruptBatchError:
        pointed = None
    if not isinstance(pointed, dict) or int(pointed.get("seq", 0)) < head.seq:
        lake.write_json(pointer, head.to_json())
    for seq in _versions(lake, head.table):
        if seq <= head.seq - KEEP_HEADS:
            lake.delete(layout.reconcile_head(head.table, seq))
    return True


# -- reading what a batch delivered --------------------------------------------------------
def _read(lake: Lake, key: str, columns: list[str] | None = None) -> pa.Table:
    try:
        with lake.fs.open_input_file(lake.path(key)) as f:
            return pq.ParquetFile(f).read(columns=columns)
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as exc:
        raise CorruptBatchError(f"lake file {lake.uri(key)} is unreadable: {exc}") from None


def batch_keys(lake: Lake, spec: Table, manifest: dict[str, Any]) -> Keys:
    """`(key, last_updated)` of every row a committed batch lists (tombstone batches: the
    keys they delete), checked against the manifest's row count: a missing or truncated
    file is a `CorruptBatchError`."""
    columns = [spec.primary_key, spec.cursor]
    parts = [Keys.of(_read(lake, key, columns), spec) for key in manifest["files"]]
    keys = Keys.concat(parts)
    if len(keys) != int(manifest["rows"]):
        raise CorruptBatchError(
            f"ingestion batch {layout.ingestion_manifest(spec.name, manifest['run_id'])}: its "
            f"files hold {len(keys)} rows, the manifest says {manifest['rows']}"
        )
    return keys


def fold_record(key: str, manifest: dict[str, Any], keys: Keys) -> dict[str, Any]:
    """What the held state remembers of one folded batch."""
    window = manifest.get("window") or {}
    start, end = layout.snapshot_bounds(manifest)
    return {
        "key": key,
        "run_id": manifest["run_id"],
        "mode": manifest["mode"],
        "observed_from": start,
        "observed_to": end,
        "since": window.get("since"),
        "until": window.get("until"),
        "after_key": window.get("after_key"),
        "min_key": int(keys.key.min()) if len(keys) else None,
        "max_key": int(keys.key.max()) if len(keys) else None,
        "rows": len(keys),
    }


Folded = tuple[str, dict[str, Any], Keys]  # (manifest key, manifest, its keys)


def _new_token() -> str:
    return uuid.uuid4().hex[:12]


def _entries(lake: Lake, files: list[str]) -> list[dict[str, Any]]:
    """The fold entries the given record files hold, in order."""
    return [r for key in files for r in lake.read_json(key)]


def _observed(record: dict[str, Any]) -> dt.datetime | None:
    try:
        at = dt.datetime.fromisoformat(str(record.get("observed_to") or ""))
    except ValueError:
        return None
    return at if at.tzinfo is None else at.astimezone(dt.UTC).replace(tzinfo=None)


def _aged(records: list[dict[str, Any]], among: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `records` observed more than `FOLD_RECENT` before the newest of `among` (on the
    source's clock, like the snapshots compared with them), or never recorded when."""
    newest = max((at for r in among if (at := _observed(r)) is not None), default=None)
    if newest is None:
        return []
    cutoff = newest - FOLD_RECENT
    return [r for r in records if (at := _observed(r)) is None or at < cutoff]


def _event_order(batch: Folded) -> tuple[str, str, str]:
    """Batches apply in the order of their snapshots, then of their commits."""
    key, manifest, _ = batch
    return layout.snapshot_bounds(manifest)[0], str(manifest.get("committed_at", "")), key


@dataclass
class HeldState:
    """One pass's view of a table's held state, and the changes it will save."""

    lake: Lake
    spec: Table
    head: Head
    token: str = field(default_factory=_new_token)
    summary: Summary = field(default_factory=Summary)
    folded: list[dict[str, Any]] = field(default_factory=list)  # recent fold entries
    archive: list[dict[str, Any]] | None = None  # the archived ones (None: not read)
    _keys: dict[int, Keys] = field(default_factory=dict)  # loaded key buckets
    _dirty: set[int] = field(default_factory=set)
    _new_folds: list[dict[str, Any]] = field(default_factory=list)
    log_through: int | None = None  # how far the batch log is folded (saved with the head)

    @classmethod
    def open(cls, lake: Lake, spec: Table, *, archive: bool = False) -> HeldState:
        """The committed state (empty if none); unreadable parts of it make it empty, so
        the caller's fold rebuilds it from the batch log. `archive`: read the archived fold
        entries too (a state from before the batch log always does: it lists manifests)."""
        head = load_head(lake, spec.name)
        # (empty: nothing is archived either)
        state = cls(lake, spec, Head(spec.name, seq=head.seq if head else 0), archive=[])
        if head is None:
            return state
        try:
            summary = Summary.of(_read(lake, head.summary)) if head.summary else Summary()
            folded = _entries(lake, head.folded)
            archived = (
                _entries(lake, head.archived) if archive or head.log_through is None else None
            )
            for key in head.keys.values():
                if not lake.exists(key):
                    raise CorruptBatchError(f"held-state file {lake.uri(key)} is missing")
        except (CorruptBatchError, KeyError, TypeError) as exc:
            log.warning(
                "held state unreadable: rebuilding it from the batch log",
                extra={"table": spec.name, "error": str(exc)},
            )
            return state
        state.head, state.summary, state.folded, state.archive = head, summary, folded, archived
        state.log_through = head.log_through
        return state

    # -- reading ---------------------------------------------------------------------
    def keys(self, buckets: set[int]) -> Keys:
        """The held keys of the given key buckets, sorted by key."""
        parts = []
        for bucket in sorted(buckets):
            if bucket not in self._keys:
                key = self.head.keys.get(bucket)
                self._keys[bucket] = (
                    Keys.of(_read(self.lake, key), self.spec) if key else Keys.empty()
                )
            parts.append(self._keys[bucket])
        return Keys.concat(parts)

    def records(self) -> list[dict[str, Any]]:
        """The fold entries read: the recent ones, after the archived ones if read."""
        return [*(self.archive or []), *self.folded]

    def folded_keys(self) -> set[str]:
        return {r["key"] for r in self.records()}

    @property
    def held_count(self) -> int:
        """Keys held now (this pass's folds included)."""
        return int(self.summary.rows.sum())

    # -- folding ---------------------------------------------------------------------
    def fold(self, batches: list[Folded]) -> None:
        """Fold committed batches in: `(manifest key, manifest, batch_keys(...))` each.

        Per key, events are ordered by the batch's snapshot (then commit): the newest
        event decides. After a tombstone the key is gone until a later row event brings
        it back; otherwise the newest `last_updated` delivered is kept.

        Keys never interact across key buckets, so the work goes in runs of consecutive
        key buckets holding about `FOLD_CHUNK_KEYS` incoming keys each: the sort and its
        temporaries (about 100 bytes a key) follow the chunk, not the table (a first pass
        folds every key of the table at once).
        """
        if not batches:
            return
        ordered = sorted(batches, key=_event_order)
        records = [fold_record(key, m, k) for key, m, k in batches]
        self.folded.extend(records)
        self._new_folds.extend(records)
        incoming: dict[int, int] = {}
        for _, _, k in ordered:
            found, counts = np.unique(k.key // KEY_BUCKET_IDS, return_counts=True)
            for bucket, count in zip(found.tolist(), counts.tolist(), strict=True):
                incoming[bucket] = incoming.get(bucket, 0) + count
        chunk: list[int] = []
        size = 0
        for bucket in sorted(incoming):  # (no incoming key: batches without rows)
            chunk.append(bucket)
            size += incoming[bucket]
            if size >= FOLD_CHUNK_KEYS:
                self._fold_chunk(ordered, chunk)
                chunk, size = [], 0
        if chunk:
            self._fold_chunk(ordered, chunk)

    def _fold_chunk(self, ordered: list[Folded], buckets: list[int]) -> None:
        """Fold the keys of the given (sorted, consecutive in use) key buckets."""
        lo, hi = buckets[0] * KEY_BUCKET_IDS, (buckets[-1] + 1) * KEY_BUCKET_IDS
        touched = set(buckets)
        old = self.keys(touched)
        parts, tombstone = [old], [False]
        for _, m, k in ordered:
            inside = (k.key >= lo) & (k.key < hi)
            parts.append(k if inside.all() else k.take(inside))
            tombstone.append(m["mode"] == layout.TOMBSTONE_MODE)
        key = np.concatenate([p.key for p in parts])
        stamp = np.concatenate([p.stamp for p in parts])
        order = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(parts)])
        tomb = np.concatenate([np.full(len(p), t) for p, t in zip(parts, tombstone, strict=True)])
        del parts
        sort = np.lexsort((order, key))
        del order
        key, stamp, tomb = key[sort], stamp[sort], tomb[sort]
        del sort
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = np.r_[starts[1:], len(key)].astype(np.int64)
        # A row event counts when no tombstone of its key follows it.
        tombs = np.cumsum(tomb)
        group = np.repeat(np.arange(len(starts)), ends - starts)
        counts = np.where(~tomb & (tombs[ends - 1][group] == tombs), stamp, _NEVER)
        newest = np.maximum.reduceat(counts, starts)
        alive = ~tomb[ends - 1]
        merged = Keys(key[starts][alive], newest[alive])
        bucket_of = merged.key // KEY_BUCKET_IDS
        for bucket in buckets:
            first, last = np.searchsorted(bucket_of, [bucket, bucket + 1])
            self._keys[bucket] = merged.take(slice(int(first), int(last)))
        self._dirty |= touched
        self._resummarise(touched, merged)

    def _resummarise(self, buckets: set[int], merged: Keys) -> None:
        """Recompute the compared buckets inside the given key buckets from their keys."""
        fine = merged.key // COMPARE_BUCKET_IDS
        got, rows, xor = keyhash.bucket_fingerprints(
            fine, keyhash.row_hashes(merged.key, merged.stamp)
        )
        keep = ~np.isin(self.summary.bucket // PER_KEY_BUCKET, np.array(sorted(buckets)))
        bucket = np.concatenate([self.summary.bucket[keep], got])
        sort = np.argsort(bucket, kind="stable")
        self.summary = Summary(
            bucket[sort],
            np.concatenate([self.summary.rows[keep], rows])[sort],
            np.concatenate([self.summary.xor[keep], xor])[sort],
        )

    # -- saving ----------------------------------------------------------------------
    def save(self, last_pass: dict[str, Any] | None) -> bool:
        """Write the changed files and the next head; False if another pass saved first.

        Only what changed is written: the key files of the touched buckets, the summary if
        any was, and this pass's fold records (`_save_folds`)."""
        table, lake = self.spec.name, self.lake
        head = Head(
            table,
            seq=self.head.seq,
            keys=dict(self.head.keys),
            summary=self.head.summary,
            folded=list(self.head.folded),
            archived=list(self.head.archived),
            log_through=self.log_through,
        )
        for bucket in sorted(self._dirty):
            keys = self._keys[bucket]
            if len(keys) == 0:
                head.keys.pop(bucket, None)
                continue
            key = layout.reconcile_keys(table, bucket, self.token)
            lake.write_parquet(key, keys.to_arrow(self.spec), use_dictionary=False)
            head.keys[bucket] = key
        if self._dirty or head.summary is None:
            head.summary = layout.reconcile_summary(table, self.token)
            lake.write_parquet(head.summary, self.summary.to_arrow(), use_dictionary=False)
        folded, archive = self._save_folds(head) if self._new_folds else (self.folded, None)
        head.held = self.held_count
        head.last_pass = last_pass if last_pass is not None else self.head.last_pass
        saved = save_head(lake, head)
        if saved:
            self._prune(head)
            self.head, self._dirty, self._new_folds = head, set(), []
            self.token = _new_token()  # (files are never rewritten: a next save names its own)
            self.folded = folded
            if self.archive is not None and archive:
                self.archive.extend(archive)
        return saved

    def _save_folds(self, head: Head) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Write this pass's fold entries into `head`: the recent ones as one more file (the
        head's files are rewritten as one every `FOLD_FILES`), those older than
        `FOLD_RECENT` (a backlog, or entries that aged since) as one more archive file (the
        archive compacts the same way; only its compaction reads it). Returns the recent
        entries and the newly archived ones."""
        table, lake = self.spec.name, self.lake
        records = self._new_folds
        if len(head.folded) >= FOLD_FILES:
            records, head.folded = self.folded, []
        old = _aged(records, self.folded)
        moved = {id(r) for r in old}
        if old:
            write = old
            if len(head.archived) >= FOLD_FILES:
                kept = self.archive if self.archive is not None else _entries(lake, head.archived)
                write = [*kept, *old]
                head.archived = []
            key = layout.reconcile_folded(table, f"{self.token}-archive-{len(head.archived)}")
            lake.write_json(key, write)
            head.archived.append(key)
        recent = [r for r in records if id(r) not in moved]
        if recent:
            key = layout.reconcile_folded(table, f"{self.token}-{len(head.folded)}")
            lake.write_json(key, recent)
            head.folded.append(key)
        return [r for r in self.folded if id(r) not in moved], old

    def _prune(self, head: Head) -> None:
        """Delete this table's state files that no kept head refers to (older than an hour:
        a concurrent pass may be about to refer to its new files)."""
        table, lake = self.spec.name, self.lake
        referenced: set[str] = set()
        for seq in _versions(lake, table):
            try:
                kept = Head.from_json(lake.read_json(layout.reconcile_head(table, seq)))
            except (CorruptBatchError, KeyError, TypeError, ValueError, AttributeError):
                continue
            referenced |= {*kept.keys.values(), kept.summary or "", *kept.folded, *kept.archived}
        stale_before = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        for kind in ("keys", "summary", "folded"):
            for key in lake.list(layout.reconcile_files(table, kind)):
                if key in referenced:
                    continue
                info = lake.fs.get_file_info(lake.path(key))
                if info.mtime is not None and info.mtime.astimezone(dt.UTC) < stale_before:
                    lake.delete(key)
