"""The binary COPY encoder against PostgreSQL itself: every value type round-trips exactly."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from pipeline.load import ddl, pgbinary
from pipeline.warehouse_schema import WAREHOUSE_TABLES, WColumn

pytestmark = pytest.mark.postgres

EDGES = {
    "integer": [0, 1, -1, 2**31 - 1, -(2**31)],
    "date": [
        dt.date(1970, 1, 1),
        dt.date(1999, 12, 31),
        dt.date(2000, 1, 1),
        dt.date(2100, 12, 31),
    ],
    "time(3)": [dt.time(0), dt.time(23, 59, 59, 999000), dt.time(12, 0, 0, 1000)],
    "numeric(10,2)": [
        Decimal("99999999.99"),
        Decimal("-99999999.99"),
        Decimal("0.00"),
        Decimal("0.01"),
        Decimal("-0.10"),
        Decimal("10000.00"),
    ],
    "boolean": [True, False],
    "text": ["", "a", "Ürban €", "x" * 300, "tab\tnew\nline"],
}


def _value(column: WColumn, rng: random.Random) -> object:
    if column.nullable and rng.random() < 0.3:
        return None
    return rng.choice(EDGES[column.pg_type])


@pytest.mark.parametrize("table", sorted(WAREHOUSE_TABLES))
def test_copy_round_trip(pg_dsn: str, table: str) -> None:
    spec = WAREHOUSE_TABLES[table]
    columns = [*spec.columns, WColumn("extra_n", "numeric(10,2)", nullable=True)]
    columns += [WColumn("extra_b", "boolean", nullable=True), WColumn("extra_t", "text", True)]
    rng = random.Random(table)
    rows = [{c.name: _value(c, rng) for c in columns} for _ in range(300)]
    schema = pa.schema([pa.field(c.name, c.arrow_type, c.nullable) for c in columns])
    arrow = pa.Table.from_pylist(rows, schema=schema)
    with psycopg.connect(pg_dsn) as conn:
        spec_all = spec.__class__(spec.name, tuple(columns), spec.primary_key)
        conn.execute(
            sql.SQL("CREATE TEMP TABLE t ({})").format(
                sql.SQL(", ").join(ddl.column_definitions(spec_all))
            )
        )
        with conn.cursor() as cur, cur.copy("COPY t FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(pgbinary.HEADER)
            for batch in arrow.to_batches(max_chunksize=97):
                copy.write(pgbinary.encode_batch(columns, batch))
            copy.write(pgbinary.TRAILER)
        back = conn.execute("SELECT * FROM t").fetchall()
    assert back == [tuple(r.values()) for r in rows]
