"""Write warehouse-shaped and quarantine Parquet with exactly the agreed Arrow schemas."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pyarrow as pa

from pipeline import layout
from pipeline.catalog import TABLES
from pipeline.errors import DataQualityError
from pipeline.lake import Lake
from pipeline.layout import OutputFiles
from pipeline.transform.quality import REASON, RULE
from pipeline.warehouse_schema import PROCESSED_TABLES, WAREHOUSE_TABLES, deletion_marks_schema

PART_ROWS = 1_000_000


def to_arrow(df: pl.DataFrame, schema: pa.Schema, table: str) -> pa.Table:
    """Cast to `schema` (time64[ns] -> time32[ms], large_string -> string, nullability).

    A null in a NOT NULL column here is a transform bug, reported with table and column.
    """
    arrow = df.select(schema.names).to_arrow()
    for field in schema:
        if not field.nullable and arrow.column(field.name).null_count:
            raise DataQualityError(
                f"warehouse table {table!r}, column {field.name!r}: "
                f"{arrow.column(field.name).null_count} null values in a NOT NULL column"
            )
    return arrow.cast(schema)


def write_warehouse_table(lake: Lake, table: str, run_id: str, df: pl.DataFrame) -> OutputFiles:
    """Parquet parts of up to `PART_ROWS` rows, encoded in parallel; no file for zero rows.

    Part keys are deterministic, so a re-run after a crash overwrites the same files.
    """
    if df.height == 0:
        return {"files": [], "rows": 0}
    arrow = to_arrow(df, PROCESSED_TABLES[table].arrow_schema, table)
    parts = -(-arrow.num_rows // PART_ROWS)
    keys = [layout.processed_part(table, run_id, i) for i in range(parts)]
    slices = [arrow.slice(i * PART_ROWS, PART_ROWS) for i in range(parts)]
    spec = PROCESSED_TABLES[table]
    # Dictionary-encoding unique ids and millisecond times only costs CPU: skip those.
    dictionary = [c for c in spec.column_names[1:] if not c.endswith("_time")]

    def write(key: str, part: pa.Table) -> None:
        lake.write_parquet(key, part, use_dictionary=dictionary)

    if parts == 1:
        write(keys[0], slices[0])
    else:  # pyarrow releases the GIL while encoding: one thread per part
        with ThreadPoolExecutor(max_workers=min(parts, os.cpu_count() or 1)) as pool:
            list(pool.map(write, keys, slices))
    return {"files": keys, "rows": arrow.num_rows}


def write_deletion_marks(lake: Lake, table: str, run_id: str, df: pl.DataFrame) -> OutputFiles:
    """One file of `table`'s deletion marks (`warehouse_schema.deletion_marks`)."""
    schema = deletion_marks_schema(WAREHOUSE_TABLES[table])
    key = layout.deletion_marks(table, run_id)
    lake.write_parquet(key, df.select(schema.names).to_arrow().cast(schema))
    return {"files": [key], "rows": df.height}


def write_quarantine(lake: Lake, source_table: str, run_id: str, df: pl.DataFrame) -> str:
    schema = TABLES[source_table].arrow_schema
    schema = pa.schema(
        [
            *(f.with_nullable(True) for f in schema),
            pa.field(RULE, pa.string()),
            pa.field(REASON, pa.string()),
        ]
    )
    key = layout.quarantine_file(source_table, run_id)
    lake.write_parquet(key, df.select(schema.names).to_arrow().cast(schema))
    return key
