"""The real November 2024 snapshot through the real extract, transform and load.

Issue 4's acceptance numbers: 11,187 / 4,649 / 15,836 fact rows and 20 / 30 / 473 / 3 /
20 / 15,836 / 4 dimension rows, nothing quarantined.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pipeline.local.runner import run_pipeline
from pipeline.local.simulator.snapshot import load_snapshot
from pipeline.settings import Settings
from tests.integration.transform.test_snapshot import EXPECTED_ROWS as EXPECTED_WAREHOUSE_ROWS

pytestmark = pytest.mark.postgres

SNAPSHOT_ROWS = {
    "address": 30, "counterparty": 20, "currency": 3, "department": 8, "design": 473,
    "payment": 15_836, "payment_type": 4, "purchase_order": 4_649, "sales_order": 11_187,
    "staff": 20, "transaction": 15_836,
}  # fmt: skip


def test_snapshot_through_extract_transform_load(
    snapshot_dir: str, make_database: Callable[[str], str], tmp_path: Path
) -> None:
    source, warehouse = make_database("snapshot"), make_database("warehouse")
    assert load_snapshot(source, snapshot_dir) == SNAPSHOT_ROWS

    report = run_pipeline(
        Settings(
            source_dsn=source,
            warehouse_dsn=warehouse,
            ingest_url=str(tmp_path / "ingestion"),
            processed_url=str(tmp_path / "processed"),
        )
    )

    assert report.succeeded, report.to_dict()
    assert {t: r["rows"] for t, r in report.tables.items()} == SNAPSHOT_ROWS
    assert report.quarantined == 0
    with psycopg.connect(warehouse) as conn:
        counts = {
            name: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            ).fetchone()[0]  # type: ignore[index]
            for name in EXPECTED_WAREHOUSE_ROWS
        }
        total = conn.execute(
            "SELECT sum(units_sold * unit_price) FROM fact_sales_order"
        ).fetchone()[0]  # type: ignore[index]
    assert counts == EXPECTED_WAREHOUSE_ROWS
    with psycopg.connect(source) as conn:
        source_total = conn.execute(
            "SELECT sum(units_sold * unit_price) FROM sales_order"
        ).fetchone()[0]  # type: ignore[index]
    assert total == source_total  # numeric(10,2) survives the round trip to the cent
