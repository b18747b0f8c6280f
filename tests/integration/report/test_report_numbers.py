"""The report's numbers against an independent computation from every warehouse row.

The expected values are computed here in Python from all fact rows (reduced to the
newest version per source id with `tests.warehouse_compare.latest_versions`), not with
the report's SQL, so a wrong de-duplication, join, window or currency split fails.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pipeline.lake import Lake
from pipeline.report.quarantine import quarantine_counts
from pipeline.report.warehouse import gather
from pipeline.report.window import ReportWindow
from pipeline.warehouse_schema import DELETED_AT, WAREHOUSE_TABLES
from tests.integration.report.conftest import (
    DELETED_ORDER,
    EDITED_ORDER,
    REJECTED_ORDER,
    LoadedWarehouse,
)
from tests.warehouse_compare import latest_versions, warehouse_contents

pytestmark = pytest.mark.postgres
TODAY = date(2024, 11, 1)


def current(contents: dict[str, list[tuple[Any, ...]]], table: str) -> list[dict[str, Any]]:
    """The newest version of each source row not deleted in totesys."""
    names = WAREHOUSE_TABLES[table].column_names
    gone = {row[0] for row in contents[f"{table}:deleted"]}
    return [
        dict(zip(names, row, strict=True))
        for row in latest_versions(contents[table])
        if row[0] not in gone
    ]


def codes(contents: dict[str, list[tuple[Any, ...]]]) -> dict[int, str]:
    return {row[0]: row[1] for row in contents["dim_currency"]}


@pytest.fixture(scope="module")
def contents(loaded: LoadedWarehouse) -> dict[str, list[tuple[Any, ...]]]:
    """Every warehouse row, and per fact (`<fact>:deleted`) the source ids marked deleted."""
    found = warehouse_contents(loaded.warehouse)
    with psycopg.connect(loaded.warehouse) as conn:
        for table in (t for t in WAREHOUSE_TABLES if t.startswith("fact_")):
            key = WAREHOUSE_TABLES[table].natural_key[0]
            found[f"{table}:deleted"] = conn.execute(
                sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL").format(
                    sql.Identifier(key), sql.Identifier(table), sql.Identifier(DELETED_AT)
                )
            ).fetchall()
    return found


def test_the_deleted_order_is_marked_and_left_out(loaded, contents):
    assert contents["fact_sales_order:deleted"] == [(DELETED_ORDER,)]
    assert contents["fact_payment:deleted"]  # its payments
    results = gather(loaded.warehouse, ReportWindow(), TODAY)
    counted = sum(int(r["n"]) for r in results.part("sales", "total"))
    assert counted == len(latest_versions(contents["fact_sales_order"])) - 1


def test_sales_totals_months_and_top_designs_use_current_versions_per_currency(loaded, contents):
    results = gather(loaded.warehouse, ReportWindow(), TODAY)
    currency = codes(contents)
    sales = current(contents, "fact_sales_order")
    totals: dict[str, Decimal] = defaultdict(Decimal)
    months: dict[tuple[str, date], Decimal] = defaultdict(Decimal)
    designs: dict[tuple[str, int], Decimal] = defaultdict(Decimal)
    for row in sales:
        code, value = currency[row["currency_id"]], row["units_sold"] * row["unit_price"]
        totals[code] += value
        months[(code, row["created_date"].replace(day=1))] += value
        designs[(code, row["design_id"])] += value
    assert {r["currency"]: r["value"] for r in results.part("sales", "total")} == totals
    assert {r["currency"]: int(r["n"]) for r in results.part("sales", "total")} == Counter(
        currency[r["currency_id"]] for r in sales
    )
    assert {(r["currency"], r["period"]): r["value"] for r in results.part("sales", "month")} == (
        months
    )
    for code in totals:
        ranked = sorted(((v, d) for (c, d), v in designs.items() if c == code), reverse=True)
        top = [r for r in results.part("sales", "design") if r["currency"] == code]
        assert [r["value"] for r in top] == [v for v, _ in ranked[:10]]
    # the edited order counts with its second version only, the rejected one with its first
    versions = Counter(row[0] for row in contents["fact_sales_order"])
    assert versions[EDITED_ORDER] == 2 and versions[REJECTED_ORDER] == 1


def test_people_rollups_match_the_rows(loaded, contents):
    results = gather(loaded.warehouse, ReportWindow(), TODAY)
    currency = codes(contents)
    staff = {r[0]: r for r in contents["dim_staff"]}
    counterparty = {r[0]: r[1] for r in contents["dim_counterparty"]}
    departments: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    units: Counter[str] = Counter()
    parties: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in current(contents, "fact_sales_order"):
        code, value = currency[row["currency_id"]], row["units_sold"] * row["unit_price"]
        person = staff[row["sales_staff_id"]]
        departments[(code, person[3])] += value
        units[f"{person[1]} {person[2]}"] += row["units_sold"]
        parties[(code, counterparty[row["counterparty_id"]])] += value
    got = {(r["currency"], r["label"]): r["value"] for r in results.part("sales", "department")}
    assert got == departments
    got_units = {r["label"]: int(r["units"]) for r in results.part("sales", "staff_units")}
    assert got_units == dict(units.most_common(25))
    for code in {c for c, _ in parties}:
        best = max(v for (c, _), v in parties.items() if c == code)
        top = [r for r in results.part("sales", "counterparty") if r["currency"] == code]
        assert top[0]["value"] == best


def test_purchases_and_payments(loaded, contents):
    results = gather(loaded.warehouse, ReportWindow(), TODAY)
    currency = codes(contents)
    purchase_totals: dict[str, Decimal] = defaultdict(Decimal)
    for row in current(contents, "fact_purchase_order"):
        purchase_totals[currency[row["currency_id"]]] += (
            row["item_quantity"] * row["item_unit_price"]
        )
    assert {r["currency"]: r["value"] for r in results.part("purchases", "total")} == (
        purchase_totals
    )
    types = {r[0]: r[1] for r in contents["dim_payment_type"]}
    status: Counter[tuple[str, date, str]] = Counter()
    overdue: dict[str, Decimal] = defaultdict(Decimal)
    for row in current(contents, "fact_payment"):
        kind = types[row["payment_type_id"]]
        status[(kind, row["payment_date"].replace(day=1), "paid" if row["paid"] else "unpaid")] += 1
        if not row["paid"] and row["payment_date"] < TODAY:
            overdue[currency[row["currency_id"]]] += row["payment_amount"]
    got = {
        (r["label"], r["period"], r["detail"]): int(r["n"])
        for r in results.part("payments", "month")
    }
    assert got == status
    assert overdue, "the seeded history should hold unpaid payments due before TODAY"
    assert {r["currency"]: r["value"] for r in results.part("payments", "overdue_total")} == overdue


def test_window_limits_business_rows_but_not_lineage(loaded, contents):
    window = ReportWindow(date(2023, 3, 1), date(2023, 8, 31))
    results = gather(loaded.warehouse, window, TODAY)
    currency = codes(contents)
    sales = current(contents, "fact_sales_order")
    expected: dict[str, Decimal] = defaultdict(Decimal)
    for row in sales:
        if window.contains(row["created_date"]):
            expected[currency[row["currency_id"]]] += row["units_sold"] * row["unit_price"]
    assert {r["currency"]: r["value"] for r in results.part("sales", "total")} == expected
    periods = {r["period"] for r in results.part("sales", "month")}
    assert min(periods) == date(2023, 3, 1) and max(periods) == date(2023, 8, 1)
    assert sum(int(r["n"]) for r in results.part("sales", "lineage")) == len(sales)
    overdue: dict[str, Decimal] = defaultdict(Decimal)
    payments = current(contents, "fact_payment")
    for row in payments:
        if window.contains(row["payment_date"]) and not row["paid"] and row["payment_date"] < TODAY:
            overdue[currency[row["currency_id"]]] += row["payment_amount"]
    assert {r["currency"]: r["value"] for r in results.part("payments", "overdue_total")} == overdue
    assert sum(int(r["n"]) for r in results.part("payments", "month")) == sum(
        window.contains(r["payment_date"]) for r in payments
    )
    assert sum(int(r["n"]) for r in results.part("payments", "lineage")) == len(payments)


def test_lineage_and_ledger_account_for_every_row(loaded, contents):
    results = gather(loaded.warehouse, ReportWindow(), TODAY)
    for star, table in (("sales", "fact_sales_order"), ("payments", "fact_payment")):
        lineage = results.part(star, "lineage")
        assert sum(int(r["n"]) for r in lineage) == len(current(contents, table))
        (newest,) = (r["newest"] for r in results.part(star, "freshness"))
        assert newest == max(datetime.combine(r[3], r[4]) for r in contents[table])
    dims = {r["table_name"]: int(r["n"]) for r in results.dimension_lineage}
    assert dims == {t: len(contents[t]) for t in dims}
    assert set(dims) == {t for t in WAREHOUSE_TABLES if not t.startswith("fact_")}
    written = Counter()
    for r in results.ledger:
        written[r["table_name"]] += int(r["n"])
    with psycopg.connect(loaded.warehouse) as conn:  # a deletion mark is a row written too
        (marked,) = conn.execute(  # type: ignore[misc]
            "SELECT count(*) FROM fact_sales_order WHERE _deleted_at IS NOT NULL"
        ).fetchone()
    assert written["fact_sales_order"] == len(contents["fact_sales_order"]) + marked  # all versions
    assert {r["load_run_id"] for r in results.ledger} and results.ledger_summary["batches"] >= 2


def test_quarantine_counts_come_from_committed_manifests(loaded):
    counts = quarantine_counts(Lake(loaded.processed_url), ReportWindow())
    assert [(c.source_table, c.rule, c.rows) for c in counts] == [
        ("sales_order", "negative_value", 1)
    ]
    assert counts[0].committed_on == datetime.now(UTC).date()
    assert quarantine_counts(Lake(loaded.processed_url), ReportWindow(until=date(2020, 1, 1))) == []
