"""The simulator creates exactly the production schema (the shared `totesys-source.sql`).

One database is made from the production DDL file, another by `seed` (synthetic, from a
snapshot, with or without the opt-in cursor indexes); their catalogs are compared through
pg_catalog (`tests/source_catalog.py`): enum types and labels, every relation, columns in
order with types, nullability and defaults, constraints with their ON UPDATE / ON DELETE
rules and names, indexes, sequences and the columns owning them, triggers, functions.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from pipeline.catalog import TABLES
from pipeline.local.simulator.schema import create_source_schema, cursor_index_name
from pipeline.local.simulator.seed import seed
from pipeline.local.simulator.snapshot import load_snapshot
from tests.source_catalog import describe_schema, differences

pytestmark = pytest.mark.postgres


@pytest.fixture
def production(make_database: Callable[[str], str], production_schema_sql: str) -> dict:
    dsn = make_database("production")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(production_schema_sql)  # type: ignore[arg-type]  # trusted DDL file
    return describe_schema(dsn)


def test_the_production_file_is_what_the_comparison_expects(production: dict) -> None:
    """Guards the comparison itself: it sees the objects the issue names."""
    assert production["enum types"] == [
        (
            "PaymentTypeName",
            ["SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND"],
        ),
        ("TransactionType", ["SALE", "PURCHASE"]),
    ]
    kinds = [r[2] for r in production["constraints"]]
    assert (kinds.count("p"), kinds.count("f"), kinds.count("u")) == (12, 17, 0)
    uniques = [r[1] for r in production["indexes"] if r[3] and not r[4]]
    assert sorted(uniques) == [
        "payment_transaction_id_key",
        "transaction_purchase_order_id_key",
        "transaction_sales_order_id_key",
    ]
    assert len(production["sequences"]) == 11
    assert ("_prisma_migrations", "r", "p", [], False, "d") in production["relations"]


def test_seed_creates_exactly_the_production_schema(
    production: dict, make_database: Callable[[str], str]
) -> None:
    seeded = make_database("seeded")
    seed(seeded, scale=0.01, seed=1)
    assert differences(describe_schema(seeded), production) == {}


def test_the_schema_ddl_alone_is_the_production_schema(
    production: dict, make_database: Callable[[str], str]
) -> None:
    """What the extract tests build their sources with (no bulk load in between)."""
    dsn = make_database("ddl")
    with psycopg.connect(dsn) as conn:
        create_source_schema(conn)
    assert differences(describe_schema(dsn), production) == {}


def test_seed_from_parquet_creates_exactly_the_production_schema(
    production: dict, make_database: Callable[[str], str], snapshot_dir: str
) -> None:
    loaded = make_database("snapshot")
    load_snapshot(loaded, snapshot_dir)
    assert differences(describe_schema(loaded), production) == {}


def test_reseeding_with_force_leaves_exactly_the_production_schema(
    production: dict, make_database: Callable[[str], str]
) -> None:
    dsn = make_database("reseeded")
    seed(dsn, scale=0.01, seed=1, cursor_indexes=True)
    seed(dsn, scale=0.01, seed=2, force=True)
    assert differences(describe_schema(dsn), production) == {}


def test_cursor_indexes_are_the_only_addition_and_only_on_request(
    production: dict, make_database: Callable[[str], str]
) -> None:
    dsn = make_database("indexed")
    seed(dsn, scale=0.01, seed=1, cursor_indexes=True)
    diff = differences(describe_schema(dsn), production)
    names = {cursor_index_name(t) for t in TABLES.values()}
    assert set(diff) == {"relations", "indexes"}
    assert all(not d["only in expected"] for d in diff.values())
    assert {r[0] for r in diff["relations"]["only in actual"]} == names
    assert {r[1] for r in diff["indexes"]["only in actual"]} == names
    defs = {r[2] for r in diff["indexes"]["only in actual"]}
    assert (
        "CREATE INDEX sales_order_last_updated_sales_order_id_idx ON public.sales_order "
        "USING btree (last_updated, sales_order_id)"
    ) in defs
