"""Tombstone batches become deletion marks: set for every warehouse table of the deleted
source row, cleared when a later snapshot finds the row again, kept when an earlier
snapshot's batch commits late."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipeline import ingest_log, layout
from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.transform import transform
from tests.lake_builders import row, write_batch, write_lookups, write_tombstones


@pytest.fixture
def lakes(tmp_path) -> tuple[Lake, Lake]:
    return Lake(str(tmp_path / "ingest")), Lake(str(tmp_path / "processed"))


def run(lakes: tuple[Lake, Lake], run_id: str):
    return transform(run_id, Settings(ingest_url=lakes[0].url, processed_url=lakes[1].url))


def marks(processed: Lake, run_id: str) -> dict[str, list[tuple]]:
    manifest = processed.read_json(layout.processed_manifest(run_id))
    out = {}
    for table, files in manifest.get("deletes", {}).items():
        df = pl.read_parquet(processed.path(files["files"][0]))
        out[table] = sorted(df.rows())
    return out


AT = dt.datetime(2024, 11, 5, 12)


def test_tombstones_mark_then_a_later_snapshot_clears(lakes) -> None:
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    write_batch(ingest, "sales_order", "e1", [row("sales_order", sales_order_id=i) for i in (1, 2)])
    write_batch(ingest, "transaction", "e1", [row("transaction", transaction_id=7)])
    run(lakes, "t1")

    write_tombstones(ingest, "sales_order", "r1.tombstones", [2])
    write_tombstones(ingest, "transaction", "r1.tombstones", [7])
    deleted = run(lakes, "t2")
    assert deleted.deleted["sales_order"] == {"deleted": 1, "restored": 0}
    assert marks(processed, "t2") == {
        "fact_sales_order": [(2, AT)],
        "dim_transaction": [(7, AT)],
    }

    # Found again by a later snapshot (a reconciliation re-extracted the restored row).
    write_batch(ingest, "sales_order", "r2.reconcile", [row("sales_order", sales_order_id=2)])
    restored = run(lakes, "t3")
    assert restored.deleted["sales_order"] == {"deleted": 0, "restored": 1}
    assert marks(processed, "t3") == {"fact_sales_order": [(2, None)]}
    assert restored.rows_out["fact_sales_order"] == 0  # the version itself was held already

    run(lakes, "t4")  # nothing new: nothing marked


def test_a_batch_from_an_earlier_snapshot_does_not_undo_a_delete(lakes) -> None:
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    run(lakes, "t1")
    early = write_batch(
        ingest, "sales_order", "slow", [row("sales_order", sales_order_id=5)], commit=False
    )
    write_tombstones(ingest, "sales_order", "r1.tombstones", [5])
    # The slow extraction's snapshot came first; it commits after the tombstone.
    committed = "2020-01-01T00:00:00.000000"
    manifest = {
        "table": "sales_order",
        "run_id": "slow",
        "files": [],
        "rows": 1,
        "window": {"since": None, "until": None},
        "snapshot": {"from": committed, "to": committed},
        "mode": "incremental",
        "committed_at": "2031-01-01T00:00:00.000000+00:00",
    }
    [part] = [k for k in ingest.list("sales_order/") if "/slow/" in k]
    manifest["files"] = [part]
    ingest.write_json(early, manifest)
    ingest_log.log_batch(ingest, early, manifest, replayed=False)  # type: ignore[arg-type]
    result = run(lakes, "t2")
    assert result.deleted["sales_order"] == {"deleted": 1, "restored": 0}
    # The late row is emitted, and marked deleted with it (the load applies marks last).
    assert result.rows_out["fact_sales_order"] == 1
    assert marks(processed, "t2") == {"fact_sales_order": [(5, AT)]}

    write_batch(
        ingest, "sales_order", "later", [row("sales_order", sales_order_id=5, units_sold=3)]
    )
    again = run(lakes, "t3")  # a new version, from a later snapshot: the row exists again
    assert again.deleted["sales_order"] == {"deleted": 0, "restored": 1}
