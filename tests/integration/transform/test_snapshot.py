"""The real November 2024 snapshot through the transform: exact star sizes, nothing rejected."""

from __future__ import annotations

import pyarrow.parquet as pq

from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.transform import transform
from pipeline.warehouse_schema import WAREHOUSE_TABLES
from tests.lake_builders import write_snapshot

EXPECTED_ROWS = {
    "fact_sales_order": 11_187,
    "fact_purchase_order": 4_649,
    "fact_payment": 15_836,
    "dim_staff": 20,
    "dim_location": 30,
    "dim_design": 473,
    "dim_currency": 3,
    "dim_counterparty": 20,
    "dim_transaction": 15_836,
    "dim_payment_type": 4,
}


def test_snapshot_gives_the_expected_stars(snapshot_dir, tmp_path):
    ingest, processed = Lake(str(tmp_path / "in")), Lake(str(tmp_path / "out"))
    write_snapshot(ingest, snapshot_dir, "snap")
    result = transform("t1", Settings(ingest_url=ingest.url, processed_url=processed.url))

    assert result.status == "ok"
    assert {t: result.rows_out[t] for t in EXPECTED_ROWS} == EXPECTED_ROWS
    assert sum(result.quarantined.values()) == 0
    assert sum(result.duplicates.values()) == 0
    assert not processed.list("_quarantine")
    manifest = processed.read_json("_manifests/t1.json")
    for name, spec in WAREHOUSE_TABLES.items():
        files = manifest["outputs"][name]["files"]
        assert files, name
        for key in files:
            schema = pq.read_schema(processed.path(key)).remove_metadata()
            assert schema.equals(spec.arrow_schema), (name, schema)
    # Every date a fact references is in dim_date.
    dates = set(
        pq.read_table(processed.path(manifest["outputs"]["dim_date"]["files"][0]))
        .column("date_id")
        .to_pylist()
    )
    for fact in ("fact_sales_order", "fact_purchase_order", "fact_payment"):
        table = processed.read_parquet(manifest["outputs"][fact]["files"])
        for col in table.column_names:
            if col.endswith("_date"):
                assert set(table.column(col).drop_null().to_pylist()) <= dates, (fact, col)


def test_snapshot_delivered_again_emits_nothing(snapshot_dir, tmp_path):
    """A full re-extract of unchanged data: every row is a duplicate, nothing is emitted."""
    ingest, processed = Lake(str(tmp_path / "in")), Lake(str(tmp_path / "out"))
    write_snapshot(ingest, snapshot_dir, "snap1")
    transform("t1", Settings(ingest_url=ingest.url, processed_url=processed.url))
    write_snapshot(ingest, snapshot_dir, "snap2")
    again = transform("t2", Settings(ingest_url=ingest.url, processed_url=processed.url))
    assert again.status == "ok"
    assert sum(again.rows_out.values()) == 0
    assert again.duplicates == again.rows_in
    assert sum(again.quarantined.values()) == 0
