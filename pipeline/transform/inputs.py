"""Find the committed ingestion batches not consumed yet and scan their files lazily.

Only manifest-listed files exist for the transform (docs/CONTRACTS.md): parts left by a
crashed extract are never read. Batches are ordered by `(committed_at, run_id)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import layout
from pipeline.catalog import TABLES
from pipeline.errors import CorruptBatchError, SchemaDriftError
from pipeline.lake import Lake, lake_error

BATCH_COLUMN = "_batch"  # ordinal of the batch in this run: later batches win ties


@dataclass(frozen=True)
class Batch:
    key: str  # ingestion manifest key
    table: str
    run_id: str
    committed_at: str
    files: tuple[str, ...]
    rows: int


def list_manifest_keys(lake: Lake) -> list[str]:
    return [k for k in lake.list(layout.ingestion_manifests()) if k.endswith(".json")]


def read_batches(lake: Lake, keys: list[str]) -> list[Batch]:
    """Read the given manifests, skipping tables the catalog does not know, in commit order."""
    batches = []
    for key in keys:
        m = lake.read_json(key)
        try:
            table, run_id, committed_at = m["table"], m["run_id"], m["committed_at"]
            files, rows = tuple(m["files"]), int(m["rows"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptBatchError(f"ingestion manifest {key} lacks field {exc}") from None
        if table not in TABLES:
            continue
        batches.append(Batch(key, table, run_id, committed_at, files, rows))
    return sorted(batches, key=lambda b: (b.committed_at, b.run_id))


def scan_batches(lake: Lake, table: str, batches: list[tuple[int, Batch]]) -> pl.LazyFrame:
    """All rows of `table` in the given (ordinal, batch) pairs, plus the `_batch` ordinal.

    Each file's schema is checked against the catalog first, so drift is a typed error
    naming the table and column rather than a confusing failure in a join. Columns the
    source added beyond the catalog are in the files too and are not read. A nullable
    catalog column a batch's files lack is read as NULL: the extract writes every catalog
    column, so such a batch predates the column's adoption into the catalog
    (docs/CONTRACTS.md, "The source and schema drift").
    """
    schema = TABLES[table].arrow_schema
    frames = []
    for ordinal, batch in batches:
        absent: set[str] = set()
        for key in batch.files:
            absent |= _check_schema(lake, table, key, schema)
        if not batch.files:
            continue
        paths = [lake.path(k) for k in batch.files]
        if lake.is_local:
            lf = pl.scan_parquet(paths)
        else:
            import pyarrow.dataset as pads  # only for S3; its import pulls in pandas if present

            lf = pl.scan_pyarrow_dataset(
                pads.dataset(paths, schema=schema, filesystem=lake.fs, format="parquet")
            )
        if absent:
            empty = pl.from_arrow(schema.empty_table())
            assert isinstance(empty, pl.DataFrame)
            lf = lf.with_columns(pl.lit(None, empty.schema[n]).alias(n) for n in sorted(absent))
        lf = lf.select(schema.names)  # an added source column is the extract's to report
        frames.append(lf.with_columns(pl.lit(ordinal, pl.Int32).alias(BATCH_COLUMN)))
    if not frames:
        empty = pl.from_arrow(schema.empty_table())
        assert isinstance(empty, pl.DataFrame)
        return empty.lazy().with_columns(pl.lit(0, pl.Int32).alias(BATCH_COLUMN))
    return pl.concat(frames, how="vertical")


def check_row_count(table: str, batches: list[tuple[int, Batch]], rows: int) -> None:
    """The files must hold exactly the rows their manifests promise (a truncated or replaced
    part would otherwise lose or add row versions silently)."""
    promised = sum(b.rows for _, b in batches)
    if rows != promised:
        keys = ", ".join(b.key for _, b in batches)
        raise CorruptBatchError(
            f"table {table!r}: the files of {keys} hold {rows} rows but the manifests say "
            f"{promised}. Re-extract the table."
        )


def _same_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Equal types; string, large_string and string_view are one logical type (writers differ)."""
    if actual.equals(expected):
        return True
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return any(t(actual) for t in text) and any(t(expected) for t in text)


def _check_schema(lake: Lake, table: str, key: str, expected: pa.Schema) -> set[str]:
    """Raise for a missing required or retyped catalog column; return the nullable catalog
    columns the file lacks."""
    absent = set()
    try:
        actual = pq.read_schema(lake.path(key), filesystem=lake.fs)
    except (OSError, pa.ArrowException) as exc:  # transient (S3) or a broken file, typed
        fix = f"It is listed in a manifest of table {table!r}: re-extract the table."
        raise lake_error(exc, lake.uri(key), "reading", fix) from exc
    for field in expected:
        idx = actual.get_field_index(field.name)
        if idx < 0 and field.nullable:
            absent.add(field.name)
            continue
        if idx < 0:
            raise SchemaDriftError(table, field.name, f"missing from {lake.uri(key)}")
        if not _same_type(actual.field(idx).type, field.type):
            raise SchemaDriftError(
                table,
                field.name,
                f"type {actual.field(idx).type} in {lake.uri(key)}, catalog says {field.type}",
            )
    return absent
