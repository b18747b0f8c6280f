"""A transform's cost does not grow with history: it finds new batches from its cursor in
the ingestion batch log (no listing), takes a batch bigger than its row cap in slices, and
a processed zone written by the version before the cursor is migrated on first use."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import polars as pl
import pytest

from pipeline import layout
from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.transform import transform
from tests.lake_builders import read_outputs, row, write_batch, write_lookups


@pytest.fixture
def lakes(tmp_path) -> tuple[Lake, Lake]:
    return Lake(str(tmp_path / "ingest")), Lake(str(tmp_path / "processed"))


def run(lakes: tuple[Lake, Lake], run_id: str, **knobs: Any):
    settings = Settings(ingest_url=lakes[0].url, processed_url=lakes[1].url, **knobs)
    return transform(run_id, settings)


def sales(ids: range, at: str = "2024-11-04 09:00:00.000") -> list[dict[str, Any]]:
    return [row("sales_order", sales_order_id=i, at=at) for i in ids]


def test_runs_find_new_batches_from_their_cursor_without_listing(lakes, monkeypatch) -> None:
    ingest, _ = lakes
    write_lookups(ingest, "e0")
    run(lakes, "t0")  # (a new processed zone lists the ingestion manifests once)
    for n in range(1, 6):
        write_batch(ingest, "sales_order", f"e{n}", sales(range(n * 10, n * 10 + 3)))
        run(lakes, f"t{n}")
    keys = []
    real = Lake.read_bytes_or_none
    monkeypatch.setattr(Lake, "read_bytes_or_none", lambda self, k: keys.append(k) or real(self, k))
    monkeypatch.setattr(Lake, "list_with_times", lambda self, p="": pytest.fail(f"listed {p!r}"))
    assert run(lakes, "idle").status == "nothing_to_do"
    ingest_reads = [k for k in keys if k.startswith("_log/")]
    assert ingest_reads == ["_log/batches/head.json", "_log/batches/000000000014.json"]
    write_batch(ingest, "sales_order", "e9", sales(range(90, 92)))
    keys.clear()
    result = run(lakes, "t9")
    assert result.inputs == ["_manifests/sales_order/e9.json"] and not result.more
    assert not any(k.startswith("_manifests/") and "/sales_order/" in k for k in keys)


def test_a_batch_bigger_than_the_row_cap_is_taken_in_slices(lakes, tmp_path) -> None:
    """Same warehouse rows as one big run; every slice's run reads only its rows."""
    ingest, processed = lakes
    write_lookups(ingest, "e0")
    write_batch(ingest, "sales_order", "e1", sales(range(1, 26)), parts=3)
    rounds = []
    for n in range(1, 10):
        result = run(lakes, f"t{n}", transform_max_rows=10)
        rounds.append(result)
        if not result.more:
            break
    # t1: the 8 lookup rows, then slices of 10, 10, 5 sales orders (lookups go first)
    assert [sum(r.rows_in.values()) for r in rounds] == [8, 10, 10, 5]
    assert [r.rows_out.get("fact_sales_order", 0) for r in rounds] == [0, 10, 10, 5]
    assert [r.more for r in rounds] == [True, True, True, False]
    assert run(lakes, "t9", transform_max_rows=10).status == "nothing_to_do"
    sliced = pl.concat(
        [read_outputs(processed, r.run_id)["fact_sales_order"] for r in rounds]
    ).sort("sales_order_id")

    whole = (Lake(str(tmp_path / "i2")), Lake(str(tmp_path / "p2")))
    write_lookups(whole[0], "e0")
    write_batch(whole[0], "sales_order", "e1", sales(range(1, 26)), parts=3)
    assert run(whole, "w1").status == "ok"
    expected = read_outputs(whole[1], "w1")["fact_sales_order"].sort("sales_order_id")
    assert sliced.equals(expected)


def _as_previous_version(ingest: Lake, processed: Lake) -> None:
    """Rewrite both zones as the version before the batch log left them: manifests without
    `log_from`, no logs, and a `consumed` snapshot of every manifest key consumed."""
    consumed = []
    for key in ingest.list("_manifests/"):
        manifest = ingest.read_json(key)
        manifest.pop("log_from", None)
        ingest.write_json(key, manifest)
    for key in processed.list("_manifests/"):
        manifest = processed.read_json(key)
        consumed += manifest["inputs"]
        for field in ("seq", "previous", "released"):
            manifest.pop(field, None)
        processed.write_json(key, manifest)
    for zone in (ingest, processed):
        for key in zone.list("_log/"):
            zone.delete(key)
    head = processed.read_json(layout.STATE_HEAD)
    current = head["current"]
    snapshot = f"_state/consumed/run={current['run_id']}.parquet"
    keys = pl.DataFrame({"key": consumed, "run_id": [current["run_id"]] * len(consumed)})
    processed.write_parquet(snapshot, keys.to_arrow())
    old = dt.datetime.now().timestamp() - 90 * 86_400  # long past the retention period
    os.utime(processed.path(snapshot), (old, old))
    stale = "_state/consumed/run=older.parquet"  # what earlier runs left
    processed.write_parquet(stale, keys.to_arrow())
    os.utime(processed.path(stale), (old, old))
    legacy = {"run_id": current["run_id"], "bucket_ids": current["bucket_ids"]}
    legacy["files"] = {**current["files"], "consumed": snapshot}
    processed.write_json(layout.STATE_HEAD, {"current": legacy, "previous": {}})


def test_a_processed_zone_of_the_previous_version_is_migrated_on_first_use(
    lakes, monkeypatch
) -> None:
    ingest, processed = lakes
    write_lookups(ingest, "e0")
    write_batch(ingest, "sales_order", "e1", sales(range(1, 4)))
    run(lakes, "t1")
    write_batch(ingest, "sales_order", "e2", sales(range(4, 6)))  # committed, not consumed
    _as_previous_version(ingest, processed)
    write_batch(ingest, "sales_order", "e3", sales(range(6, 8)))  # by this version: logged

    result = run(lakes, "t2")  # (it lists the ingestion manifests, once)
    assert sorted(result.inputs) == [
        "_manifests/sales_order/e2.json",
        "_manifests/sales_order/e3.json",
    ]
    assert result.rows_out["fact_sales_order"] == 4
    head = processed.read_json(layout.STATE_HEAD)["current"]
    assert "consumed" not in head["files"] and head["ingest"]["legacy"] == []
    assert head["log_seq"] == 1
    assert not processed.exists("_state/consumed/run=older.parquet")  # expired garbage
    assert processed.read_json("_manifests/t2.json")["released"] == [
        "_state/consumed/run=t1.parquet",  # the migrated list, deleted after retention
        "_state/seen/sales_order/b0/run=t1.parquet",  # replaced by t2's
    ]
    monkeypatch.setattr(Lake, "list_with_times", lambda self, p="": pytest.fail(f"listed {p!r}"))
    assert run(lakes, "t3").status == "nothing_to_do"


def test_processed_records_past_retention_are_deleted_by_a_later_commit(lakes) -> None:
    """Manifests and superseded state snapshots of batches older than the retention period
    go; the head, its base and everything newer stay, replays inside the period replay,
    and the report still counts the quarantined rows of the expired batches."""
    from pipeline.report.quarantine import quarantine_counts
    from pipeline.report.window import ReportWindow

    ingest, processed = lakes
    write_lookups(ingest, "e0")
    write_batch(ingest, "sales_order", "e1", [row("sales_order", sales_order_id=1, units_sold=-5)])
    results = [run(lakes, "t1")]
    for n in range(2, 5):
        write_batch(ingest, "sales_order", f"e{n}", sales(range(n, n + 1)))
        results.append(run(lakes, f"t{n}"))
    released = {
        r.run_id: processed.read_json(f"_manifests/{r.run_id}.json")["released"] for r in results
    }
    assert all(processed.exists(k) for k in released["t2"] + released["t3"])
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=31)).isoformat()
    for seq in (1, 2, 3):  # t1..t3 committed a month ago
        key = layout.log_entry(layout.BATCH_LOG, seq)
        processed.write_json(key, {**processed.read_json(key), "committed_at": old})

    write_batch(ingest, "sales_order", "e5", sales(range(9, 10)))
    assert run(lakes, "t5").status == "ok"
    # t4 is the base of t5: t1..t3 (older than the period, older than the base) are expired
    assert [processed.exists(f"_manifests/t{n}.json") for n in range(1, 6)] == [
        False, False, False, True, True,
    ]  # fmt: skip
    assert not any(processed.exists(k) for k in released["t2"] + released["t3"])
    head = processed.read_json(layout.STATE_HEAD)["current"]
    assert head["housekept"] == 3
    assert all(processed.exists(k) for k in head["files"].values())
    assert run(lakes, "t4").status == "replayed"  # inside the period
    [count] = quarantine_counts(processed, ReportWindow())
    assert (count.source_table, count.rule, count.rows) == ("sales_order", "negative_value", 1)
