"""docs/OPERATIONS.md's backfill recipe, run as written in "AWS" (the synthesized state
machine in moto, the real handlers): after rows were fixed in totesys without bumping
`last_updated`, the warehouse shows the fixed values; the same backfill again changes nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.integration.local.test_backfill import table_checksums

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


def recipe() -> dict:
    """The JSON execution input of the Backfill section."""
    section = OPERATIONS.read_text().split("## Backfill", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```json\n(.*?)\n```", section, re.S)
    assert block, "docs/OPERATIONS.md's Backfill section has no JSON input"
    return json.loads(block.group(1))


def test_the_documented_backfill_input_applies_an_in_place_fix(
    pipeline_aws, make_database: Callable[[str], str], tmp_path: Path
) -> None:
    from pipeline.local.simulator.seed import seed

    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.02, seed=5)
    pipeline_aws.put_database_secrets(source, warehouse)
    assert pipeline_aws.run({}, name="before-fix").status == "SUCCEEDED"

    execution_input = recipe()
    assert set(execution_input) == {"tables", "since", "until"}
    assert set(execution_input["tables"]) == {"sales_order", "payment"}
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE sales_order SET units_sold = 424242 WHERE sales_order_id = 4")
        conn.execute("UPDATE payment SET payment_amount = 4.2 WHERE payment_id = 4")
        low, high = conn.execute(
            "SELECT least(s.last_updated, p.last_updated), greatest(s.last_updated, "
            "p.last_updated) FROM sales_order s, payment p "
            "WHERE s.sales_order_id = 4 AND p.payment_id = 4"
        ).fetchone()  # type: ignore[misc]
    # The recipe's shape as written; its example dates replaced by the fixed rows' window.
    execution_input |= {"since": low.isoformat(), "until": f"{high.date()}T23:59:59"}

    backfill = pipeline_aws.run(execution_input, name="backfill")
    assert backfill.status == "SUCCEEDED", backfill.cause
    with psycopg.connect(warehouse) as conn:
        units = conn.execute("SELECT units_sold FROM fact_sales_order WHERE sales_order_id = 4")
        assert [u for (u,) in units] == [424242]
        amounts = conn.execute("SELECT payment_amount FROM fact_payment WHERE payment_id = 4")
        assert [float(a) for (a,) in amounts] == [4.2]

    checksums = table_checksums(warehouse)
    again = pipeline_aws.run(execution_input, name="backfill-again")
    assert again.status == "SUCCEEDED", again.cause
    assert table_checksums(warehouse) == checksums
