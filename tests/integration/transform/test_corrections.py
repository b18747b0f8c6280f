"""Re-deliveries are compared by content: an identical one is a duplicate (nothing emitted),
one with other values for the same (id, last_updated) replaces the version held."""

from __future__ import annotations

import json

import pytest

from pipeline import layout
from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.transform import transform
from tests.lake_builders import read_outputs, row, write_batch, write_lookups


@pytest.fixture
def lakes(tmp_path) -> tuple[Lake, Lake]:
    return Lake(str(tmp_path / "ingest")), Lake(str(tmp_path / "processed"))


def run(lakes: tuple[Lake, Lake], run_id: str):
    return transform(run_id, Settings(ingest_url=lakes[0].url, processed_url=lakes[1].url))


def order(units: int) -> dict:
    return row("sales_order", sales_order_id=5, units_sold=units)


def test_fact_redeliveries_identical_are_dropped_changed_ones_replace(lakes) -> None:
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    write_batch(ingest, "sales_order", "e1", [order(10)])
    assert run(lakes, "t1").rows_out["fact_sales_order"] == 1

    write_batch(ingest, "sales_order", "e2", [order(10)])  # the overlap window again
    same = run(lakes, "t2")
    assert same.duplicates["sales_order"] == 1 and same.corrected["sales_order"] == 0
    assert same.rows_out["fact_sales_order"] == 0

    write_batch(ingest, "sales_order", "e3", [order(11)])  # fixed in place, same version
    fixed = run(lakes, "t3")
    assert fixed.corrected["sales_order"] == 1 and fixed.duplicates["sales_order"] == 0
    assert read_outputs(processed, "t3")["fact_sales_order"]["units_sold"].to_list() == [11]

    write_batch(ingest, "sales_order", "e4", [order(11)])  # the fixed values again
    assert run(lakes, "t4").duplicates["sales_order"] == 1
    assert json.loads(processed.read_bytes(layout.processed_manifest("t4")))["corrected"] == {
        "sales_order": 0
    }


def test_within_a_run_the_latest_batch_wins_a_version(lakes) -> None:
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    write_batch(ingest, "sales_order", "e1", [order(10)])
    write_batch(ingest, "sales_order", "e2", [order(12)])  # committed later: a backfill
    result = run(lakes, "t1")
    assert result.duplicates["sales_order"] == 1
    assert read_outputs(processed, "t1")["fact_sales_order"]["units_sold"].to_list() == [12]


def test_lookup_redelivery_with_other_values_rebuilds_its_dimension_row(lakes) -> None:
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    run(lakes, "t1")
    write_batch(ingest, "staff", "e2", [row("staff")])  # identical: nothing to emit
    same = run(lakes, "t2")
    assert same.duplicates["staff"] == 1 and same.rows_out["dim_staff"] == 0
    write_batch(ingest, "staff", "e3", [row("staff", first_name="Fixed")])
    fixed = run(lakes, "t3")
    assert fixed.corrected["staff"] == 1
    dim = read_outputs(processed, "t3")["dim_staff"]
    assert dim.select("staff_id", "first_name").rows() == [(1, "Fixed")]


def test_fingerprints_of_another_hash_function_are_forgotten_once(lakes) -> None:
    """State whose fingerprints another hash function wrote (a Polars upgrade, another CPU
    architecture, or state from before fingerprints): every seen bucket is rewritten with
    unknown fingerprints, the next re-delivery is emitted for the load to compare, and the
    one after that is a duplicate again."""
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    write_batch(
        ingest,
        "sales_order",
        "e1",
        [order(10), row("sales_order", sales_order_id=70_000)],  # two seen buckets
    )
    run(lakes, "t1")
    head = json.loads(processed.read_bytes(layout.STATE_HEAD))
    head["current"]["content"]["seen/sales_order"] = "another-hash"
    processed.write_bytes(layout.STATE_HEAD, json.dumps(head).encode())

    write_batch(ingest, "sales_order", "e2", [order(10)])
    unknown = run(lakes, "t2")
    assert unknown.corrected["sales_order"] == 1  # could not compare: the load decides
    files = json.loads(processed.read_bytes(layout.STATE_HEAD))["current"]
    assert files["content"]["seen/sales_order"].startswith("polars-row-hash:")
    rewritten = [k for n, k in files["files"].items() if n.startswith("seen/sales_order/")]
    assert len(rewritten) == 2 and all(k.endswith("run=t2.parquet") for k in rewritten)

    write_batch(ingest, "sales_order", "e3", [order(10)])
    assert run(lakes, "t3").duplicates["sales_order"] == 1
