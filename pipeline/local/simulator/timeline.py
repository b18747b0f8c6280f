"""How far simulated time has gone: one row in the simulated database, `totesys_simulator.clock`.

Simulated time has to move even when nothing happens: a weekend or a night writes no row,
so the newest `last_updated` cannot say how far a simulation got, and a simulation that
restarted from it would stall after every Friday. The row lives in its own schema, beside
the totesys tables (the extract reads only those), and names the `sales_order` table it
was written for: seeding again creates new tables, which resets the clock.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pipeline.local.simulator.clock import to_ms

SCHEMA = "totesys_simulator"
_TABLE = sql.Identifier(SCHEMA, "clock")


def _tables_id(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT 'sales_order'::regclass::oid::bigint").fetchone()
    assert row is not None
    return int(row[0])


def read(conn: psycopg.Connection) -> int | None:
    """The simulated moment (epoch ms) the last simulation reached, or None (never
    simulated, or simulated before the tables were seeded again)."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.clock",)).fetchone()
    if not (exists and exists[0]):
        return None
    row = conn.execute(
        sql.SQL("SELECT simulated_until FROM {} WHERE tables_id = %s").format(_TABLE),
        (_tables_id(conn),),
    ).fetchone()
    return None if row is None else to_ms(row[0])


def write(conn: psycopg.Connection, until: object) -> None:
    """Record that simulated time reached `until` (a naive UTC datetime)."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (only_row boolean PRIMARY KEY DEFAULT true "
            "CHECK (only_row), simulated_until timestamp(3) NOT NULL, tables_id bigint NOT NULL)"
        ).format(_TABLE)
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (simulated_until, tables_id) VALUES (%s, %s) "
            "ON CONFLICT (only_row) DO UPDATE "
            "SET simulated_until = excluded.simulated_until, tables_id = excluded.tables_id"
        ).format(_TABLE),
        (until, _tables_id(conn)),
    )


def real_now_ms(conn: psycopg.Connection) -> int:
    """The database's own clock in UTC, as the extract reads it: simulated rows stamped
    later would not be extracted before real time caught up with them."""
    row = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::timestamp(3)").fetchone()
    assert row is not None
    return to_ms(row[0])
