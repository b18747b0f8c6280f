"""Incremental transform runs: lookup propagation, failed-run pickup, overlap de-dup,
replay (R8), crash mid-transform (R6), concurrency lease, schema drift."""

from __future__ import annotations

import json
import os
from typing import Any

import polars as pl
import pytest

from pipeline import layout
from pipeline.errors import CorruptBatchError, SchemaDriftError, TransformBusyError
from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.transform import run as run_module
from pipeline.transform import state as state_module
from pipeline.transform import transform
from pipeline.transform.lease import LEASE_KEY
from tests.lake_builders import (
    log_entry_key,
    next_committed_at,
    read_outputs,
    row,
    write_batch,
    write_lookups,
)


@pytest.fixture
def lakes(tmp_path) -> tuple[Lake, Lake]:
    return Lake(str(tmp_path / "ingest")), Lake(str(tmp_path / "processed"))


def run(lakes: tuple[Lake, Lake], run_id: str, **knobs: Any):
    settings = Settings(ingest_url=lakes[0].url, processed_url=lakes[1].url, **knobs)
    return transform(run_id, settings)


def snapshot_files(lake: Lake) -> dict[str, tuple[int, int]]:
    """Every file with its size and mtime: equal snapshots mean nothing was written."""
    return {
        k: (os.stat(lake.path(k)).st_size, os.stat(lake.path(k)).st_mtime_ns) for k in lake.list()
    }


def sorted_rows(df: pl.DataFrame) -> list[dict]:
    return df.sort(df.columns).to_dicts()


def test_department_change_updates_its_staff_and_address_change_its_counterparties(lakes):
    ingest, processed = lakes
    write_batch(
        ingest,
        "department",
        "e1",
        [
            row("department", department_id=1, location="Manchester"),
            row("department", department_id=2, department_name="Finance", location="Leeds"),
        ],
    )
    write_batch(
        ingest,
        "staff",
        "e1",
        [
            row("staff", staff_id=1, department_id=1),
            row("staff", staff_id=2, department_id=1),
            row("staff", staff_id=3, department_id=2),
        ],
    )
    write_batch(
        ingest,
        "address",
        "e1",
        [row("address", address_id=1), row("address", address_id=2, city="York")],
    )
    write_batch(
        ingest,
        "counterparty",
        "e1",
        [
            row("counterparty", counterparty_id=1, legal_address_id=1),
            row("counterparty", counterparty_id=2, legal_address_id=2),
        ],
    )
    assert run(lakes, "t1").rows_out["dim_staff"] == 3

    later = "2024-11-05 10:00:00.000"
    write_batch(
        ingest, "department", "e2", [row("department", department_id=1, location="Hull", at=later)]
    )
    write_batch(
        ingest, "address", "e2", [row("address", address_id=1, phone="0000 111111", at=later)]
    )
    result = run(lakes, "t2")
    out = read_outputs(processed, "t2")
    assert out["dim_staff"].select("staff_id", "location").sort("staff_id").to_dicts() == [
        {"staff_id": 1, "location": "Hull"},
        {"staff_id": 2, "location": "Hull"},
    ]
    assert out["dim_location"].select("location_id", "phone").to_dicts() == [
        {"location_id": 1, "phone": "0000 111111"}
    ]
    assert out["dim_counterparty"].select(
        "counterparty_id", "counterparty_legal_phone_number"
    ).to_dicts() == [{"counterparty_id": 1, "counterparty_legal_phone_number": "0000 111111"}]
    assert result.rows_out["dim_design"] == 0 and result.rows_out["dim_currency"] == 0


def test_unchanged_redelivered_lookup_rows_are_not_emitted_again(lakes):
    ingest, _ = lakes
    write_lookups(ingest, "e1")
    run(lakes, "t1")
    write_lookups(ingest, "e2")  # the overlap window re-delivers the same versions
    result = run(lakes, "t2")
    assert result.status == "ok"
    assert sum(result.rows_out.values()) == 0
    assert result.duplicates["staff"] == 1 and result.rows_in["staff"] == 1


def test_batches_of_a_failed_run_are_consumed_in_commit_order(lakes):
    """e1's transform never ran (the run failed); the next run takes e1 and e2, in order,
    and never reads the parts of a crashed extract that has no manifest."""
    ingest, processed = lakes
    write_lookups(ingest, "e0")
    first, second = next_committed_at(), next_committed_at()
    # run ids sort the other way round from commit order: commit order must win
    write_batch(
        ingest,
        "staff",
        "z-e1",
        [row("staff", first_name="Old", at="2024-11-05 09:00:00.000")],
        committed_at=first,
    )
    write_batch(
        ingest,
        "staff",
        "a-e2",
        [row("staff", first_name="New", at="2024-11-05 09:00:00.000")],
        committed_at=second,
    )
    write_batch(
        ingest, "sales_order", "z-e1", [row("sales_order", sales_order_id=1)], committed_at=first
    )
    write_batch(
        ingest, "sales_order", "a-e2", [row("sales_order", sales_order_id=2)], committed_at=second
    )
    write_batch(ingest, "sales_order", "e3", [row("sales_order", sales_order_id=3)], commit=False)

    result = run(lakes, "t1")
    staff_inputs = [k for k in result.inputs if k.startswith("_manifests/staff/")]
    assert staff_inputs == [
        "_manifests/staff/e0.json",
        "_manifests/staff/z-e1.json",
        "_manifests/staff/a-e2.json",
    ]
    out = read_outputs(processed, "t1")
    assert out["dim_staff"]["first_name"].to_list() == ["New"]  # same last_updated: later batch
    assert sorted(out["fact_sales_order"]["sales_order_id"].to_list()) == [1, 2]

    write_batch(ingest, "sales_order", "e3", [row("sales_order", sales_order_id=3)])  # commits
    assert run(lakes, "t2").status == "ok"
    assert read_outputs(processed, "t2")["fact_sales_order"]["sales_order_id"].to_list() == [3]


def test_overlap_window_versions_are_not_emitted_twice(lakes):
    ingest, processed = lakes
    write_lookups(ingest, "e0")
    v1 = row("sales_order", sales_order_id=2, at="2024-11-05 09:00:00.000")
    write_batch(ingest, "sales_order", "e1", [row("sales_order", sales_order_id=1), v1])
    run(lakes, "t1")
    v2 = row(
        "sales_order",
        sales_order_id=2,
        units_sold=5,
        created="2024-11-05 09:00:00.000",
        at="2024-11-05 09:30:00.000",
    )
    write_batch(ingest, "sales_order", "e2", [v1, v2, row("sales_order", sales_order_id=3)])
    result = run(lakes, "t2")
    facts = read_outputs(processed, "t2")["fact_sales_order"]
    assert facts.select("sales_order_id", "units_sold").sort("sales_order_id").to_dicts() == [
        {"sales_order_id": 2, "units_sold": 5},
        {"sales_order_id": 3, "units_sold": 100},
    ]
    assert result.rows_in["sales_order"] == 3
    assert result.duplicates["sales_order"] == 1


def test_replay_returns_the_recorded_result_and_writes_nothing(lakes):
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    write_batch(ingest, "sales_order", "e1", [row("sales_order")])
    first = run(lakes, "t1")
    before = snapshot_files(processed)
    write_batch(ingest, "sales_order", "e2", [row("sales_order", sales_order_id=9)])
    again = run(lakes, "t1")
    assert again.status == "replayed"
    assert {**again.to_dict(), "status": "ok"} == first.to_dict()
    assert snapshot_files(processed) == before


def test_no_new_input_is_nothing_to_do_and_writes_nothing(lakes):
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    run(lakes, "t1")
    before = snapshot_files(processed)
    result = run(lakes, "t2")
    assert result.status == "nothing_to_do" and result.inputs == []
    assert snapshot_files(processed) == before
    assert not processed.exists("_manifests/t2.json")


def _clean_pass(tmp_path, tag: str) -> dict[str, pl.DataFrame]:
    ingest, processed = Lake(str(tmp_path / f"c-in-{tag}")), Lake(str(tmp_path / f"c-out-{tag}"))
    write_lookups(ingest, "x1")
    write_batch(
        ingest, "sales_order", "x1", [row("sales_order", sales_order_id=i) for i in range(1, 4)]
    )
    run((ingest, processed), "t1")
    write_batch(
        ingest,
        "department",
        "x2",
        [row("department", location="Hull", at="2024-11-06 09:00:00.000")],
    )
    write_batch(
        ingest,
        "sales_order",
        "x2",
        [
            row("sales_order", sales_order_id=3, at="2024-11-06 09:00:00.000"),
            row("sales_order", sales_order_id=4, staff_id=42),
        ],
    )
    run((ingest, processed), "t2")
    return read_outputs(processed, "t2")


@pytest.mark.parametrize("crash_at", ["mid_outputs", "write_state", "write_head", "manifest"])
def test_crash_mid_transform_then_rerun_equals_a_clean_pass(lakes, tmp_path, monkeypatch, crash_at):
    ingest, processed = lakes
    write_lookups(ingest, "x1")
    write_batch(
        ingest, "sales_order", "x1", [row("sales_order", sales_order_id=i) for i in range(1, 4)]
    )
    run(lakes, "t1")
    write_batch(
        ingest,
        "department",
        "x2",
        [row("department", location="Hull", at="2024-11-06 09:00:00.000")],
    )
    write_batch(
        ingest,
        "sales_order",
        "x2",
        [
            row("sales_order", sales_order_id=3, at="2024-11-06 09:00:00.000"),
            row("sales_order", sales_order_id=4, staff_id=42),
        ],
    )

    class CrashError(RuntimeError):
        pass

    def boom(*args, **kwargs):
        raise CrashError(crash_at)

    if crash_at == "mid_outputs":  # some tables written (the dimensions), then a crash
        real_write = run_module.write_warehouse_table
        monkeypatch.setattr(
            run_module,
            "write_warehouse_table",
            lambda lake, name, *a: (
                boom() if name.startswith("fact_") else real_write(lake, name, *a)
            ),
        )
    elif crash_at == "manifest":
        real_create = Lake.create_json
        monkeypatch.setattr(
            Lake,
            "create_json",
            lambda self, key, obj: (
                boom() if key.startswith("_manifests/") else real_create(self, key, obj)
            ),
        )
    else:
        monkeypatch.setattr(
            state_module if crash_at == "write_head" else run_module.st, crash_at, boom
        )
    with pytest.raises(CrashError):
        run(lakes, "t2")
    assert processed.list("dim_staff/run=t2")  # some outputs of the crashed attempt exist
    assert not processed.exists("_manifests/t2.json")
    assert not processed.exists(LEASE_KEY)  # released on the way out
    monkeypatch.undo()

    result = run(lakes, "t2")
    assert result.status == "ok"
    clean = _clean_pass(tmp_path, crash_at)
    out = read_outputs(processed, "t2")
    for name, df in clean.items():
        assert sorted_rows(out[name]) == sorted_rows(df), name
    assert result.pending["sales_order"]["kept"] == 1  # staff 42 never arrives


def test_crashed_run_is_superseded_by_the_next_run_id(lakes, monkeypatch):
    """A crash after the head moved but before the manifest: another run id must not build
    on the crashed run's state, and must consume its inputs itself."""
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    run(lakes, "t1")
    write_batch(ingest, "sales_order", "e2", [row("sales_order", sales_order_id=5)])
    real_create = Lake.create_json

    def no_manifest(self, key, obj):
        if key.startswith("_manifests/"):
            raise RuntimeError("crash before commit")
        return real_create(self, key, obj)

    monkeypatch.setattr(Lake, "create_json", no_manifest)
    with pytest.raises(RuntimeError):
        run(lakes, "t2")
    monkeypatch.undo()
    head = json.loads(processed.read_bytes(layout.STATE_HEAD))
    assert head["current"]["run_id"] == "t2"  # the head moved, the manifest did not
    result = run(lakes, "t3")
    assert result.inputs == ["_manifests/sales_order/e2.json"]
    assert read_outputs(processed, "t3")["fact_sales_order"]["sales_order_id"].to_list() == [5]


def test_a_held_lease_blocks_a_second_transform_and_an_expired_one_is_taken_over(lakes):
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    processed.write_json(
        LEASE_KEY, {"run_id": "other", "token": "abc", "expires_at": "2999-01-01T00:00:00+00:00"}
    )
    with pytest.raises(TransformBusyError, match="other"):
        run(lakes, "t1")
    assert not processed.exists("_manifests/t1.json")
    processed.write_json(
        LEASE_KEY, {"run_id": "other", "token": "abc", "expires_at": "2000-01-01T00:00:00+00:00"}
    )
    assert run(lakes, "t1").status == "ok"
    assert not processed.exists(LEASE_KEY)


def test_retyped_column_is_a_schema_drift_error_and_nothing_is_written(lakes, tmp_path):
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    key = write_batch(ingest, "sales_order", "e1", [row("sales_order")])
    part = ingest.read_json(key)["files"][0]
    df = pl.read_parquet(ingest.path(part)).with_columns(pl.col("units_sold").cast(pl.String))
    df.write_parquet(ingest.path(part))
    with pytest.raises(SchemaDriftError, match=r"'sales_order'.*'units_sold'"):
        run(lakes, "t1")
    assert processed.list("_manifests") == []


def test_a_batch_from_before_a_nullable_column_was_adopted_reads_it_as_null(lakes):
    """A catalog column the source added later (adopted, nullable) is absent from older
    batches: read as NULL there. A required column absent is still drift."""
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    key = write_batch(ingest, "address", "e2", [row("address", address_id=7, address_line_2="x")])
    part = ingest.read_json(key)["files"][0]
    pl.read_parquet(ingest.path(part)).drop("address_line_2").write_parquet(ingest.path(part))
    assert run(lakes, "t1").status == "ok"
    location = read_outputs(processed, "t1")["dim_location"].filter(pl.col("location_id") == 7)
    assert location["address_line_2"].to_list() == [None]
    key = write_batch(ingest, "address", "e3", [row("address", address_id=8)])
    part = ingest.read_json(key)["files"][0]
    pl.read_parquet(ingest.path(part)).drop("city").write_parquet(ingest.path(part))
    with pytest.raises(SchemaDriftError, match=r"'address'.*'city'.*missing"):
        run(lakes, "t2")


def test_missing_listed_file_is_a_corrupt_batch_error(lakes):
    ingest, _ = lakes
    key = write_batch(ingest, "staff", "e1", [row("staff")])
    ingest.delete(ingest.read_json(key)["files"][0])
    with pytest.raises(CorruptBatchError, match="staff"):
        run(lakes, "t1")


def test_concurrent_transforms_never_consume_a_batch_twice(lakes):
    import threading

    ingest, processed = lakes
    write_lookups(ingest, "e1")
    for n in range(4):
        write_batch(ingest, "sales_order", f"s{n}", [row("sales_order", sales_order_id=n + 1)])
    barrier = threading.Barrier(3)
    outcomes: dict[str, object] = {}

    def go(run_id: str) -> None:
        barrier.wait()
        try:
            outcomes[run_id] = run(lakes, run_id)
        except TransformBusyError as exc:
            outcomes[run_id] = exc

    threads = [threading.Thread(target=go, args=(f"c{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    committed = [processed.read_json(k) for k in processed.list("_manifests")]
    consumed = [key for m in committed for key in m["inputs"]]
    assert len(consumed) == len(set(consumed)) == len(ingest.list("_manifests"))
    facts = [read_outputs(processed, m["run_id"])["fact_sales_order"] for m in committed]
    assert sorted(i for f in facts for i in f["sales_order_id"].to_list()) == [1, 2, 3, 4]
    assert all(
        isinstance(o, TransformBusyError) or o.status in ("ok", "nothing_to_do")
        for o in outcomes.values()
    )


def test_one_structured_log_line_per_run(lakes, caplog):
    write_lookups(lakes[0], "e1")
    with caplog.at_level("INFO", logger="pipeline.transform.run"):
        run(lakes, "t1")
    records = [r for r in caplog.records if r.name == "pipeline.transform.run"]
    assert len(records) == 1
    assert records[0].run_id == "t1" and records[0].status == "ok"
    assert records[0].rows_in == 8 and records[0].quarantined == 0


def test_files_holding_other_rows_than_the_manifest_says_are_a_corrupt_batch(lakes):
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    key = write_batch(
        ingest, "sales_order", "e1", [row("sales_order"), row("sales_order", sales_order_id=2)]
    )
    entry = log_entry_key(ingest, key)  # what the transform reads of a batch
    ingest.write_json(entry, {**ingest.read_json(entry), "rows": 3})
    with pytest.raises(CorruptBatchError, match=r"sales_order.*hold 2 rows.*say 3"):
        run(lakes, "t1")
    assert processed.list("_manifests") == []


def test_an_added_source_column_is_ignored_and_the_run_continues(lakes):
    ingest = lakes[0]
    write_lookups(ingest, "e1")
    key = write_batch(ingest, "sales_order", "e1", [row("sales_order")])
    part = ingest.read_json(key)["files"][0]
    df = pl.read_parquet(ingest.path(part)).with_columns(pl.lit("x").alias("new_column"))
    df.write_parquet(ingest.path(part))
    assert run(lakes, "t1").rows_out["fact_sales_order"] == 1


def test_committed_at_never_goes_backwards_even_if_the_clock_does(lakes):
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    run(lakes, "t1")
    head = processed.read_json("_state/head.json")  # t1 as if committed by a clock far ahead
    head["current"]["committed_at"] = "2999-01-01T00:00:00+00:00"
    processed.write_json("_state/head.json", head)
    write_batch(ingest, "sales_order", "e2", [row("sales_order")])
    run(lakes, "t2")
    assert processed.read_json("_manifests/t2.json")["committed_at"] == (
        "2999-01-01T00:00:00.000001+00:00"
    )


def test_a_backlog_is_worked_off_over_several_runs_in_order(lakes, monkeypatch):
    ingest, processed = lakes
    write_lookups(ingest, "e0")  # 8 rows
    for n in range(3):
        write_batch(
            ingest,
            "sales_order",
            f"s{n}",
            [row("sales_order", sales_order_id=10 * n + i) for i in range(1, 6)],
        )
    first = run(lakes, "t1", transform_max_rows=10)
    assert first.more and len(first.inputs) == 8  # lookups fit; the first 5-row batch would not
    second = run(lakes, "t2", transform_max_rows=10)
    assert second.more and second.inputs == [
        "_manifests/sales_order/s0.json",
        "_manifests/sales_order/s1.json",
    ]
    third = run(lakes, "t3", transform_max_rows=10)
    assert not third.more and third.inputs == ["_manifests/sales_order/s2.json"]
    assert run(lakes, "t4", transform_max_rows=10).status == "nothing_to_do"
    emitted = [
        i
        for r in ("t2", "t3")
        for i in read_outputs(processed, r)["fact_sales_order"]["sales_order_id"].to_list()
    ]
    assert sorted(emitted) == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15, 21, 22, 23, 24, 25]


def test_the_time_left_sizes_a_run_like_the_row_cap(lakes, monkeypatch):
    """`time_left` (the Lambda's remaining time) lowers the cap: at one row a second past
    the reserve, 9 s left buys 9 rows, so the backlog splits as under transform_max_rows=9;
    with no time past the reserve nothing is taken and the run says `more`."""
    ingest, processed = lakes
    monkeypatch.setattr(run_module, "FLOOR_ROWS_PER_S", 1)
    write_lookups(ingest, "e0")  # 8 rows
    for n in range(2):
        write_batch(
            ingest,
            "sales_order",
            f"s{n}",
            [row("sales_order", sales_order_id=10 * n + i) for i in range(1, 6)],
        )

    settings = Settings(ingest_url=ingest.url, processed_url=processed.url)

    def transform_with(run_id: str, seconds: float):
        return transform(run_id, settings, time_left=lambda: run_module.RESERVE_S + seconds)

    starved = transform_with("t0", 0)
    assert (starved.status, starved.more, starved.inputs) == ("nothing_to_do", True, [])
    assert not processed.exists("_manifests/t0.json")
    first = transform_with("t1", 9)
    assert first.more and len(first.inputs) == 8
    second = transform_with("t2", 9)
    assert second.more and second.inputs == ["_manifests/sales_order/s0.json"]
    third = transform_with("t3", 3600)
    assert not third.more and third.inputs == ["_manifests/sales_order/s1.json"]


def test_the_row_cap_still_holds_when_time_is_plentiful(lakes):
    """The time budget only lowers `transform_max_rows`, never raises it (the minimum)."""
    ingest, processed = lakes
    write_lookups(ingest, "e0")  # 8 rows
    write_batch(ingest, "sales_order", "s0", [row("sales_order", sales_order_id=i) for i in (1, 2)])
    settings = Settings(ingest_url=ingest.url, processed_url=processed.url, transform_max_rows=9)
    first = transform("t1", settings, time_left=lambda: 3600.0)
    assert first.more and len(first.inputs) == 8
    second = transform("t2", settings, time_left=lambda: 3600.0)
    assert not second.more and second.inputs == ["_manifests/sales_order/s0.json"]
