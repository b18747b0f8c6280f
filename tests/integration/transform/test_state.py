"""The transform's state is bucketed by primary key (pipeline/transform/state.py): a small
batch reads and rewrites only the buckets of the ids it touches, re-deliveries are still
dropped exactly, state written before buckets is migrated, and the row cap defers fact
batches before lookup batches (continuation: `<run_id>.t<n>`)."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

from pipeline import layout
from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.transform import state as state_module
from pipeline.transform import transform
from tests.lake_builders import next_committed_at, read_outputs, row, write_batch, write_lookups

WIDTH = 10  # ids per bucket in these tests: ids 1..100 span buckets 0..10


@pytest.fixture
def lakes(tmp_path, monkeypatch) -> tuple[Lake, Lake]:
    monkeypatch.setattr(state_module, "BUCKET_IDS", WIDTH)
    return Lake(str(tmp_path / "ingest")), Lake(str(tmp_path / "processed"))


def run(lakes: tuple[Lake, Lake], run_id: str, **knobs: Any):
    settings = Settings(ingest_url=lakes[0].url, processed_url=lakes[1].url, **knobs)
    return transform(run_id, settings)


@pytest.fixture
def state_reads(monkeypatch) -> list[str]:
    """Every `_state/` key read through `Lake.read_parquet`, in order."""
    keys: list[str] = []
    real = Lake.read_parquet

    def spy(self, paths, schema=None):
        keys.extend(k for k in paths if k.startswith("_state/"))
        return real(self, paths, schema)

    monkeypatch.setattr(Lake, "read_parquet", spy)
    return keys


def state_written(processed: Lake, run_id: str) -> list[str]:
    """The state snapshots a run wrote (kinds, without `_state/` and the run file name)."""
    suffix = f"/run={run_id}.parquet"
    return sorted(
        k.removeprefix("_state/").removesuffix(suffix)
        for k in processed.list("_state")
        if k.endswith(suffix)
    )


def kinds_read(keys: list[str], prefix: str) -> list[str]:
    return sorted({k.removeprefix("_state/").rsplit("/", 1)[0] for k in keys if prefix in k})


def seed_history(ingest: Lake) -> None:
    """Lookups (+ transactions 1..100), then sales orders and payments 1..100."""
    write_lookups(ingest, "e0")
    write_batch(
        ingest,
        "transaction",
        "e1",
        [row("transaction", transaction_id=i, sales_order_id=i) for i in range(2, 101)],
    )
    write_batch(
        ingest, "sales_order", "e1", [row("sales_order", sales_order_id=i) for i in range(1, 101)]
    )
    write_batch(
        ingest,
        "payment",
        "e1",
        [row("payment", payment_id=i, transaction_id=i) for i in range(1, 101)],
    )


def test_a_small_batch_reads_and_rewrites_only_the_buckets_of_its_ids(lakes, state_reads):
    ingest, processed = lakes
    seed_history(ingest)
    first = run(lakes, "t1")
    assert first.rows_out["fact_sales_order"] == 100 and first.rows_out["fact_payment"] == 100
    assert state_written(processed, "t1").count("seen/sales_order/b5") == 1
    assert (
        len([k for k in state_written(processed, "t1") if k.startswith("seen/sales_order/")]) == 11
    )

    later = "2024-11-05 10:00:00.000"
    write_batch(
        ingest,
        "sales_order",
        "e2",
        [
            row("sales_order", sales_order_id=5),  # re-delivered by the overlap window
            row("sales_order", sales_order_id=95, units_sold=7, at=later),  # a new version
        ],
    )
    write_batch(
        ingest, "payment", "e2", [row("payment", payment_id=33, transaction_id=33, at=later)]
    )
    state_reads.clear()
    result = run(lakes, "t2")

    assert kinds_read(state_reads, "seen/sales_order/") == [
        "seen/sales_order/b0",
        "seen/sales_order/b9",
    ]
    assert kinds_read(state_reads, "seen/payment/") == ["seen/payment/b3"]
    assert kinds_read(state_reads, "current/transaction/") == ["current/transaction/b3"]
    assert kinds_read(state_reads, "seen/purchase_order/") == []
    # b0 of sales_order got no new version: only the buckets that changed are rewritten
    assert state_written(processed, "t2") == [
        "seen/payment/b3",
        "seen/sales_order/b9",
    ]
    out = read_outputs(processed, "t2")
    assert out["fact_sales_order"].select("sales_order_id", "units_sold").to_dicts() == [
        {"sales_order_id": 95, "units_sold": 7}
    ]
    assert out["fact_payment"]["payment_id"].to_list() == [33]
    assert result.duplicates["sales_order"] == 1 and result.rows_in["sales_order"] == 2

    # the carried-forward buckets still hold what t1 handled
    write_batch(
        ingest, "sales_order", "e3", [row("sales_order", sales_order_id=i) for i in (1, 55)]
    )
    again = run(lakes, "t3")
    assert again.duplicates["sales_order"] == 2 and again.rows_out["fact_sales_order"] == 0
    write_batch(
        ingest, "sales_order", "e4", [row("sales_order", sales_order_id=95, units_sold=7, at=later)]
    )
    assert run(lakes, "t4").duplicates["sales_order"] == 1


def test_a_run_of_only_redeliveries_writes_no_state_snapshot(lakes):
    ingest, processed = lakes
    seed_history(ingest)
    run(lakes, "t1")
    write_lookups(ingest, "e2")  # every lookup row again, unchanged
    write_batch(ingest, "sales_order", "e2", [row("sales_order", sales_order_id=3)])
    write_batch(ingest, "payment", "e2", [row("payment", payment_id=99, transaction_id=99)])
    result = run(lakes, "t2")
    assert result.status == "ok" and sum(result.rows_out.values()) == 0
    assert state_written(processed, "t2") == []  # (consumption is the cursor in the head)
    head = processed.read_json(layout.STATE_HEAD)
    assert head["current"]["run_id"] == "t2" and head["current"]["bucket_ids"] == WIDTH
    assert head["current"]["ingest"]["through"] == 21  # 11 log entries of e0/e1, 10 of e2
    assert head["current"]["files"]["seen/sales_order/b0"].endswith("/run=t1.parquet")


def test_pending_rows_find_their_row_local_dimensions_in_buckets_no_new_row_touches(lakes):
    """A payment pending for a missing currency also references transaction 95 (bucket 9),
    which nothing in the retrying run touches: it must still be looked up."""
    ingest, processed = lakes
    seed_history(ingest)
    write_batch(
        ingest, "payment", "e1b", [row("payment", payment_id=500, transaction_id=95, currency_id=2)]
    )
    first = run(lakes, "t1")
    assert first.pending["payment"]["new"] == 1
    write_batch(ingest, "currency", "e2", [row("currency", currency_id=2, currency_code="EUR")])
    result = run(lakes, "t2")
    assert result.pending["payment"]["resolved"] == 1
    assert read_outputs(processed, "t2")["fact_payment"]["payment_id"].to_list() == [500]
    assert "pending/payment" not in processed.read_json(layout.STATE_HEAD)["current"]["files"]


def _to_legacy_state(processed: Lake) -> None:
    """Rewrite the committed head the way the transform stored state before buckets: one
    whole snapshot per kind and no `bucket_ids`."""
    head = processed.read_json(layout.STATE_HEAD)
    current = head["current"]
    whole: dict[str, list[str]] = {}
    files = {}
    for kind, key in current["files"].items():
        base, _, last = kind.rpartition("/")
        if last.startswith("b") and last[1:].isdigit():
            whole.setdefault(base, []).append(key)
        else:
            files[kind] = key
    for kind, keys in whole.items():
        df = pl.concat([pl.read_parquet(processed.path(k)) for k in keys])
        key = f"_state/{kind}/run=legacy.parquet"
        processed.write_parquet(key, df.to_arrow())
        files[kind] = key
    head["current"] = {**current, "files": files, "bucket_ids": None}
    processed.write_bytes(layout.STATE_HEAD, json.dumps(head).encode())


def test_state_from_before_buckets_is_read_and_rewritten_as_buckets(lakes):
    ingest, processed = lakes
    seed_history(ingest)
    run(lakes, "t1")
    _to_legacy_state(processed)

    later = "2024-11-06 09:00:00.000"
    write_batch(
        ingest, "department", "e2", [row("department", location="Hull", at=later)]
    )  # staff 1 must be rebuilt from the legacy current state of staff and department
    write_batch(
        ingest,
        "sales_order",
        "e2",
        [
            row("sales_order", sales_order_id=42),  # re-delivered: bucket 4 is read, unchanged
            row("sales_order", sales_order_id=73, at=later),
        ],
    )
    result = run(lakes, "t2")
    assert result.duplicates["sales_order"] == 1
    out = read_outputs(processed, "t2")
    assert out["fact_sales_order"]["sales_order_id"].to_list() == [73]
    assert out["dim_staff"].select("staff_id", "location").to_dicts() == [
        {"staff_id": 1, "location": "Hull"}
    ]
    files = processed.read_json(layout.STATE_HEAD)["current"]["files"]
    assert "seen/sales_order" not in files and "current/department" not in files
    assert files["seen/payment"].endswith("run=legacy.parquet")  # migrated once a run reads it
    assert {f"seen/sales_order/b{b}" for b in range(11)} <= set(files)
    seen = pl.concat(
        [pl.read_parquet(processed.path(k)) for n, k in files.items() if "seen/sales_order" in n]
    )
    assert seen.height == seen.n_unique() == 101  # t1's 100 versions and 73's new one
    assert files["current/department/b0"].endswith("run=t2.parquet")
    # every version t1 handled survived the migration
    write_batch(
        ingest, "sales_order", "e3", [row("sales_order", sales_order_id=i) for i in (1, 99)]
    )
    write_batch(ingest, "payment", "e3", [row("payment", payment_id=7, transaction_id=7)])
    result = run(lakes, "t3")
    assert result.duplicates == {"sales_order": 2, "payment": 1}
    files = processed.read_json(layout.STATE_HEAD)["current"]["files"]
    assert not any(k.endswith("run=legacy.parquet") for k in files.values())
    assert {f"seen/payment/b{b}" for b in range(11)} <= set(files)


def test_the_row_cap_takes_lookup_batches_first_and_continuation_runs_are_idempotent(
    lakes, monkeypatch
):
    """Commit order puts the sales batch first; with room for one table only, the lookups
    go first so no fact row waits for a deferred dimension. The caller continues with
    `<run_id>.t2`, `.t3`, ... while `more` is true; each call replays by its own run id."""
    ingest, processed = lakes
    write_batch(
        ingest,
        "sales_order",
        "e1",
        [row("sales_order", sales_order_id=i) for i in range(1, 4)],
        committed_at=next_committed_at(),
    )
    write_lookups(ingest, "e1")  # 8 batches of one row, committed after the sales batch
    first = run(lakes, "r1", transform_max_rows=8)
    assert first.more and len(first.inputs) == 8
    assert not any("sales_order" in k for k in first.inputs)
    second = run(lakes, "r1.t2", transform_max_rows=8)
    assert second.inputs == ["_manifests/sales_order/e1.json"] and not second.more
    assert second.rows_out["fact_sales_order"] == 3 and second.quarantined["sales_order"] == 0
    before = processed.list()
    replayed = run(lakes, "r1.t2", transform_max_rows=8)
    assert replayed.status == "replayed" and replayed.inputs == second.inputs
    assert processed.list() == before
    assert run(lakes, "r1.t3", transform_max_rows=8).status == "nothing_to_do"
