"""Load failure scenarios: crash mid-transaction (R7), concurrent loads (R10), bad input
(R11), a failed load followed by a good one (R9). Real PostgreSQL, real Parquet."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pipeline.load.run as load_module
from pipeline import layout
from pipeline.errors import CorruptBatchError, DataQualityError, ReferentialIntegrityError
from pipeline.lake import Lake
from pipeline.load import LoadResult, facts, load
from pipeline.settings import Settings
from tests.processed_builders import full_contents, star_batch, write_batch

pytestmark = pytest.mark.postgres
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)


class PowerCutError(RuntimeError):
    pass


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "processed"))


def _batches(lake: Lake, names: list[str]) -> None:
    for k, name in enumerate(names):
        when = T0 + dt.timedelta(days=k)
        write_batch(
            lake,
            name,
            star_batch(when, ids=range(1 + k, 6 + k), suffix=name),
            committed_at=when.replace(tzinfo=dt.UTC),
        )


def _ledger(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT batch_run_id FROM etl_load_ledger ORDER BY loaded_at")
        return [r[0] for r in rows]


def _clean_pass(lake: Lake, make_database: Callable[[str], str]) -> dict[str, Any]:
    clean = make_database("clean")
    load("clean", Settings(processed_url=lake.url, warehouse_dsn=clean))
    return full_contents(clean)


def test_crash_before_commit_leaves_the_warehouse_unchanged_and_rerun_equals_clean_pass(
    lake: Lake, pg_dsn: str, make_database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R7: raise after staging and writing every table, inside the batch transaction."""
    _batches(lake, ["b1"])
    load("l1", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    _batches(lake, ["b1", "b2"])  # b2: changed dims and new fact versions
    before = full_contents(pg_dsn)
    real = load_module.record_batch

    def crash(conn: psycopg.Connection, *args: Any) -> None:
        real(conn, *args)  # everything of the batch is written, ledger row included
        (n,) = conn.execute("SELECT count(*) FROM fact_sales_order").fetchone()  # type: ignore[misc]
        assert n > len(before["fact_sales_order"])
        raise PowerCutError("power cut")

    monkeypatch.setattr(load_module, "record_batch", crash)
    with pytest.raises(PowerCutError):
        load("l2", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert full_contents(pg_dsn) == before
    assert _ledger(pg_dsn) == ["b1"]
    monkeypatch.setattr(load_module, "record_batch", real)
    assert load("l3", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn)).batches == ["b2"]
    assert full_contents(pg_dsn) == _clean_pass(lake, make_database)  # record ids included


def test_failed_load_leaves_later_batches_for_the_next_load_in_order(
    lake: Lake, pg_dsn: str, make_database
) -> None:
    """R9: b2 is broken, so b2 and b3 wait; once b2 is fixed the next load takes both."""
    _batches(lake, ["b1", "b2", "b3"])
    part = lake.path("fact_payment/run=b2/part-00000.parquet")
    good = open(part, "rb").read()  # noqa: SIM115
    with open(part, "wb") as f:
        f.write(good[: len(good) // 2])
    with pytest.raises(CorruptBatchError, match="fact_payment/run=b2"):
        load("l1", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert _ledger(pg_dsn) == ["b1"]
    assert {r[-1] for r in full_contents(pg_dsn)["fact_payment"]} == {"b1"}
    with open(part, "wb") as f:
        f.write(good)
    result = load("l2", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert result.batches == ["b2", "b3"]
    assert _ledger(pg_dsn) == ["b1", "b2", "b3"]
    assert full_contents(pg_dsn) == _clean_pass(lake, make_database)


def test_concurrent_loads_are_serialized_and_the_second_finds_nothing(
    lake: Lake, pg_dsn: str, make_database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _batches(lake, ["b1", "b2"])
    real = load_module.record_batch
    inside = threading.Event()

    def slow(*args: Any) -> None:
        inside.set()
        time.sleep(0.5)  # hold the lock while the other load starts
        real(*args)

    monkeypatch.setattr(load_module, "record_batch", slow)
    results: dict[str, LoadResult] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = load(name, Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
        except BaseException as exc:  # asserted below
            errors.append(exc)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join()
    second.join()
    assert errors == []
    assert results["first"].batches == ["b1", "b2"]
    assert results["second"].status == "nothing_to_do"
    assert _ledger(pg_dsn) == ["b1", "b2"]
    assert full_contents(pg_dsn) == _clean_pass(lake, make_database)


def test_lock_wait_timeout_is_a_transient_conflict(
    lake: Lake, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.errors import LoadConflictError

    load("init", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))  # migrate
    monkeypatch.setattr(load_module, "LOCK_WAIT_S", 0.2)
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (load_module.LOAD_LOCK,))
        with pytest.raises(LoadConflictError):
            load("blocked", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))


@pytest.mark.parametrize("bulk", [False, True], ids=["row-triggers", "set-based"])
def test_fact_with_missing_dimension_is_a_typed_error_and_nothing_is_applied(
    lake: Lake, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, bulk: bool
) -> None:
    bypassed = _spy_bypass(monkeypatch)
    if bulk:
        monkeypatch.setattr(facts, "BULK_FK_ROWS", 1)
    _batches(lake, ["b1"])
    load("l1", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    before = full_contents(pg_dsn)
    batch = star_batch(T0 + dt.timedelta(days=1), suffix="-changed")
    batch["fact_sales_order"][2]["sales_staff_id"] = 99  # source row 3
    write_batch(lake, "bad", batch, committed_at=(T0 + dt.timedelta(days=1)).replace(tzinfo=dt.UTC))
    with pytest.raises(ReferentialIntegrityError) as info:
        load("l2", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    err = info.value
    assert (err.table, err.column, err.referenced) == (
        "fact_sales_order",
        "sales_staff_id",
        "dim_staff",
    )
    assert err.key == "99 (row sales_order_id = 3)"
    assert "bad" in str(err)
    assert full_contents(pg_dsn) == before  # the batch's dimension changes too
    assert _ledger(pg_dsn) == ["b1"]
    assert bypassed == ([True] * 4 if bulk else [])  # b1: 3 facts; bad: fails on the 1st


def _spy_bypass(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record whether each bulk fact load switched the per-row FK triggers off."""
    calls: list[bool] = []
    real = facts._bypass_fk_triggers

    def spy(*args: Any) -> bool:
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(facts, "_bypass_fk_triggers", spy)
    return calls


def test_foreign_keys_stay_enforced_after_a_bulk_load(
    lake: Lake, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(facts, "BULK_FK_ROWS", 1)
    _batches(lake, ["b1"])
    load("l1", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SHOW session_replication_role").fetchone() == ("origin",)
        invalid = conn.execute("SELECT count(*) FROM pg_constraint WHERE NOT convalidated")
        assert invalid.fetchone() == (0,)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                "INSERT INTO fact_payment (payment_id, created_date, created_time, "
                "last_updated_date, last_updated_time, transaction_id, counterparty_id, "
                "payment_amount, currency_id, payment_type_id, paid, payment_date) "
                "SELECT 9, created_date, created_time, last_updated_date, last_updated_time, "
                "transaction_id, 777, payment_amount, currency_id, payment_type_id, paid, "
                "payment_date FROM fact_payment LIMIT 1"
            )


def test_bulk_load_by_a_role_without_trigger_bypass_still_loads(
    lake: Lake, pg_dsn: str, make_database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(facts, "BULK_FK_ROWS", 1)
    bypassed = _spy_bypass(monkeypatch)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE loader LOGIN PASSWORD 'loader-pw'")
        conn.execute("GRANT CREATE, TEMPORARY ON DATABASE " + conn.info.dbname + " TO loader")
        conn.execute("GRANT ALL ON SCHEMA public TO loader")
    loader = psycopg.conninfo.make_conninfo(pg_dsn, user="loader", password="loader-pw")
    try:
        _batches(lake, ["b1", "b2"])
        assert load("l", Settings(processed_url=lake.url, warehouse_dsn=loader)).batches == [
            "b1",
            "b2",
        ]
        assert bypassed == [False] * 6  # 2 batches x 3 facts, each with triggers on
        assert full_contents(pg_dsn) == _clean_pass(lake, make_database)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("REASSIGN OWNED BY loader TO postgres")
            conn.execute("DROP OWNED BY loader")
            conn.execute("DROP ROLE loader")


def _assert_nothing_applied(dsn: str) -> None:
    contents = full_contents(dsn)
    assert all(rows == [] for rows in contents.values())
    assert _ledger(dsn) == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("delete", "does not exist.*totesys-etl transform --rederive b1"),
        ("garbage", "truncated or corrupt.*totesys-etl transform --rederive b1"),
        ("rows", "the manifest says"),
        ("schema", "does not have the fact_payment schema"),
        ("manifest", "malformed"),
    ],
)
def test_missing_or_corrupt_input_is_a_typed_error_and_nothing_is_applied(
    lake: Lake, pg_dsn: str, damage: str, message: str
) -> None:
    _batches(lake, ["b1"])
    key = "fact_payment/run=b1/part-00000.parquet"
    entry = layout.log_entry(layout.BATCH_LOG, 1)  # what the load reads of batch b1
    manifest = lake.read_json(entry)
    if damage == "delete":
        lake.delete(key)
    elif damage == "garbage":
        lake.write_bytes(key, b"PAR1 not really parquet PAR1")
    elif damage == "rows":
        manifest["outputs"]["fact_payment"]["rows"] += 1
    elif damage == "schema":
        import pyarrow as pa

        lake.write_parquet(key, pa.table({"payment_id": pa.array([1], pa.int64())}))
    else:
        del manifest["committed_at"]
    lake.write_json(entry, manifest)
    with pytest.raises(CorruptBatchError, match=message):
        load("l", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    _assert_nothing_applied(pg_dsn)


@pytest.mark.parametrize(
    ("table", "column"), [("dim_staff", "first_name"), ("fact_payment", "payment_amount")]
)
def test_null_in_a_not_null_column_names_table_and_column(
    lake: Lake, pg_dsn: str, table: str, column: str
) -> None:
    import pyarrow as pa

    from tests.processed_builders import arrow

    batch = star_batch(T0)
    data = arrow(table, batch[table])
    nullable = pa.schema([f.with_nullable(True) for f in data.schema])
    values = data.column(column).to_pylist()
    values[1] = None
    index = data.schema.get_field_index(column)
    batch[table] = data.cast(nullable).set_column(
        index, nullable.field(column), pa.array(values, data.schema.field(column).type)
    )
    write_batch(lake, "b1", batch)
    with pytest.raises(DataQualityError, match=rf"{table}.*{column}"):
        load("l", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    _assert_nothing_applied(pg_dsn)


def test_two_rows_for_one_dimension_key_are_refused(lake: Lake, pg_dsn: str) -> None:
    batch = star_batch(T0)
    batch["dim_design"].append({**batch["dim_design"][0], "design_name": "other"})
    write_batch(lake, "b1", batch)
    with pytest.raises(DataQualityError, match=r"dim_design.*design_id = 1"):
        load("l", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    _assert_nothing_applied(pg_dsn)


def test_repeated_fact_versions_in_one_batch_load_once(lake: Lake, pg_dsn: str) -> None:
    batch = star_batch(T0)
    batch["fact_payment"] = batch["fact_payment"] + batch["fact_payment"][:2]
    write_batch(lake, "b1", batch, parts=3)
    result = load("l", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert result.rows["fact_payment"] == 5
    payments = full_contents(pg_dsn)["fact_payment"]
    assert [(r[0], r[1]) for r in payments] == [(i, i) for i in range(1, 6)]
