"""The load step against a real PostgreSQL: first, incremental, re-load and replay (R8)."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import psycopg
import pytest

from pipeline.lake import Lake
from pipeline.load.run import load, waiting_batches
from pipeline.settings import Settings
from tests.processed_builders import (
    full_contents,
    row_versions,
    star_batch,
    write_batch,
)

pytestmark = pytest.mark.postgres
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "processed"))


def test_first_load_writes_every_table_exactly(lake: Lake, pg_dsn: str, caplog) -> None:
    batch = star_batch(T0)
    write_batch(lake, "t1", batch, parts=2)
    with caplog.at_level(logging.INFO, logger="pipeline.load.run"):
        result = load("load-1", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert result.to_dict() == {
        "run_id": "load-1",
        "status": "loaded",
        "batches": ["t1"],
        "rows": {name: len(rows) for name, rows in batch.items()},
    }
    contents = full_contents(pg_dsn)
    for name, rows in batch.items():  # every value round-trips: nulls, unicode, ms, numeric
        expected = [tuple(r.values()) for r in rows]
        loaded = contents[name]
        design = [row[1:-1] if name.startswith("fact_") else row[:-1] for row in loaded]
        assert sorted(design) == sorted(expected), name
        assert {row[-1] for row in loaded} == {"t1"}, f"{name} lineage"
    sales = contents["fact_sales_order"]
    assert [r[0] for r in sales] == [1, 2, 3, 4, 5]  # record ids follow the batch order
    assert sales[0][9] == Decimal("-12345678.99")
    assert sales[0][5] == dt.time(3, 4, 5, 678000)
    [line] = [r for r in caplog.records if r.getMessage() == "loaded processed batch"]
    assert line.batch == "t1" and line.rows["fact_payment"] == 5 and line.duration_s > 0
    assert pg_dsn.split("password=")[-1].split()[0] not in caplog.text
    with psycopg.connect(pg_dsn) as conn:
        ledger = conn.execute(
            "SELECT batch_run_id, load_run_id, rows->>'fact_sales_order' FROM etl_load_ledger"
        ).fetchall()
    assert ledger == [("t1", "load-1", "5")]
    assert waiting_batches(Settings(processed_url=lake.url, warehouse_dsn=pg_dsn)) == []


def test_nothing_to_do_and_replay(lake: Lake, pg_dsn: str) -> None:
    assert (
        load("a", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn)).status == "nothing_to_do"
    )
    write_batch(lake, "t1", star_batch(T0))
    assert waiting_batches(Settings(processed_url=lake.url, warehouse_dsn=pg_dsn)) == ["t1"]
    first = load("b", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    before = full_contents(pg_dsn)
    again = load("b", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert again.status == "replayed"
    assert (again.batches, again.rows) == (first.batches, first.rows)
    other = load("c", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert other.to_dict() == {"run_id": "c", "status": "nothing_to_do", "batches": [], "rows": {}}
    assert full_contents(pg_dsn) == before


def test_reapplying_a_loaded_batch_changes_nothing(lake: Lake, pg_dsn: str) -> None:
    """Forget the ledger row: the same batch applied again writes no row (R8)."""
    write_batch(lake, "t1", star_batch(T0))
    load("l1", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    before = full_contents(pg_dsn)
    versions = {t: row_versions(pg_dsn, t) for t in before}
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM etl_load_ledger")
    again = load("l2", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert again.status == "loaded"
    assert set(again.rows.values()) == {0}
    assert full_contents(pg_dsn) == before
    assert {t: row_versions(pg_dsn, t) for t in before} == versions  # not even rewritten


def test_incremental_load_updates_changed_dims_and_appends_fact_versions(
    lake: Lake, pg_dsn: str
) -> None:
    write_batch(lake, "t1", star_batch(T0), committed_at=T0.replace(tzinfo=dt.UTC))
    load("l1", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    staff_before = row_versions(pg_dsn, "dim_staff")
    design_before = row_versions(pg_dsn, "dim_design")
    t1 = T0 + dt.timedelta(days=1)
    second = star_batch(t1, ids=range(4, 8), suffix="-renamed", units=99)
    write_batch(lake, "t2", second, committed_at=t1.replace(tzinfo=dt.UTC))
    result = load("l2", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert result.batches == ["t2"]
    assert result.rows["dim_staff"] == 3  # every staff name changed
    assert result.rows["dim_design"] == 0  # unchanged: not rewritten
    assert result.rows["dim_date"] == 1  # only the new day
    assert result.rows["fact_sales_order"] == 4
    contents = full_contents(pg_dsn)
    assert [r[1] for r in contents["dim_staff"]] == [f"First{i}-renamed" for i in (1, 2, 3)]
    assert {r[-1] for r in contents["dim_staff"]} == {"t2"}
    assert {r[-1] for r in contents["dim_design"]} == {"t1"}
    assert row_versions(pg_dsn, "dim_design") == design_before
    assert set(row_versions(pg_dsn, "dim_staff").values()).isdisjoint(staff_before.values())
    sales = contents["fact_sales_order"]
    assert [(r[0], r[1], r[8]) for r in sales] == [
        *[(i, i, 10) for i in range(1, 6)],
        *[(5 + k, i, 99) for k, i in enumerate(range(4, 8), start=1)],
    ]  # versions 4 and 5 kept twice (old and new last_updated), record ids continue
    assert [r[-1] for r in sales] == ["t1"] * 5 + ["t2"] * 4


def test_an_older_batch_loaded_late_does_not_overwrite_newer_dimension_values(
    lake: Lake, pg_dsn: str
) -> None:
    new, old = T0 + dt.timedelta(days=1), T0
    write_batch(lake, "newer", star_batch(new, suffix="-new"), committed_at=new.astimezone(dt.UTC))
    load("l1", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    write_batch(lake, "older", star_batch(old, suffix="-old"), committed_at=old.astimezone(dt.UTC))
    result = load("l2", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert result.batches == ["older"] and result.rows["dim_staff"] == 0
    assert result.rows["fact_sales_order"] == 5  # its fact versions are still history
    staff = full_contents(pg_dsn)["dim_staff"]
    assert {r[1] for r in staff} == {f"First{i}-new" for i in (1, 2, 3)}


def test_pending_batches_load_oldest_first_in_one_call(lake: Lake, pg_dsn: str) -> None:
    for k, name in enumerate(["c", "a", "b"]):  # names sort differently from commit order
        when = T0 + dt.timedelta(hours=k)
        write_batch(lake, name, star_batch(when, suffix=name), committed_at=when.astimezone(dt.UTC))
    result = load("l", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert result.batches == ["c", "a", "b"]
    assert result.rows["fact_sales_order"] == 15
    assert {r[1] for r in full_contents(pg_dsn)["dim_staff"]} == {f"First{i}b" for i in (1, 2, 3)}
    with psycopg.connect(pg_dsn) as conn:
        order = [
            r[0]
            for r in conn.execute("SELECT batch_run_id FROM etl_load_ledger ORDER BY loaded_at")
        ]
    assert order == ["c", "a", "b"]


def test_batches_of_a_zone_written_before_the_batch_log_are_all_loaded(
    lake: Lake, pg_dsn: str
) -> None:
    """Manifests only (the version before the log), one loaded, one not; then a batch with
    the log built on them: the load applies exactly the two it lacks, in order."""
    settings = Settings(processed_url=lake.url, warehouse_dsn=pg_dsn)
    for k, name in enumerate(["old1", "old2"]):
        when = T0 + dt.timedelta(hours=k)
        tables = star_batch(when, suffix=name)
        write_batch(lake, name, tables, committed_at=when.astimezone(dt.UTC), legacy=True)
        if k == 0:
            assert load("l1", settings).batches == ["old1"]
    lake.write_json("_state/head.json", {"current": {"run_id": "old2"}})  # its state head
    when = T0 + dt.timedelta(hours=5)
    write_batch(lake, "new", star_batch(when, suffix="new"), committed_at=when.astimezone(dt.UTC))
    assert waiting_batches(settings) == ["old2", "new"]
    assert load("l2", settings).batches == ["old2", "new"]
    assert load("l3", settings).status == "nothing_to_do"


def test_empty_outputs_and_dimension_only_batches_load(lake: Lake, pg_dsn: str) -> None:
    batch = star_batch(T0)
    write_batch(lake, "dims", {"dim_staff": batch["dim_staff"], "fact_payment": []})
    result = load("l", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert result.rows == {"dim_staff": 3}
    assert len(full_contents(pg_dsn)["dim_staff"]) == 3


def test_a_batch_mixing_loaded_repeated_and_new_versions_adds_only_the_new_ones(
    lake: Lake, pg_dsn: str
) -> None:
    first = star_batch(T0)
    write_batch(lake, "t1", first, committed_at=T0.replace(tzinfo=dt.UTC))
    load("l1", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    t1 = T0 + dt.timedelta(minutes=1)
    second = star_batch(t1, ids=range(3, 5))
    old, new = first["fact_sales_order"], second["fact_sales_order"]
    second["fact_sales_order"] = [new[1], old[0], new[0], old[4], new[1]]
    write_batch(lake, "t2", second, committed_at=t1.replace(tzinfo=dt.UTC), parts=2)
    result = load("l2", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert result.rows["fact_sales_order"] == 2
    sales = full_contents(pg_dsn)["fact_sales_order"]
    assert [(r[0], r[1], r[5]) for r in sales[5:]] == [
        (6, 4, t1.time()),  # first occurrence wins, in batch order
        (7, 3, t1.time()),
    ]
    with psycopg.connect(pg_dsn) as conn:  # the serial default continues after them
        (nextval,) = conn.execute(
            "SELECT nextval(pg_get_serial_sequence('fact_sales_order', 'sales_record_id'))"
        ).fetchone()  # type: ignore[misc]
    assert nextval == 8
