"""Extract into an S3 lake (moto in server mode, reached over HTTP by pyarrow and boto3)."""

from __future__ import annotations

import pytest

from pipeline.extract import extract_table, watermark
from pipeline.settings import Settings
from tests.integration.extract.helpers import add_currencies, source, source_versions

__all__ = ["source"]  # fixture


@pytest.fixture
def s3_lake(s3_bucket: str, s3_settings: Settings) -> Settings:
    return s3_settings.replace(ingest_url=f"s3://{s3_bucket}/zone")


def test_extract_commits_to_s3_and_replays(source: str, s3_lake: Settings) -> None:
    add_currencies(source, [f"2024-11-04 09:00:{s:02d}.000" for s in range(5)])
    settings = s3_lake.replace(source_dsn=source, extract_max_rows=4)
    first = extract_table("currency", "r1", settings)
    second = extract_table("currency", first.next_run_id or "", settings)
    replay = extract_table("currency", "r1", settings)

    lake = settings.ingest_lake()
    assert (first.rows, first.more, second.rows, second.more) == (4, True, 2, False)
    assert replay.status == "replayed"
    got = set()
    for result in (first, second):
        data = lake.read_parquet(lake.read_json(result.manifest)["files"])
        ids = data.column("currency_id").to_pylist()
        stamps = data.column("last_updated").to_pylist()
        got |= {(i, s.isoformat(timespec="milliseconds")) for i, s in zip(ids, stamps, strict=True)}
    assert got == source_versions(source)
    mark = watermark.load(lake, "currency")
    assert mark is not None and (mark.seq, mark.more) == (2, False)


def test_s3_create_if_absent_is_atomic(s3_lake: Settings) -> None:
    """The conditional put the watermark and manifests rely on really refuses a second write."""
    lake = s3_lake.ingest_lake()
    assert lake.create_json("_state/x/watermark-0000000001.json", {"a": 1})
    assert not lake.create_json("_state/x/watermark-0000000001.json", {"a": 2})
    assert lake.read_json("_state/x/watermark-0000000001.json") == {"a": 1}
