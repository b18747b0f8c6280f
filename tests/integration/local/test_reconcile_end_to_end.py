"""Completeness checked against the source, end to end on real PostgreSQL (R21-R23):

- a row committed an hour below the watermark (beyond any overlap window) arrives exactly
  once, through the next run's reconciliation;
- a hard-deleted sales order, with its transaction and payment, is marked `_deleted_at` on
  its dimension row and every fact version, and unmarked when the rows come back;
- a 10% delete is refused with `MassDeleteError` naming the count, and accepted with the flag;
- reconciling twice changes nothing; a reconciliation racing an extraction loses nothing
  and deletes nothing that exists;
- a row stamped in the future is counted and reported (and delivered).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.extract import held as held_module
from pipeline.extract.reconcile import reconcile_table
from pipeline.local.cli import main
from pipeline.local.runner import run_pipeline
from pipeline.local.simulator.seed import seed
from pipeline.settings import Settings
from tests.warehouse_compare import warehouse_contents

pytestmark = pytest.mark.postgres

VALUES = (  # the columns of a sales order besides its id and audit timestamps
    "design_id, staff_id, counterparty_id, units_sold, unit_price, currency_id, "
    "agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id"
)


def copy_first_order(stamp_sql: str) -> str:
    """SQL inserting a copy of the first sales order stamped `stamp_sql`; returns its id."""
    return (
        f"INSERT INTO sales_order (created_at, last_updated, {VALUES}) "
        f"SELECT created_at, {stamp_sql}, {VALUES} FROM sales_order "
        "ORDER BY sales_order_id LIMIT 1 RETURNING sales_order_id"
    )


def _one(dsn: str, query: str, *params: Any) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0] if len(row) == 1 else row


def _deleted(dsn: str, table: str, key: str, value: int) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                f"SELECT _deleted_at FROM {table} WHERE {key} = %s ORDER BY 1", (value,)
            )  # type: ignore[call-overload]
        ]


def _current(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Business contents of the rows that still exist (`_deleted_at IS NULL`)."""
    from psycopg import sql

    from pipeline.warehouse_schema import WAREHOUSE_TABLES

    out = {}
    with psycopg.connect(dsn) as conn:
        for name, table in WAREHOUSE_TABLES.items():
            cols = sql.SQL(", ").join(map(sql.Identifier, table.column_names))
            out[name] = conn.execute(
                sql.SQL("SELECT {} FROM {} WHERE _deleted_at IS NULL ORDER BY {}").format(
                    cols, sql.Identifier(name), cols
                )
            ).fetchall()
    return out


@pytest.fixture
def pipeline_db(make_database: Callable[[str], str], tmp_path: Path) -> tuple[str, str, Settings]:
    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.02, seed=21)
    settings = Settings.in_folder(tmp_path / "lake", source_dsn=source, warehouse_dsn=warehouse)
    first = run_pipeline(settings)
    assert first.succeeded, first.to_dict()
    passed = first.tables["sales_order"]["reconcile"]
    assert passed["buckets_differed"] == 0 and passed["buckets_compared"] > 0
    return source, warehouse, settings


def test_a_row_committed_an_hour_below_the_watermark_arrives_exactly_once(pipeline_db) -> None:
    source, warehouse, settings = pipeline_db
    with psycopg.connect(source, autocommit=True) as conn:
        below = "(SELECT max(last_updated) FROM sales_order) - interval '1 hour'"
        (new_id,) = conn.execute(copy_first_order(below)).fetchone()  # type: ignore[misc]
    report = run_pipeline(settings)
    assert report.succeeded, report.to_dict()
    passed = report.tables["sales_order"]["reconcile"]
    assert passed["rows_recovered"] == 1 and passed["buckets_differed"] == 1
    count = "SELECT count(*) FROM fact_sales_order WHERE sales_order_id = %s"
    assert _one(warehouse, count, new_id) == 1

    again = run_pipeline(settings)
    assert again.tables["sales_order"]["reconcile"]["rows_recovered"] == 0
    assert _one(warehouse, count, new_id) == 1


def test_a_deleted_order_is_marked_everywhere_and_unmarked_when_restored(pipeline_db) -> None:
    source, warehouse, settings = pipeline_db
    with psycopg.connect(source, autocommit=True) as conn:
        order, txn, payment = conn.execute(
            "SELECT t.sales_order_id, t.transaction_id, p.payment_id FROM transaction t "
            "JOIN payment p USING (transaction_id) WHERE t.sales_order_id IS NOT NULL "
            "ORDER BY 1 LIMIT 1"
        ).fetchone()  # type: ignore[misc]
        # A second version of the order: its fact has two rows.
        conn.execute(
            "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = "
            "last_updated + interval '1 second' WHERE sales_order_id = %s",
            (order,),
        )
    assert run_pipeline(settings).succeeded  # the older version is below the window: recovered
    assert len(_deleted(warehouse, "fact_sales_order", "sales_order_id", order)) == 2
    saved = {}
    with psycopg.connect(source, autocommit=True) as conn:
        for table, key, value in (
            ("payment", "payment_id", payment),
            ("transaction", "transaction_id", txn),
            ("sales_order", "sales_order_id", order),
        ):
            cur = conn.execute(f"SELECT * FROM {table} WHERE {key} = %s", (value,))  # type: ignore[call-overload]
            saved[table] = ([d.name for d in cur.description or []], cur.fetchone())
            conn.execute(f"DELETE FROM {table} WHERE {key} = %s", (value,))  # type: ignore[call-overload]

    report = run_pipeline(settings)
    assert report.succeeded, report.to_dict()
    for table in ("sales_order", "transaction", "payment"):
        assert report.tables[table]["reconcile"]["keys_deleted"] == 1, table
    assert report.transform and report.transform["deleted"]["sales_order"]["deleted"] == 1
    marked = _deleted(warehouse, "fact_sales_order", "sales_order_id", order)
    assert len(marked) == 2 and all(m is not None for m in marked)
    assert all(m is not None for m in _deleted(warehouse, "fact_payment", "payment_id", payment))
    assert _deleted(warehouse, "dim_transaction", "transaction_id", txn)[0] is not None
    with psycopg.connect(warehouse) as conn:  # nothing else is marked
        assert conn.execute(
            "SELECT count(*) FROM fact_sales_order WHERE _deleted_at IS NOT NULL"
        ).fetchone() == (2,)
        # The demo's business questions leave deleted rows out.
        from pipeline.local.demo import REPORTS

        payments = conn.execute(REPORTS["payments by type and status"]).fetchall()
        live = conn.execute("SELECT count(*) FROM fact_payment WHERE _deleted_at IS NULL")
        assert sum(r[2] for r in payments) == live.fetchone()[0]  # type: ignore[index]
        for query in REPORTS.values():
            conn.execute(query)  # type: ignore[call-overload]

    with psycopg.connect(source, autocommit=True) as conn:  # restored as they were
        for table in ("sales_order", "transaction", "payment"):
            names, values = saved[table]
            conn.execute(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES "  # type: ignore[call-overload]
                f"({', '.join(['%s'] * len(names))})",
                values,
            )
    restored = run_pipeline(settings)
    assert restored.succeeded, restored.to_dict()
    assert restored.tables["sales_order"]["reconcile"]["rows_recovered"] == 1
    assert _deleted(warehouse, "fact_sales_order", "sales_order_id", order) == [None, None]
    assert _deleted(warehouse, "fact_payment", "payment_id", payment) == [None]
    assert _deleted(warehouse, "dim_transaction", "transaction_id", txn) == [None]


def test_a_mass_delete_is_refused_with_the_count_and_accepted_with_the_flag(
    pipeline_db, capsys: pytest.CaptureFixture[str]
) -> None:
    source, warehouse, settings = pipeline_db
    total = _one(source, "SELECT count(*) FROM sales_order")
    with psycopg.connect(source, autocommit=True) as conn:
        doomed = [
            r[0]
            for r in conn.execute(
                "SELECT sales_order_id FROM sales_order ORDER BY sales_order_id DESC "
                "LIMIT (SELECT count(*) / 10 FROM sales_order)"
            )
        ]
        conn.execute(
            "DELETE FROM payment WHERE transaction_id IN (SELECT transaction_id FROM "
            "transaction WHERE sales_order_id = ANY(%s))",
            (doomed,),
        )
        conn.execute("DELETE FROM transaction WHERE sales_order_id = ANY(%s)", (doomed,))
        conn.execute("DELETE FROM sales_order WHERE sales_order_id = ANY(%s)", (doomed,))
    refused = run_pipeline(settings)
    assert not refused.succeeded
    error = refused.tables["sales_order"]["error"]
    assert error.startswith("MassDeleteError") and f"{len(doomed)} of the {total} keys" in error
    assert "--allow-mass-delete" in error
    assert (
        _one(warehouse, "SELECT count(*) FROM fact_sales_order WHERE _deleted_at IS NOT NULL") == 0
    )

    lake = ["--ingest-url", settings.ingest_url, "--source-dsn", source]
    tables = ["--tables", "sales_order,transaction,payment"]
    assert main(["reconcile", "--json", *lake, *tables]) == 1  # still refused without the flag
    capsys.readouterr()
    assert main(["reconcile", "--json", *lake, *tables, "--allow-mass-delete"]) == 0
    accepted = json.loads(capsys.readouterr().out)
    assert accepted["tables"]["sales_order"]["keys_deleted"] == len(doomed)
    report = run_pipeline(settings)
    assert report.succeeded, report.to_dict()
    marked = (
        "SELECT count(DISTINCT sales_order_id) FROM fact_sales_order WHERE _deleted_at IS NOT NULL"
    )
    assert _one(warehouse, marked) == len(doomed)


def test_reconciling_twice_changes_nothing(pipeline_db, capsys: pytest.CaptureFixture[str]) -> None:
    source, warehouse, settings = pipeline_db
    before = warehouse_contents(warehouse)
    files = sorted(p for p in Path(settings.ingest_url).rglob("*") if "_manifests" in p.parts)
    cli = ["reconcile", "--json", "--ingest-url", settings.ingest_url, "--source-dsn", source]
    for _ in range(2):
        assert main(cli) == 0
        out = json.loads(capsys.readouterr().out)
        for table, result in out["tables"].items():
            assert result["buckets_differed"] == 0 and result["manifests"] == [], table
    assert (
        sorted(p for p in Path(settings.ingest_url).rglob("*") if "_manifests" in p.parts) == files
    )
    assert run_pipeline(settings).succeeded
    assert warehouse_contents(warehouse) == before


def test_a_reconciliation_racing_an_extraction_loses_nothing_and_deletes_nothing(
    pipeline_db, make_database: Callable[[str], str], tmp_path: Path, monkeypatch
) -> None:
    """The reconciliation takes its snapshot, then waits while rows are inserted, updated
    and extracted by a run; when it goes on it holds a batch from a later snapshot whose
    keys its own snapshot lacks: they must not become tombstones."""
    source, warehouse, settings = pipeline_db
    paused, resume = threading.Event(), threading.Event()
    real_open = held_module.HeldState.open

    def slow_open(lake, spec, **options):
        if threading.current_thread().name == "racing-reconcile":
            paused.set()
            assert resume.wait(120)
        return real_open(lake, spec, **options)

    monkeypatch.setattr(held_module.HeldState, "open", slow_open)
    results: dict[str, Any] = {}

    def racing() -> None:
        results["reconcile"] = reconcile_table("sales_order", "racing", settings)

    thread = threading.Thread(target=racing, name="racing-reconcile")
    thread.start()
    assert paused.wait(120)
    with psycopg.connect(source, autocommit=True) as conn:
        for _ in range(5):
            conn.execute(copy_first_order("localtimestamp"))
        conn.execute(
            "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = localtimestamp "
            "WHERE sales_order_id IN (SELECT sales_order_id FROM sales_order ORDER BY 1 LIMIT 3)"
        )
    during = run_pipeline(settings)
    assert during.succeeded, during.to_dict()
    resume.set()
    thread.join(120)
    assert results["reconcile"].keys_deleted == 0, results["reconcile"]

    final = run_pipeline(settings)
    assert final.succeeded, final.to_dict()
    assert (
        _one(warehouse, "SELECT count(*) FROM fact_sales_order WHERE _deleted_at IS NOT NULL") == 0
    )
    clean = make_database("clean")
    assert run_pipeline(
        Settings.in_folder(tmp_path / "clean", source_dsn=source, warehouse_dsn=clean)
    ).succeeded
    assert _current(warehouse)["dim_staff"] == _current(clean)["dim_staff"]
    ids = "SELECT array_agg(DISTINCT sales_order_id ORDER BY sales_order_id) FROM fact_sales_order"
    assert _one(warehouse, ids) == _one(clean, ids)


def test_rows_stamped_in_the_future_are_counted_reported_and_delivered(pipeline_db) -> None:
    source, warehouse, settings = pipeline_db
    with psycopg.connect(source, autocommit=True) as conn:
        future_stamp = "timestamp '2030-01-01 00:00:00'"
        (future,) = conn.execute(copy_first_order(future_stamp)).fetchone()  # type: ignore[misc]
    report = run_pipeline(settings)
    data = report.to_dict()
    assert data["future_rows"] == 1
    assert any("ahead of the source's clock" in w for w in report.tables["sales_order"]["warnings"])
    count = "SELECT count(*) FROM fact_sales_order WHERE sales_order_id = %s"
    assert _one(warehouse, count, future) == 1
    again = run_pipeline(settings).to_dict()
    assert again["future_rows"] == 1 and _one(warehouse, count, future) == 1  # still counted
