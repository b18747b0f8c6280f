"""The report summaries the load keeps, through the load benchmark's own batches.

A first load of new orders (every row aggregated in the client), then an incremental
batch of new orders of which a third are new versions of loaded orders with random
last_updated (some newer: they supersede; some older: they arrive superseded), and some
dimension rows changed (the upsert moves them to the new batch's lineage). After each
load every group of every summary must equal hand-written SQL over the current rows. Run
twice: with the client tally, and with it forced inexact (int64 cents could overflow), so
the SQL fallback for the appended rows is proven too.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from benchmarks.load_bench import build_lake
from pipeline.lake import Lake
from pipeline.load import load, summaries
from pipeline.load.migrations import migrate
from pipeline.settings import Settings
from tests.integration.report.summary_check import assert_summaries_exact

pytestmark = pytest.mark.postgres

ROWS = 3000


def _rename_half_the_designs(lake: Path, run_id: str) -> None:
    key = f"dim_design/run={run_id}/part-00000.parquet"
    table = Lake(str(lake)).read_parquet([key])
    names = table.column("design_name").to_pylist()
    renamed = [f"{n} v2" if i % 2 else n for i, n in enumerate(names)]
    index = table.column_names.index("design_name")
    table = table.set_column(index, table.field(index), pa.array(renamed, pa.string()))
    Lake(str(lake)).write_parquet(key, table)


@pytest.mark.parametrize("tally", ["client", "sql"])
def test_summaries_equal_the_current_rows_after_a_first_and_a_superseding_load(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tally: str
) -> None:
    if tally == "sql":
        monkeypatch.setattr(summaries, "_SAFE", 1)  # every product "could overflow"
    migrate(pg_dsn)
    settings = Settings(processed_url=str(tmp_path), warehouse_dsn=pg_dsn)
    build_lake(str(tmp_path), ROWS)
    assert load("first", settings).rows["fact_sales_order"] == ROWS
    assert_summaries_exact(pg_dsn)

    build_lake(str(tmp_path), ROWS, "bench2", first_id=ROWS + 1, superseding=ROWS // 3)
    _rename_half_the_designs(tmp_path, "bench2")
    second = load("second", settings)
    assert second.rows["fact_sales_order"] == ROWS and second.rows["dim_design"] > 0
    assert_summaries_exact(pg_dsn)
