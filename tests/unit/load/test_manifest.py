"""Processed manifests as the load reads them: validation and batch order (no database)."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.errors import CorruptBatchError
from pipeline.lake import Lake
from pipeline.load.batches import check_output, parse_manifest, pending_batches
from tests.processed_builders import star_batch, write_batch

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)


def _doc(**changes: object) -> dict:
    doc = {
        "run_id": "r1",
        "committed_at": "2026-01-02T03:04:05.678901+00:00",
        "outputs": {"dim_staff": {"files": ["dim_staff/run=r1/part-00000.parquet"], "rows": 3}},
    }
    doc.update(changes)
    return doc


def test_a_valid_manifest() -> None:
    batch = parse_manifest(_doc(), "_manifests/r1.json")
    assert batch.run_id == "r1"
    assert batch.committed_at == dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    assert batch.outputs["dim_staff"].rows == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"committed_at": "yesterday"}, "malformed"),
        ({"outputs": {"dim_nope": {"files": [], "rows": 0}}}, "unknown warehouse table"),
        ({"outputs": {"dim_staff": {"files": ["s3://b/x.parquet"], "rows": 1}}}, "relative"),
        ({"outputs": {"dim_staff": {"rows": 1}}}, "malformed"),
        ({"run_id": "other"}, "names run_id"),
    ],
)
def test_malformed_manifests_are_corrupt_batches(changes: dict, message: str) -> None:
    with pytest.raises(CorruptBatchError, match=message):
        parse_manifest(_doc(**changes), "_manifests/r1.json")


def test_naive_commit_times_are_utc() -> None:
    batch = parse_manifest(_doc(committed_at="2026-01-02T03:04:05"), "_manifests/r1.json")
    assert batch.committed_at.tzinfo == dt.UTC


def test_pending_batches_skip_loaded_ones_and_sort_by_commit_time_then_run_id(tmp_path) -> None:
    lake = Lake(str(tmp_path))
    for name, minutes in [("z", 0), ("b", 5), ("a", 5), ("loaded", 1)]:
        write_batch(lake, name, {"dim_staff": []}, committed_at=T0 + dt.timedelta(minutes=minutes))
    lake.write_bytes("fact_payment/run=orphan/part-00000.parquet", b"not listed anywhere")
    lake.write_json("_manifests/nested/x.json", {})  # not a manifest key
    assert [b.run_id for b in pending_batches(lake, {"loaded"})] == ["z", "a", "b"]


def test_check_output_reads_footers_only_and_counts_rows(tmp_path) -> None:
    lake = Lake(str(tmp_path))
    write_batch(lake, "r1", {"fact_payment": star_batch(T0)["fact_payment"]}, parts=2)
    batch = pending_batches(lake, set())[0]
    check_output(lake, batch, batch.outputs["fact_payment"])
    wrong = batch.outputs["fact_payment"].__class__(
        batch.outputs["fact_payment"].table, batch.outputs["fact_payment"].files[:1], 5
    )
    with pytest.raises(CorruptBatchError, match="hold 3 rows, the manifest says 5"):
        check_output(lake, batch, wrong)
