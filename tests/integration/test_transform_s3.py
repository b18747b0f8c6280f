"""The transform against S3 (a moto server): the same code path as in AWS, via pyarrow.fs,
a pyarrow dataset scan and S3's conditional PutObject for the lease and the manifest."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from pipeline.lake import Lake
from pipeline.transform import transform
from tests.lake_builders import read_outputs, row, write_batch, write_lookups


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    for key, value in {
        "AWS_ENDPOINT_URL_S3": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-2",
        "AWS_REGION": "eu-west-2",
    }.items():
        mp.setenv(key, value)
    try:
        yield url
    finally:
        mp.undo()
        server.stop()


def test_transform_between_s3_buckets(s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("ingest-t", "processed-t"):
        s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"}
        )
    ingest, processed = Lake("s3://ingest-t/zone"), Lake("s3://processed-t/zone")
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
