"""The real November 2024 snapshot in a database made from the production schema file,
through `totesys-etl seed --from-parquet --into-existing` and `totesys-etl run`.

Acceptance numbers: every table extracts, 11,187 / 4,649 / 15,836 fact rows and
20 / 30 / 473 / 3 / 20 / 15,836 / 4 dimension rows, nothing quarantined, no warning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pipeline.catalog import ENUMS
from pipeline.local.cli import main
from tests.integration.transform.test_snapshot import EXPECTED_ROWS as EXPECTED_WAREHOUSE_ROWS

pytestmark = pytest.mark.postgres

SNAPSHOT_ROWS = {
    "address": 30, "counterparty": 20, "currency": 3, "department": 8, "design": 473,
    "payment": 15_836, "payment_type": 4, "purchase_order": 4_649, "sales_order": 11_187,
    "staff": 20, "transaction": 15_836,
}  # fmt: skip


def _one(dsn: str, query: str) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def test_snapshot_in_the_production_schema_through_totesys_etl_run(
    production_source: str,
    snapshot_dir: str,
    make_database: Callable[[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, warehouse = production_source, make_database("warehouse")
    seed_args = ["seed", "--json", "--dsn", source, "--from-parquet", snapshot_dir]
    assert main([*seed_args, "--into-existing"]) == 0
    assert json.loads(capsys.readouterr().out) == SNAPSHOT_ROWS

    run_args = [
        "run", "--json", "--source-dsn", source, "--warehouse-dsn", warehouse,
        "--ingest-url", str(tmp_path / "ingestion"), "--processed-url", str(tmp_path / "processed"),
    ]  # fmt: skip
    assert main(run_args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "succeeded", report
    assert {t: r["status"] for t, r in report["tables"].items()} == dict.fromkeys(
        SNAPSHOT_ROWS, "ok"
    )
    assert {t: r["rows"] for t, r in report["tables"].items()} == SNAPSHOT_ROWS
    assert (report["quarantined"], report["warnings"]) == (0, {})

    with psycopg.connect(warehouse) as conn:
        counts = {
            name: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            ).fetchone()[0]  # type: ignore[index]
            for name in EXPECTED_WAREHOUSE_ROWS
        }
        kinds = [r[0] for r in conn.execute("SELECT payment_type_name FROM dim_payment_type")]
    assert counts == EXPECTED_WAREHOUSE_ROWS
    assert sorted(kinds) == sorted(ENUMS["PaymentTypeName"])
    for fact, expression, table in (
        ("fact_sales_order", "sum(units_sold * unit_price)", "sales_order"),
        ("fact_purchase_order", "sum(item_quantity * item_unit_price)", "purchase_order"),
        ("fact_payment", "sum(payment_amount) FILTER (WHERE paid)", "payment"),
    ):  # every star holds the snapshot's values, to the cent
        assert _one(warehouse, f"SELECT {expression} FROM {fact}") == _one(
            source, f"SELECT {expression} FROM {table}"
        ), fact

    with psycopg.connect(source, autocommit=True) as conn:  # the sequences moved past the ids
        new_id = conn.execute(
            "INSERT INTO currency (currency_code, last_updated) "
            "VALUES ('CHF', '2024-11-15 15:00') RETURNING currency_id"
        ).fetchone()
    assert new_id == (4,)
    assert main(["simulate", "--dsn", source, "--days", "3", "--seed", "1", "--json"]) == 0
    simulated = json.loads(capsys.readouterr().out)
    assert simulated["sales_orders"] > 0 and simulated["payments_paid"] > 0
    assert main(run_args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["status"] == "succeeded" and again["loaded"]["dim_currency"] == 1
    assert again["loaded"]["fact_sales_order"] == simulated["sales_orders"]
