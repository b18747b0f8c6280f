"""The transform against S3 (a moto server): the same code path as in AWS, via pyarrow.fs,
a pyarrow dataset scan and S3's conditional PutObject for the lease and the manifest."""

from __future__ import annotations

from pipeline.settings import Settings
from pipeline.transform import state as transform_state
from pipeline.transform import transform
from tests.lake_builders import read_outputs, row, write_batch, write_lookups


def test_transform_between_s3_buckets(s3_bucket: str, s3_settings: Settings, monkeypatch) -> None:
    monkeypatch.setattr(transform_state, "BUCKET_IDS", 2)  # ids 1..5: state buckets 0..2
    settings = s3_settings.replace(
        ingest_url=f"s3://{s3_bucket}/ingestion", processed_url=f"s3://{s3_bucket}/processed"
    )
    ingest, processed = settings.ingest_lake(), settings.processed_lake()
    write_lookups(ingest, "e1")
    write_batch(
        ingest,
        "sales_order",
        "e1",
        [row("sales_order", sales_order_id=i) for i in range(1, 6)],
        parts=2,
    )
    write_batch(ingest, "sales_order", "e2", [row("sales_order", sales_order_id=5)])

    result = transform("t1", settings)
    assert result.status == "ok"
    assert result.rows_out["fact_sales_order"] == 5
    assert result.duplicates["sales_order"] == 1
    out = read_outputs(processed, "t1")
    assert sorted(out["fact_sales_order"]["sales_order_id"].to_list()) == [1, 2, 3, 4, 5]
    assert out["dim_currency"]["currency_name"].to_list() == ["Pound Sterling"]
    assert not processed.exists("_locks/transform.json")

    before = processed.list()
    again = transform("t1", settings)
    assert again.status == "replayed"
    assert processed.list() == before
    idle = transform("t2", settings)
    assert idle.status == "nothing_to_do"

    # a later batch reads several state buckets (in parallel on S3) and drops re-deliveries
    write_batch(
        ingest,
        "sales_order",
        "e3",
        [row("sales_order", sales_order_id=i) for i in (1, 3, 5)]
        + [row("sales_order", sales_order_id=4, at="2024-11-05 09:00:00.000")],
    )
    delta = transform("t3", settings)
    assert delta.duplicates["sales_order"] == 3 and delta.rows_out["fact_sales_order"] == 1
    assert read_outputs(processed, "t3")["fact_sales_order"]["sales_order_id"].to_list() == [4]
