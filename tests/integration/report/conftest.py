"""A seeded, loaded warehouse for the report tests, built once per module.

Two pipeline runs: the seed, then simulated business plus two edits of known sales
orders, one valid (a new current version) and one invalid (its new version is
quarantined, so the old one stays current), and one order deleted with its transactions
and payments (marked `_deleted_at` in the warehouse, so out of the business charts).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pipeline.local import pgserver
from pipeline.local.runner import run_pipeline
from pipeline.local.simulator.seed import seed
from pipeline.local.simulator.simulate import simulate
from pipeline.settings import Settings

EDITED_ORDER = 3  # units_sold + 7: its second version is the current one
REJECTED_ORDER = 5  # units_sold -1: quarantined (negative_value), the first version stays
DELETED_ORDER = 7  # deleted in totesys with its transactions and payments: out of the charts


@dataclass(frozen=True)
class LoadedWarehouse:
    source: str
    warehouse: str
    processed_url: str
    lake: Path
    settings: Settings


@contextmanager
def seeded_and_loaded(
    pg_server: str, lake: Path, name: str, scale: float, seed_value: int
) -> Iterator[LoadedWarehouse]:
    """A seeded source and its warehouse after one full pipeline run (dropped after)."""
    suffix = uuid.uuid4().hex[:10]
    names = [f"t_{name}_src_{suffix}", f"t_{name}_wh_{suffix}"]
    source, warehouse = (pgserver.create_database(pg_server, n, replace=False) for n in names)
    settings = Settings(
        source_dsn=source,
        warehouse_dsn=warehouse,
        ingest_url=str(lake / "ingestion"),
        processed_url=str(lake / "processed"),
    )
    try:
        seed(source, scale=scale, seed=seed_value)
        assert run_pipeline(settings).succeeded
        yield LoadedWarehouse(source, warehouse, settings.processed_url, lake, settings)
    finally:
        for n in names:
            pgserver.drop_database(pg_server, n)


@pytest.fixture(scope="module")
def loaded(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedWarehouse]:
    lake = tmp_path_factory.mktemp("report-lake")
    with seeded_and_loaded(pg_server, lake, "report", 0.03, 9) as first:
        source, settings = first.source, first.settings
        simulate(source, days=3, seed=4)
        with psycopg.connect(source) as conn:
            for order, change in ((EDITED_ORDER, "units_sold + 7"), (REJECTED_ORDER, "-1")):
                conn.execute(
                    f"UPDATE sales_order SET units_sold = {change}, "
                    "last_updated = (SELECT max(last_updated) FROM sales_order) "
                    "+ interval '1 second' WHERE sales_order_id = %s",
                    (order,),
                )
            conn.execute(
                "DELETE FROM payment WHERE transaction_id IN "
                "(SELECT transaction_id FROM transaction WHERE sales_order_id = %s)",
                (DELETED_ORDER,),
            )
            conn.execute("DELETE FROM transaction WHERE sales_order_id = %s", (DELETED_ORDER,))
            conn.execute("DELETE FROM sales_order WHERE sales_order_id = %s", (DELETED_ORDER,))
        second = run_pipeline(settings)
        assert second.succeeded, second.to_dict()
        assert second.quarantined == 1, second.to_dict()
        yield first
