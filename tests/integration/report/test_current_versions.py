"""The report's current rows (the load's `_superseded_at` marks) against plain queries.

A warehouse with a history that exercises every way a version's standing changes, loaded
by the real pipeline on real PostgreSQL:

- run 1: the seed; run 2: an order edited (its first version superseded), a payment
  edited, an order deleted with its transaction and payment (`_deleted_at` set);
- run 3: the deleted rows restored as they were (`_deleted_at` cleared), the edited order
  edited again (a third version);
- a hand-made batch loaded by `load_batch`: two versions of one order in the same batch,
  a late version of another order that is older than its current one (it arrives
  superseded and must not displace the current one), and a correction (a version the
  warehouse holds, re-delivered with another value: updated in place);
- then the ledger is emptied and everything re-loaded: nothing may count twice.

After each stage the report summaries the load keeps must equal hand-written SQL over the
current rows, group by group (`summary_check`), the report must read the same numbers from
them as from the facts, and the marks must equal the versions' order recomputed over the whole fact
(`lead` per source id, SQL written here), and the report's numbers must equal those of
the plain query (newest version per source id by `DISTINCT ON`, `_deleted_at IS NULL`),
for every chart and per currency, and of a recomputation in Python from all rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from pipeline.lake import Lake
from pipeline.load import batches
from pipeline.load.ddl import LEDGER_TABLE
from pipeline.load.migrations import migrate, version_of
from pipeline.load.run import load, load_batch
from pipeline.load.summaries import summary_statements
from pipeline.local.runner import run_pipeline
from pipeline.report import queries
from pipeline.report.warehouse import WarehouseResults, gather
from pipeline.report.window import ReportWindow
from pipeline.settings import Settings
from pipeline.summary_schema import SUMMARY_TABLES
from pipeline.warehouse_schema import DELETED_AT, FACTS, SUPERSEDED_AT, WAREHOUSE_TABLES
from tests.integration.report import summary_check
from tests.integration.report.conftest import seeded_and_loaded
from tests.integration.report.summary_check import assert_summaries_exact

pytestmark = pytest.mark.postgres

TODAY = date(2024, 11, 1)
SUMMARIES_VERSION = version_of(summary_statements).version
SALES = WAREHOUSE_TABLES["fact_sales_order"]


@dataclass(frozen=True)
class History:
    warehouse: str
    settings: Settings
    extra: Path  # the hand-made batch's lake


def _plain_current_rows(table: Any, columns: tuple[str, ...]) -> sql.Composed:
    """The current rows without the marks: newest version per source id, not deleted."""
    source_id, day, clock = (sql.Identifier(c) for c in table.natural_key)
    return sql.SQL(
        "SELECT * FROM (SELECT DISTINCT ON ({id}) {cols}, _loaded_batch, {d} + {t} AS updated, "
        "{deleted} FROM {table} ORDER BY {id}, {d} DESC, {t} DESC) AS v WHERE {deleted} IS NULL"
    ).format(
        id=source_id,
        d=day,
        t=clock,
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        deleted=sql.Identifier(DELETED_AT),
        table=sql.Identifier(table.name),
    )


def _report(
    dsn: str, monkeypatch: pytest.MonkeyPatch, plain: bool, summaries: bool = False
) -> WarehouseResults:
    with monkeypatch.context() as m:
        if plain:
            m.setattr(queries, "current_rows", _plain_current_rows)
        return gather(dsn, ReportWindow(), TODAY, summaries=summaries)


def _marks_wrong(conn: psycopg.Connection) -> dict[str, int]:
    """Per fact, the rows whose mark differs from the next version's last_updated."""
    wrong = {}
    for t in FACTS:
        sid, d, tm = t.natural_key
        (n,) = conn.execute(  # type: ignore[misc]
            f'SELECT count(*) FROM (SELECT "{SUPERSEDED_AT}" AS mark, lead("{d}" + "{tm}") '
            f'OVER (PARTITION BY "{sid}" ORDER BY "{d}", "{tm}") AS next FROM "{t.name}") v '
            "WHERE mark IS DISTINCT FROM next"
        ).fetchone()
        wrong[t.name] = n
    return wrong


def _python_totals(conn: psycopg.Connection) -> dict[str, dict[str, tuple[int, Decimal]]]:
    """Count and value per currency of each star, from every fact row, in Python."""
    codes = dict(conn.execute("SELECT currency_id, currency_code FROM dim_currency").fetchall())
    measures = {
        "fact_sales_order": ("units_sold * unit_price", "sales"),
        "fact_purchase_order": ("item_quantity * item_unit_price", "purchases"),
    }
    totals: dict[str, dict[str, tuple[int, Decimal]]] = {}
    for name, (value, star) in measures.items():
        t = WAREHOUSE_TABLES[name]
        sid, d, tm = t.natural_key
        newest: dict[int, tuple[Any, ...]] = {}
        for row in conn.execute(
            f'SELECT "{sid}", "{d}", "{tm}", currency_id, {value}, "{DELETED_AT}" FROM "{name}"'
        ):
            held = newest.get(row[0])
            if held is None or (row[1], row[2]) > (held[1], held[2]):
                newest[row[0]] = row
        sums: dict[str, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
        for row in newest.values():
            if row[5] is None:
                sums[codes[row[3]]][0] += 1
                sums[codes[row[3]]][1] += row[4]
        totals[star] = {k: (v[0], v[1]) for k, v in sums.items()}
    return totals


def check(history: History, monkeypatch: pytest.MonkeyPatch) -> WarehouseResults:
    """Marks exact, report == plain queries == Python; returns the report's numbers."""
    with psycopg.connect(history.warehouse) as conn:
        assert _marks_wrong(conn) == {t.name: 0 for t in FACTS}
        python = _python_totals(conn)
    marked = _report(history.warehouse, monkeypatch, plain=False)
    assert marked == _report(history.warehouse, monkeypatch, plain=True)
    assert_summaries_exact(history.warehouse)  # every group, against hand-written SQL
    assert _report(history.warehouse, monkeypatch, plain=False, summaries=True) == marked
    for star in ("sales", "purchases"):
        totals = {r["currency"]: (r["n"], r["value"]) for r in marked.part(star, "total")}
        assert totals == python[star], star
    assert len(python["sales"]) > 1  # money per currency: more than one currency here
    return marked


def _order_versions(dsn: str, order: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            f'SELECT last_updated_date + last_updated_time, "{SUPERSEDED_AT}", "{DELETED_AT}" '
            "FROM fact_sales_order WHERE sales_order_id = %s ORDER BY 1",
            (order,),
        ).fetchall()


def _business(results: WarehouseResults, star: str) -> list[dict[str, Any]]:
    """A star's rows but the lineage ones (those depend on the ledger's load times)."""
    return [r for r in getattr(results, star) if r["part"] != "lineage"]


def _fact_rows(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            t.name: conn.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0]  # type: ignore[index]
            for t in FACTS
        }


def _edit(conn: psycopg.Connection, order: int, seconds: int) -> None:
    conn.execute(
        "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = "
        "(SELECT max(last_updated) FROM sales_order) + %s * interval '1 second' "
        "WHERE sales_order_id = %s",
        (seconds, order),
    )


def _hand_made_batch(
    dsn: str, path: Path, late: int, twice: int, fixed: int
) -> batches.ProcessedBatch:
    """Two new versions of `twice` (1 and 2 ms after its newest), one of `late` older than
    its only one (midnight of the same day: dim_date holds that day), and `fixed`'s current
    version again with other units (a correction)."""
    columns = SALES.column_names
    with psycopg.connect(dsn) as conn:
        rows = {
            order: dict(
                zip(
                    columns,
                    conn.execute(
                        sql.SQL("SELECT {} FROM fact_sales_order WHERE sales_order_id = %s "
                                "ORDER BY last_updated_date DESC, last_updated_time DESC LIMIT 1")
                        .format(sql.SQL(", ").join(map(sql.Identifier, columns))),
                        (order,),
                    ).fetchone() or (),
                    strict=True,
                )
            )
            for order in (late, twice, fixed)
        }  # fmt: skip
    made = []
    for order, shift, units in ((late, None, 3), (twice, 1, 5), (twice, 2, 7)):
        row = dict(rows[order], units_sold=rows[order]["units_sold"] + units)
        day = row["last_updated_date"]
        stamp = datetime.combine(day, row["last_updated_time"])
        stamp = (
            datetime.combine(day, time.min)
            if shift is None
            else stamp + timedelta(milliseconds=shift)
        )
        assert stamp.date() == day and stamp.time() != row["last_updated_time"]
        row["last_updated_time"] = stamp.time()
        made.append(row)
    made.append(dict(rows[fixed], units_sold=rows[fixed]["units_sold"] + 11))
    key = "fact_sales_order/run=hand-made/part-00000.parquet"
    lake = Lake(str(path))
    lake.write_parquet(key, pa.Table.from_pylist(made, schema=SALES.arrow_schema))
    out = batches.TableOutput(SALES, (key,), len(made))
    return batches.ProcessedBatch(
        "hand-made", datetime.now(UTC), {SALES.name: out}, "_manifests/hand-made.json"
    )


@pytest.fixture(scope="module")
def history(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    lake = tmp_path_factory.mktemp("versions-lake")
    with seeded_and_loaded(pg_server, lake, "versions", 0.02, 13) as first:
        yield History(first.warehouse, first.settings, lake / "hand-made")


def test_marks_and_report_through_edits_deletes_restores_and_reloads(
    history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, warehouse = history.settings.source_dsn, history.warehouse
    check(history, monkeypatch)  # a first load: every version current

    with psycopg.connect(source, autocommit=True) as conn:
        restored, txn, payment = conn.execute(
            "SELECT t.sales_order_id, t.transaction_id, p.payment_id FROM transaction t "
            "JOIN payment p USING (transaction_id) WHERE t.sales_order_id IS NOT NULL "
            "ORDER BY 1 LIMIT 1"
        ).fetchone()  # type: ignore[misc]
        edited, late, twice, fixed = (
            r[0]
            for r in conn.execute(
                "SELECT sales_order_id FROM sales_order WHERE sales_order_id <> %s "
                "ORDER BY sales_order_id DESC LIMIT 4",
                (restored,),
            )
        )
        _edit(conn, edited, 1)
        conn.execute(
            "UPDATE payment SET payment_amount = payment_amount + 1, last_updated = "
            "(SELECT max(last_updated) FROM payment) + interval '1 second' "
            "WHERE payment_id = (SELECT max(payment_id) FROM payment WHERE payment_id <> %s)",
            (payment,),
        )
        saved = {}
        for table, key, value in (
            ("payment", "payment_id", payment),
            ("transaction", "transaction_id", txn),
            ("sales_order", "sales_order_id", restored),
        ):
            cur = conn.execute(f"SELECT * FROM {table} WHERE {key} = %s", (value,))  # type: ignore[call-overload]
            saved[table] = ([d.name for d in cur.description or []], cur.fetchone())
            conn.execute(f"DELETE FROM {table} WHERE {key} = %s", (value,))  # type: ignore[call-overload]
    second = run_pipeline(history.settings)
    assert second.succeeded, second.to_dict()
    assert [v[2] is not None for v in _order_versions(warehouse, restored)] == [True]
    assert [v[1] is None for v in _order_versions(warehouse, edited)] == [False, True]
    with_deletes = check(history, monkeypatch)

    with psycopg.connect(source, autocommit=True) as conn:
        for table in ("sales_order", "transaction", "payment"):  # restored as they were
            names, values = saved[table]
            conn.execute(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES "  # type: ignore[call-overload]
                f"({', '.join(['%s'] * len(names))})",
                values,
            )
        _edit(conn, edited, 2)
    third = run_pipeline(history.settings)
    assert third.succeeded, third.to_dict()
    assert _order_versions(warehouse, restored)[0][1:] == (None, None)
    assert [v[1] is None for v in _order_versions(warehouse, edited)] == [False, False, True]
    restored_numbers = check(history, monkeypatch)
    sales_n = {r["currency"]: r["n"] for r in restored_numbers.part("sales", "total")}
    assert sum(sales_n.values()) == 1 + sum(
        r["n"] for r in with_deletes.part("sales", "total")
    )  # the restored order counts again

    batch = _hand_made_batch(warehouse, history.extra, late, twice, fixed)
    fixed_before = _order_versions(warehouse, fixed)
    with psycopg.connect(warehouse) as conn:
        written = load_batch(conn, Lake(str(history.extra)), batch, "hand-made-load")
    assert written[SALES.name] == 4  # three versions appended, one corrected
    assert _order_versions(warehouse, fixed) == fixed_before  # in place: no new version
    with psycopg.connect(warehouse) as conn:
        assert conn.execute(
            "SELECT _loaded_batch FROM fact_sales_order WHERE sales_order_id = %s", (fixed,)
        ).fetchone() == ("hand-made",)
    late_versions = _order_versions(warehouse, late)
    assert len(late_versions) == 2 and late_versions[0][1] == late_versions[1][0]
    assert late_versions[1][1] is None  # the late older version did not displace it
    twice_versions = _order_versions(warehouse, twice)
    assert [v[1] for v in twice_versions] == [twice_versions[1][0], twice_versions[2][0], None]
    loaded = check(history, monkeypatch)

    counts = _fact_rows(warehouse)
    with psycopg.connect(warehouse) as conn:  # every batch pending again
        conn.execute(f'DELETE FROM "{LEDGER_TABLE}"')
    again = load("reload", history.settings)
    assert len(again.batches) == 3  # re-applied in order: run 2's delete, run 3's restore
    assert _fact_rows(warehouse) == counts  # every version was already there
    check(history, monkeypatch)  # the replayed batch re-delivered `fixed` as it first was
    with psycopg.connect(warehouse) as conn:  # so only the correction is applied again
        assert load_batch(conn, Lake(str(history.extra)), batch, "hand-made-again") == {
            SALES.name: 1
        }
    reloaded = check(history, monkeypatch)
    for star in ("sales", "purchases", "payments"):  # the ledger itself was rewritten
        assert _business(reloaded, star) == _business(loaded, star), star

    kept = summary_check.snapshot(warehouse)  # the migration's backfill gives the same
    with psycopg.connect(warehouse) as conn:
        for name in SUMMARY_TABLES:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (SUMMARIES_VERSION,))
    assert migrate(warehouse) == [SUMMARIES_VERSION]
    assert summary_check.snapshot(warehouse) == kept
    summary_check.assert_summaries_exact(warehouse)
