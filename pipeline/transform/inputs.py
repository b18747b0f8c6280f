"""Find the committed ingestion batches not consumed yet, and read the rows a run takes.

Only manifest-listed files exist for the transform (docs/CONTRACTS.md): parts left by a
crashed extract are never read. New batches are found by reading the ingestion zone's
batch log (`pipeline.ingest_log`) forward from the cursor the transform's state keeps:
no listing, so an idle run costs two reads whatever the history. Batches committed before
the log existed are listed once, when a state without a cursor is first read
(`legacy_cursor`), and consumed from a list in the cursor.

A batch can be consumed over several runs (a run takes at most `TRANSFORM_MAX_ROWS` rows,
and a batch may hold more): the cursor records how many of its rows were taken, and a run
reads only the Parquet row groups of its slice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import ingest_log, layout
from pipeline.catalog import TABLES
from pipeline.errors import CorruptBatchError, SchemaDriftError, repair_hint
from pipeline.lake import Lake, empty_table, lake_error

BATCH_COLUMN = "_batch"  # ordinal of the batch in this run: later batches win ties
READ_AHEAD = 2_000  # log entries (or legacy manifests) a run looks at, at most


@dataclass(frozen=True)
class Batch:
    """One committed ingestion batch, or the slice of it a run takes."""

    key: str  # ingestion manifest key
    table: str
    run_id: str
    committed_at: str
    files: tuple[str, ...]
    rows: int  # rows of the whole batch
    seq: int | None = None  # batch log number; None: committed before the log
    offset: int = 0  # rows taken by earlier runs
    take: int | None = None  # rows this run takes from `offset` (None: all the rest)
    mode: str = layout.INCREMENTAL_MODE  # tombstone batches hold deleted keys, not rows
    observed: tuple[str, str] = ("", "")  # the source-clock bounds of its snapshot

    @property
    def is_tombstones(self) -> bool:
        return self.mode == layout.TOMBSTONE_MODE

    @property
    def ref(self) -> str:
        """How the cursor names the batch: its log number, or its manifest key."""
        return str(self.seq) if self.seq is not None else self.key

    @property
    def remaining(self) -> int:
        return self.rows - self.offset

    @property
    def taken(self) -> int:
        return self.remaining if self.take is None else self.take

    def slice(self, rows: int) -> Batch:
        return replace(self, take=min(rows, self.remaining))


@dataclass
class IngestCursor:
    """How far the ingestion batch log is consumed (in the transform's state pointers)."""

    through: int = 0  # every log entry numbered up to this is consumed
    done: list[int] = field(default_factory=list)  # entries past `through` consumed whole
    partial: dict[str, int] = field(default_factory=dict)  # batch ref -> rows consumed
    legacy: list[str] = field(default_factory=list)  # pre-log manifests still to consume

    def to_json(self) -> dict[str, Any]:
        return {
            "through": self.through,
            "done": sorted(self.done),
            "partial": dict(sorted(self.partial.items())),
            "legacy": list(self.legacy),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IngestCursor:
        return cls(
            through=int(obj.get("through", 0)),
            done=[int(s) for s in obj.get("done", [])],
            partial={str(k): int(v) for k, v in obj.get("partial", {}).items()},
            legacy=[str(k) for k in obj.get("legacy", [])],
        )

    def advanced(self, taken: list[Batch]) -> IngestCursor:
        """The cursor after the given slices are consumed."""
        done, partial, legacy = set(self.done), dict(self.partial), list(self.legacy)
        for batch in taken:
            consumed = batch.offset + batch.taken
            if consumed < batch.rows:
                partial[batch.ref] = consumed
                continue
            partial.pop(batch.ref, None)
            if batch.seq is None:
                legacy.remove(batch.key)
            else:
                done.add(batch.seq)
        through = self.through
        while through + 1 in done:
            through += 1
            done.remove(through)
        return IngestCursor(through, sorted(done), partial, legacy)


def legacy_cursor(lake: Lake, consumed: set[str]) -> IngestCursor:
    """The cursor of a state from before the batch log (`consumed`: the manifest keys it
    consumed; empty for a new processed zone): every manifest committed before the log
    (without `log_from`) that has rows and was not consumed is still to come, oldest
    first. Lists and reads every manifest once: a one-off on the first run of this version."""
    pending = [
        b
        for b in read_batches(lake, [k for k in list_manifest_keys(lake) if k not in consumed])
        if b.rows
    ]
    return IngestCursor(legacy=[b.key for b in pending])


def list_manifest_keys(lake: Lake) -> list[str]:
    return [k for k in lake.list(layout.ingestion_manifests()) if k.endswith(".json")]


def read_batches(lake: Lake, keys: list[str], *, logged: bool = False) -> list[Batch]:
    """Pre-log manifests among `keys` (tables the catalog knows), in commit order; with
    `logged` those committed with the log too (found there otherwise)."""
    batches = []
    for key in keys:
        table = key.removeprefix(layout.ingestion_manifests()).split("/", 1)[0]
        try:
            m = lake.read_json(key)
            if m.get("log_from") is not None and not logged:
                continue  # committed with the log: found there
            table, run_id, committed_at = m["table"], m["run_id"], m["committed_at"]
            files, rows = tuple(m["files"]), int(m["rows"])
        except (CorruptBatchError, KeyError, TypeError, ValueError) as exc:
            raise CorruptBatchError(
                f"ingestion manifest {key} is unreadable ({exc}); {repair_hint(table)}"
            ) from None
        if table not in TABLES:
            continue
        mode = str(m.get("mode") or layout.INCREMENTAL_MODE)
        observed = layout.snapshot_bounds(m)
        batches.append(
            Batch(key, table, run_id, committed_at, files, rows, mode=mode, observed=observed)
        )
    return sorted(batches, key=lambda b: (b.committed_at, b.run_id))


_KINDS = {layout.BATCH_ROWS, layout.BATCH_TOMBSTONES}


def _from_entry(entry: dict[str, Any]) -> Batch:
    seq = entry.get("seq")
    kind = entry.get("kind")
    if kind not in _KINDS:
        raise CorruptBatchError(
            f"ingestion batch log entry {seq} is of kind {kind!r}, which this "
            "transform cannot read: deploy a transform as new as the extract that wrote it"
        )
    tombstones = kind == layout.BATCH_TOMBSTONES
    try:
        return Batch(
            entry["manifest"],
            entry["table"],
            entry["run_id"],
            entry["committed_at"],
            tuple(entry["files"]),
            int(entry["rows"]),
            seq=int(entry["seq"]),
            mode=layout.TOMBSTONE_MODE if tombstones else str(entry.get("mode") or "incremental"),
            observed=layout.snapshot_bounds(entry),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptBatchError(f"ingestion batch log entry {seq} lacks field {exc}") from None


def _retracted(lake: Lake, batch: Batch) -> bool:
    """Whether the batch was taken back as broken (`pipeline.extract.repair`): its rows were
    extracted again into another batch, so it is consumed as empty."""
    return lake.exists(layout.retraction(batch.table, batch.run_id))


def pending_batches(lake: Lake, cursor: IngestCursor) -> tuple[list[Batch], bool]:
    """Committed batches (or their rest) not consumed yet, oldest first, at most
    `READ_AHEAD` of them; True if there may be more beyond those."""
    out = [
        replace(b, offset=cursor.partial.get(b.ref, 0))
        for b in read_batches(lake, cursor.legacy[:READ_AHEAD])
    ]
    window = READ_AHEAD - len(out)
    entries = ingest_log.batch_log(lake).read_after(cursor.through, window) if window else []
    done, seen = set(cursor.done), set()
    for entry in entries:
        batch = _from_entry(entry)
        if batch.seq in done or batch.key in seen or batch.table not in TABLES:
            continue  # consumed, or a second entry of one batch (see pipeline.ingest_log)
        seen.add(batch.key)
        if _retracted(lake, batch):
            batch = replace(batch, files=(), rows=0, mode=layout.RETRACTED_MODE)
        out.append(replace(batch, offset=cursor.partial.get(batch.ref, 0)))
    truncated = len(cursor.legacy) > READ_AHEAD or (window > 0 and len(entries) == window)
    return out, truncated or window == 0


def scan_batches(lake: Lake, table: str, batches: list[tuple[int, Batch]]) -> pl.LazyFrame:
    """The rows of `table` this run takes from the given (ordinal, batch) pairs, plus the
    `_batch` ordinal.

    Each file's schema is checked against the catalog first, so drift is a typed error
    naming the table and column rather than a confusing failure in a join; and the files
    must hold the rows the manifest promises. Columns the source added beyond the catalog
    are in the files too and are not read. A nullable catalog column a batch's files lack
    is read as NULL: the extract writes every catalog column, so such a batch predates the
    column's adoption into the catalog (docs/CONTRACTS.md, "The source and schema drift").
    Only the row groups of the run's slice are read (pyarrow's file reader: no dataset
    scan, which would import pandas).
    """
    schema = TABLES[table].arrow_schema
    frames = []
    for ordinal, batch in batches:
        rows = _read_slice(lake, table, batch, schema)
        df = pl.from_arrow(rows)
        assert isinstance(df, pl.DataFrame)
        frames.append(df.with_columns(pl.lit(ordinal, pl.Int32).alias(BATCH_COLUMN)))
    if not frames:
        empty = pl.from_arrow(empty_table(schema))
        assert isinstance(empty, pl.DataFrame)
        return empty.lazy().with_columns(pl.lit(0, pl.Int32).alias(BATCH_COLUMN))
    return pl.concat(frames, how="vertical").lazy()


def _read_slice(lake: Lake, table: str, batch: Batch, schema: pa.Schema) -> pa.Table:
    # Nullable: a NULL in a NOT NULL column is bad data for the rules to quarantine.
    loose = pa.schema([f.with_nullable(True) for f in schema])
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(_open(lake, table, key, schema)) for key in batch.files]
        total = sum(pf.metadata.num_rows for pf, _ in files)
        if total != batch.rows:
            raise CorruptBatchError(
                f"table {table!r}: the files of {batch.key} hold {total} rows but its commit "
                f"records say {batch.rows}; {repair_hint(table)}"
            )
        start, stop = batch.offset, batch.offset + batch.taken
        pieces, position = [], 0
        for key, (pf, absent) in zip(batch.files, files, strict=True):
            present = [n for n in schema.names if n not in absent]
            for group in range(pf.num_row_groups):
                n = pf.metadata.row_group(group).num_rows
                lo, hi = max(start, position), min(stop, position + n)
                if lo < hi:
                    rows = _read_group(lake, table, pf, key, group, present)
                    rows = rows.slice(lo - position, hi - lo)
                    for name in absent:  # (a column adopted after this batch: NULL)
                        field = loose.field(name)
                        rows = rows.append_column(field, pa.nulls(rows.num_rows, field.type))
                    pieces.append(rows.select(schema.names).cast(loose))
                position += n
    return pa.concat_tables(pieces) if pieces else empty_table(loose)


def _read_group(
    lake: Lake, table: str, pf: pq.ParquetFile, key: str, group: int, columns: list[str]
) -> pa.Table:
    """One row group; a lake fault on the way (S3 throttling, a truncated file) is typed."""
    try:
        return pf.read_row_group(group, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        fix = f"It is listed in a manifest of table {table!r}: {repair_hint(table)}."
        raise lake_error(exc, lake.uri(key), "reading", fix) from exc


def check_row_count(table: str, batches: list[tuple[int, Batch]], rows: int) -> None:
    """The files must hold exactly the rows their manifests promise (a truncated or replaced
    part would otherwise lose or add row versions silently)."""
    promised = sum(b.taken for _, b in batches)
    if rows != promised:
        keys = ", ".join(b.key for _, b in batches)
        raise CorruptBatchError(
            f"table {table!r}: the files of {keys} hold {rows} rows but the manifests say "
            f"{promised}; {repair_hint(table)}"
        )


def _same_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Equal types; string, large_string and string_view are one logical type (writers differ)."""
    if actual.equals(expected):
        return True
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return any(t(actual) for t in text) and any(t(expected) for t in text)


@contextlib.contextmanager
def _open(
    lake: Lake, table: str, key: str, expected: pa.Schema
) -> Iterator[tuple[pq.ParquetFile, set[str]]]:
    """The file's reader, once its schema is checked against the catalog's, and the
    nullable catalog columns it lacks."""
    fix = f"It is listed in a manifest of table {table!r}: {repair_hint(table)}."
    try:
        source = lake.fs.open_input_file(lake.path(key))
    except (OSError, pa.ArrowException) as exc:  # transient (S3), missing or broken: typed
        raise lake_error(exc, lake.uri(key), "reading", fix) from exc
    with source:
        try:
            pf = pq.ParquetFile(source)
        except (OSError, pa.ArrowException) as exc:
            raise lake_error(exc, lake.uri(key), "reading", fix) from exc
        yield pf, _check_schema(lake, table, key, pf.schema_arrow, expected)


def _check_schema(
    lake: Lake, table: str, key: str, actual: pa.Schema, expected: pa.Schema
) -> set[str]:
    """Raise for a missing required or retyped catalog column; return the nullable catalog
    columns the file lacks."""
    absent = set()
    for wanted in expected:
        idx = actual.get_field_index(wanted.name)
        if idx < 0 and wanted.nullable:
            absent.add(wanted.name)
            continue
        if idx < 0:
            raise SchemaDriftError(table, wanted.name, f"missing from {lake.uri(key)}")
        if not _same_type(actual.field(idx).type, wanted.type):
            raise SchemaDriftError(
                table,
                wanted.name,
                f"type {actual.field(idx).type} in {lake.uri(key)}, catalog says {wanted.type}",
            )
    return absent
