"""Every warehouse column holds what docs/LINEAGE.md says it holds, on the real snapshot.

The lineage in `pipeline.warehouse_schema` drives the transform; this test checks the
output against the source independently: each column is recomputed from the source table
(joined through `via` where the lineage says so) and compared row by row.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from pipeline.catalog import TABLES
from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.transform import transform
from pipeline.warehouse_schema import (
    COPIED,
    DATE_PART,
    PARSED_DATE,
    TIME_PART,
    WAREHOUSE_TABLES,
    lineage_markdown,
)
from tests.conftest import SNAPSHOT_DIR
from tests.lake_builders import read_outputs, write_snapshot

DOCS = Path(__file__).resolve().parents[3] / "docs" / "LINEAGE.md"


def _expected(source: pl.DataFrame, column: str, how: str) -> pl.Expr:
    value = pl.col(column)
    return {
        COPIED: value,
        DATE_PART: value.dt.date(),
        TIME_PART: value.dt.time(),
        PARSED_DATE: value.str.to_date("%Y-%m-%d"),
    }[how]


@pytest.fixture(scope="module")
def snapshot_outputs(tmp_path_factory) -> tuple[dict[str, pl.DataFrame], dict]:
    snapshot_dir = os.path.abspath(SNAPSHOT_DIR)
    if not os.path.isdir(snapshot_dir):
        pytest.skip(f"reference snapshot not found at {snapshot_dir}")
    root = tmp_path_factory.mktemp("lineage")
    ingest, processed = Lake(str(root / "ingest")), Lake(str(root / "processed"))
    write_snapshot(ingest, snapshot_dir, "snap")
    result = transform("t1", Settings(ingest_url=ingest.url, processed_url=processed.url))
    assert result.status == "ok" and not result.more
    sources = {t: pl.read_parquet(Path(snapshot_dir) / f"{t}.parquet") for t in TABLES}
    return read_outputs(processed, "t1"), sources


@pytest.mark.parametrize("name", [n for n in WAREHOUSE_TABLES if n != "dim_date"])
def test_each_column_is_its_documented_source_value(name: str, snapshot_outputs) -> None:
    outputs, sources = snapshot_outputs
    table = WAREHOUSE_TABLES[name]
    assert table.source is not None
    out = outputs[name]
    assert out.height > 0
    source = sources[table.source]
    pk = TABLES[table.source].primary_key
    out_key = next(c.name for c in table.columns if c.lineage and c.lineage.column == pk)
    checked = 0
    for column in table.columns:
        lineage = column.lineage
        assert lineage is not None and lineage.table is not None and lineage.column is not None
        if lineage.how not in (COPIED, DATE_PART, TIME_PART, PARSED_DATE):
            continue  # derived by a rule of its own (ISO names): tested with the dimension
        rows = source.select(
            pl.col(pk).cast(pl.Int64).alias("__key"), *TABLES[table.source].column_names
        )
        if lineage.via:
            fk = lineage.via.split(".", 1)[1]
            lookup = sources[lineage.table]
            lookup_pk = TABLES[lineage.table].primary_key
            rows = rows.join(
                lookup.select(
                    pl.col(lookup_pk).cast(rows.schema[fk]).alias(fk),
                    pl.col(lineage.column).alias("__looked_up"),
                ),
                on=fk,
                how="left",
            ).with_columns(pl.col("__looked_up").alias(lineage.column))
        expected = rows.select("__key", _expected(rows, lineage.column, lineage.how).alias("want"))
        got = out.select(
            pl.col(out_key).cast(pl.Int64).alias("__key"), pl.col(column.name).alias("got")
        )
        if table.is_fact:  # one version per source row in a single snapshot
            assert got["__key"].is_unique().all()
        joined = got.join(expected, on="__key", how="left")
        want, have = joined["want"], joined["got"]
        if want.dtype.is_decimal() or have.dtype.is_decimal() or want.dtype.is_float():
            want, have = want.cast(pl.Float64).round(2), have.cast(pl.Float64).round(2)
        elif want.dtype != have.dtype:
            want = want.cast(have.dtype)
        mismatched = joined.filter(~want.eq_missing(have))
        assert mismatched.height == 0, f"{name}.{column.name}: {mismatched.head(3)}"
        checked += 1
    assert checked >= len(table.columns) - 1


def test_the_lineage_doc_is_generated_from_the_schema() -> None:
    assert lineage_markdown() in DOCS.read_text(), "run `python -m pipeline.warehouse_schema`"
