"""The transform against S3 (a moto server): the same code path as in AWS, via pyarrow.fs,
a pyarrow dataset scan and S3's conditional PutObject for the lease and the manifest."""

from __future__ import annotations

from pipeline.lake import Lake
from pipeline.transform import transform
from tests.lake_builders import read_outputs, row, write_batch, write_lookups


def test_transform_between_s3_buckets(s3_bucket: str) -> None:
    ingest = Lake(f"s3://{s3_bucket}/ingestion")
    processed = Lake(f"s3://{s3_bucket}/processed")
    write_lookups(ingest, "e1")
    write_batch(
        ingest,
        "sales_order",
        "e1",
        [row("sales_order", sales_order_id=i) for i in range(1, 6)],
        parts=2,
    )
    write_batch(ingest, "sales_order", "e2", [row("sales_order", sales_order_id=5)])

    result = transform("t1", ingest_url=ingest.url, processed_url=processed.url)
    assert result.status == "ok"
    assert result.rows_out["fact_sales_order"] == 5
    assert result.duplicates["sales_order"] == 1
    out = read_outputs(processed, "t1")
    assert sorted(out["fact_sales_order"]["sales_order_id"].to_list()) == [1, 2, 3, 4, 5]
    assert out["dim_currency"]["currency_name"].to_list() == ["Pound Sterling"]
    assert not processed.exists("_locks/transform.json")

    before = processed.list()
    again = transform("t1", ingest_url=ingest.url, processed_url=processed.url)
    assert again.status == "replayed"
    assert processed.list() == before
    idle = transform("t2", ingest_url=ingest.url, processed_url=processed.url)
    assert idle.status == "nothing_to_do"
