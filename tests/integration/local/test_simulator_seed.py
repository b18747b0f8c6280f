"""`seed` against a real PostgreSQL: schema, integrity, calibration, determinism, refusals."""

from __future__ import annotations

import os
from collections.abc import Callable

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from pipeline.catalog import TABLE_NAMES, TABLES
from pipeline.errors import AlreadySeededError, SimulatorInputError
from pipeline.local.simulator.schema import create_source_schema
from pipeline.local.simulator.seed import seed

pytestmark = pytest.mark.postgres

_SCHEMA_SHAPE = """
SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid), convalidated
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT indrelid::regclass::text, indexrelid::regclass::text, 'i', pg_get_indexdef(indexrelid), true
FROM pg_index WHERE indrelid = ANY(%s::regclass[])
ORDER BY 1, 2, 3
"""


def table_checksums(dsn: str) -> dict[str, tuple[int, str]]:
    """(row count, md5 of all rows in key order) per totesys table."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(dsn) as conn:
        for name in TABLE_NAMES:
            t = TABLES[name]
            query = sql.SQL(
                "SELECT count(*), md5(string_agg(r::text, '|' ORDER BY {pk})) FROM {t} r"
            )
            row = conn.execute(
                query.format(pk=sql.Identifier(t.primary_key), t=sql.Identifier(name))
            ).fetchone()
            assert row is not None
            out[name] = (row[0], row[1])
    return out


def _schema_shape(dsn: str) -> list[tuple]:
    names = [sql.Identifier(n).as_string() for n in TABLE_NAMES]
    with psycopg.connect(dsn) as conn:
        return conn.execute(_SCHEMA_SHAPE, (names,)).fetchall()


def _one(conn: psycopg.Connection, query: str) -> object:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_seeded_schema_is_exactly_the_catalog_ddl(make_database: Callable[[str], str]) -> None:
    """Keys, foreign keys and indexes are dropped for the bulk load: all must come back."""
    fresh, seeded = make_database("ddl"), make_database("seeded")
    with psycopg.connect(fresh) as conn:
        create_source_schema(conn)
    seed(seeded, scale=0.02, seed=1)
    shape = _schema_shape(seeded)
    assert shape == _schema_shape(fresh)
    assert sum(1 for r in shape if r[2] == "f") == 17
    assert sum(1 for r in shape if r[2] == "i") == 11 + 3  # pkeys, uniques: no cursor index
    assert all(r[4] for r in shape)  # every constraint validated


def test_small_seed_has_full_referential_integrity(pg_dsn: str) -> None:
    counts = seed(pg_dsn, scale=0.05, seed=3)
    assert counts["sales_order"] == round(11_187 * 0.05)
    assert table_checksums(pg_dsn)["sales_order"][0] == counts["sales_order"]
    with psycopg.connect(pg_dsn) as conn:
        for name in TABLE_NAMES:
            for column in TABLES[name].columns:
                if not column.references:
                    continue
                target = TABLES[column.references]
                orphans = conn.execute(
                    sql.SQL(
                        "SELECT count(*) FROM {t} a LEFT JOIN {r} b ON a.{c} = b.{pk} "
                        "WHERE a.{c} IS NOT NULL AND b.{pk} IS NULL"
                    ).format(
                        t=sql.Identifier(name),
                        r=sql.Identifier(target.name),
                        c=sql.Identifier(column.name),
                        pk=sql.Identifier(target.primary_key),
                    )
                ).fetchone()
                assert orphans == (0,), f"{name}.{column.name}"
        mismatched = _one(
            conn,
            """
            SELECT count(*) FROM payment p JOIN transaction t USING (transaction_id)
            LEFT JOIN sales_order s USING (sales_order_id)
            LEFT JOIN purchase_order o USING (purchase_order_id)
            WHERE p.payment_amount <> coalesce(s.units_sold * s.unit_price,
                                               o.item_quantity * o.item_unit_price)
               OR p.counterparty_id <> coalesce(s.counterparty_id, o.counterparty_id)
               OR p.created_at <> coalesce(s.created_at, o.created_at)
            """,
        )
        assert mismatched == 0
        per_order = conn.execute(
            """
            SELECT (SELECT count(*) FROM sales_order s WHERE (SELECT count(*) FROM transaction t
                      WHERE t.sales_order_id = s.sales_order_id) <> 1),
                   (SELECT count(*) FROM purchase_order o WHERE (SELECT count(*) FROM transaction t
                      WHERE t.purchase_order_id = o.purchase_order_id) <> 1),
                   (SELECT count(*) FROM transaction t WHERE (SELECT count(*) FROM payment p
                      WHERE p.transaction_id = t.transaction_id) <> 1),
                   (SELECT count(*) FROM transaction
                     WHERE (transaction_type = 'SALE') <> (sales_order_id IS NOT NULL)
                        OR (sales_order_id IS NULL) = (purchase_order_id IS NULL))
            """
        ).fetchone()
        assert per_order == (0, 0, 0, 0)


def test_timestamps_are_millisecond_weekday_business_hours(pg_dsn: str) -> None:
    seed(pg_dsn, scale=0.05, seed=4)
    with psycopg.connect(pg_dsn) as conn:
        for name in TABLE_NAMES:
            bad = _one(
                conn,
                sql.SQL("SELECT count(*) FROM {} WHERE last_updated < created_at")
                .format(sql.Identifier(name))
                .as_string(conn),
            )
            assert bad == 0, name
        outside = _one(
            conn,
            "SELECT count(*) FROM sales_order WHERE extract(isodow FROM created_at) > 5 "
            "OR created_at::time < '08:00' OR created_at::time >= '19:00'",
        )
        assert outside == 0
        fractional = _one(
            conn,
            "SELECT count(*) FROM payment WHERE extract(microseconds FROM created_at) % 1000 <> 0",
        )
        assert fractional == 0
        with_millis = _one(
            conn,
            "SELECT count(*) FROM payment WHERE extract(milliseconds FROM created_at) % 1000 <> 0",
        )
        assert with_millis > 0


def test_sequences_continue_after_the_seeded_ids(pg_dsn: str) -> None:
    seed(pg_dsn, scale=0.02, seed=5)
    with psycopg.connect(pg_dsn) as conn:
        for name in TABLE_NAMES:
            t = TABLES[name]
            top, nxt = conn.execute(
                sql.SQL(
                    "SELECT max({pk}), nextval(pg_get_serial_sequence({q}, {c})) FROM {t}"
                ).format(
                    pk=sql.Identifier(t.primary_key),
                    q=sql.Literal(sql.Identifier(name).as_string(conn)),
                    c=sql.Literal(t.primary_key),
                    t=sql.Identifier(name),
                )
            ).fetchone()  # type: ignore[misc]
            assert nxt == top + 1, name


@pytest.mark.slow
def test_scale_one_matches_the_snapshot_counts(pg_dsn: str, snapshot_dir: str) -> None:
    counts = seed(pg_dsn, scale=1.0)
    stored = table_checksums(pg_dsn)
    for name in TABLE_NAMES:
        real = pq.ParquetFile(os.path.join(snapshot_dir, f"{name}.parquet")).metadata.num_rows
        assert abs(counts[name] - real) <= 0.1 * real, name
        assert stored[name][0] == counts[name], name


def test_same_seed_gives_identical_databases(make_database: Callable[[str], str]) -> None:
    a, b, c = make_database("a"), make_database("b"), make_database("c")
    seed(a, scale=0.05, seed=11)
    seed(b, scale=0.05, seed=11)
    seed(c, scale=0.05, seed=12)
    assert table_checksums(a) == table_checksums(b)
    differ = {t for t, v in table_checksums(c).items() if v != table_checksums(a)[t]}
    assert differ >= {"sales_order", "payment", "staff", "address"}


def test_already_seeded_is_refused_unless_forced(pg_dsn: str) -> None:
    seed(pg_dsn, scale=0.01, seed=1)
    before = table_checksums(pg_dsn)
    with pytest.raises(AlreadySeededError, match="force"):
        seed(pg_dsn, scale=0.02, seed=2)
    assert table_checksums(pg_dsn) == before
    counts = seed(pg_dsn, scale=0.02, seed=2, force=True)
    assert table_checksums(pg_dsn)["sales_order"][0] == counts["sales_order"] == 224


def test_bad_scale_is_refused_before_touching_the_database(pg_dsn: str) -> None:
    with pytest.raises(SimulatorInputError, match="scale"):
        seed(pg_dsn, scale=-1)
    with psycopg.connect(pg_dsn) as conn:
        assert _one(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
