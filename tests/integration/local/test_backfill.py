"""R24: a row fixed in totesys without bumping `last_updated`, then backfilled as
docs/OPERATIONS.md says, shows its fixed values in the warehouse; an identical backfill
changes nothing at all (every table's full contents, record ids and lineage included)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pipeline.local.cli import main
from pipeline.local.runner import run_pipeline
from pipeline.local.simulator.seed import seed
from pipeline.settings import Settings
from pipeline.warehouse_schema import WAREHOUSE_TABLES
from tests.warehouse_compare import assert_equivalent_to_clean_pass, warehouse_contents

pytestmark = pytest.mark.postgres


def table_checksums(dsn: str) -> dict[str, str]:
    """md5 of every row of every warehouse table, all columns (ids and lineage too)."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for name in WAREHOUSE_TABLES:
            query = sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
            ).format(sql.Identifier(name))
            out[name] = conn.execute(query).fetchone()[0]  # type: ignore[index]
    return out


def _fix_in_place(source: str) -> tuple[str, str]:
    """Change one sales order, one payment and one staff row without touching
    last_updated; return a backfill window (ISO) that covers the three rows."""
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE sales_order SET units_sold = 777777 WHERE sales_order_id = 3")
        conn.execute("UPDATE payment SET payment_amount = 1.23 WHERE payment_id = 5")
        conn.execute("UPDATE staff SET first_name = 'Fixed' WHERE staff_id = 2")
        low, high = conn.execute(
            "SELECT min(lu), max(lu) FROM (SELECT last_updated FROM sales_order "
            "WHERE sales_order_id = 3 UNION ALL SELECT last_updated FROM payment "
            "WHERE payment_id = 5 UNION ALL SELECT last_updated FROM staff WHERE staff_id = 2)"
            " AS t(lu)"
        ).fetchone()  # type: ignore[misc]
    return low.isoformat(), (high.replace(microsecond=0).isoformat() + ".999")


def test_backfill_after_an_in_place_fix_shows_the_fixed_values_and_repeating_it_is_a_no_op(
    make_database: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.02, seed=24)
    lake = ["--ingest-url", str(tmp_path / "i"), "--processed-url", str(tmp_path / "p")]
    dsns = ["--source-dsn", source, "--warehouse-dsn", warehouse]
    assert main(["run", "--json", *dsns, *lake]) == 0
    capsys.readouterr()
    before = warehouse_contents(warehouse)
    with psycopg.connect(warehouse) as conn:
        (record_id,) = conn.execute(
            "SELECT sales_record_id FROM fact_sales_order WHERE sales_order_id = 3"
        ).fetchone()  # type: ignore[misc]

    since, until = _fix_in_place(source)
    # docs/OPERATIONS.md, Backfill: the listed tables, since/until bounding last_updated.
    backfill = [
        "run", "--json", *dsns, *lake, "--tables", "sales_order,payment,staff",
        "--since", since, "--until", until,
    ]  # fmt: skip
    assert main(backfill) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "succeeded", out
    assert all(t["rows"] >= 1 for t in out["tables"].values())

    after = warehouse_contents(warehouse)
    assert after != before
    with psycopg.connect(warehouse) as conn:
        rows = conn.execute(
            "SELECT sales_record_id, units_sold, _loaded_batch FROM fact_sales_order "
            "WHERE sales_order_id = 3"
        ).fetchall()
        assert len(rows) == 1  # the version was replaced in place, not added
        assert rows[0][0] == record_id and rows[0][1] == 777777
        assert rows[0][2] == out["run_id"]  # the lineage names the backfill's batch
        amount = conn.execute("SELECT payment_amount FROM fact_payment WHERE payment_id = 5")
        assert [float(a) for (a,) in amount] == [1.23]
        name = conn.execute("SELECT first_name FROM dim_staff WHERE staff_id = 2").fetchone()
        assert name == ("Fixed",)

    clean = make_database("clean")
    clean_settings = Settings(
        source_dsn=source,
        warehouse_dsn=clean,
        ingest_url=str(tmp_path / "c" / "i"),
        processed_url=str(tmp_path / "c" / "p"),
    )
    assert run_pipeline(clean_settings).succeeded
    assert_equivalent_to_clean_pass(after, warehouse_contents(clean))

    checksums = table_checksums(warehouse)
    assert main(backfill) == 0  # the same backfill again: identical rows
    again = json.loads(capsys.readouterr().out)
    assert again["status"] == "succeeded" and sum(again["loaded"].values()) == 0, again
    assert table_checksums(warehouse) == checksums
