"""Processed batches as the load finds them: validation, batch order, the walk back through
the batch log to the ledger (no database)."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.errors import CorruptBatchError
from pipeline.lake import Lake
from pipeline.load.batches import (
    check_output,
    legacy_pending_batches,
    parse_manifest,
    pending_batches,
)
from tests.processed_builders import commit, star_batch, write_batch

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


def _ledger(loaded: set[str], asked: list[str] | None = None):
    def lookup(run_ids: list[str]) -> set[str]:
        if asked is not None:
            asked.extend(run_ids)
        return loaded & set(run_ids)

    return lookup


def test_pending_batches_walk_the_log_back_to_the_ledger_and_sort_by_commit_time(tmp_path) -> None:
    lake = Lake(str(tmp_path))
    for name, minutes in [("z", 0), ("y", 1), ("b", 5), ("a", 5)]:
        write_batch(lake, name, {"dim_staff": []}, committed_at=T0 + dt.timedelta(minutes=minutes))
    lake.write_bytes("fact_payment/run=orphan/part-00000.parquet", b"not listed anywhere")
    asked: list[str] = []
    assert [b.run_id for b in pending_batches(lake, _ledger({"z", "y"}, asked))] == ["a", "b"]
    assert "z" not in asked  # the walk stopped at the first loaded batch, y
    assert pending_batches(lake, _ledger({"z", "y", "a", "b"})) == []
    assert [b.run_id for b in pending_batches(lake, _ledger(set()))] == ["z", "y", "a", "b"]


def test_batches_committed_before_the_log_are_found_by_listing(tmp_path) -> None:
    lake = Lake(str(tmp_path))
    for name, minutes in [("z", 0), ("b", 5), ("a", 5), ("loaded", 1)]:
        commit(lake, name, {"dim_staff": {"files": [], "rows": 0}},
               committed_at=T0 + dt.timedelta(minutes=minutes), legacy=True)  # fmt: skip
    lake.write_json("_manifests/nested/x.json", {})  # not a manifest key
    assert [b.run_id for b in legacy_pending_batches(lake, _ledger({"loaded"}))] == ["z", "a", "b"]
    # the first batch committed with the log builds on them: the load still finds them
    lake.write_json("_state/head.json", {"current": {"run_id": "loaded"}})
    write_batch(lake, "new", {"dim_staff": []}, committed_at=T0 + dt.timedelta(minutes=9))
    assert [b.run_id for b in pending_batches(lake, _ledger({"loaded"}))] == ["z", "a", "b", "new"]
    assert [b.run_id for b in pending_batches(lake, _ledger({"loaded", "new"}))] == []


def test_check_output_reads_footers_only_and_counts_rows(tmp_path) -> None:
    lake = Lake(str(tmp_path))
    write_batch(lake, "r1", {"fact_payment": star_batch(T0)["fact_payment"]}, parts=2)
    batch = pending_batches(lake, _ledger(set()))[0]
    check_output(lake, batch, batch.outputs["fact_payment"])
    wrong = batch.outputs["fact_payment"].__class__(
        batch.outputs["fact_payment"].table, batch.outputs["fact_payment"].files[:1], 5
    )
    with pytest.raises(CorruptBatchError, match="hold 3 rows, the manifest says 5"):
        check_output(lake, batch, wrong)
