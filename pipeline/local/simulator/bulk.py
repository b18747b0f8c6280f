"""Bulk writes into totesys: binary (or CSV) `COPY` in large chunks, sequence bookkeeping, and
building foreign keys and secondary indexes once after a bulk load instead of per row.

Every identifier comes from the catalog (or from PostgreSQL's own catalog for constraint
definitions) and is quoted with `psycopg.sql`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from pipeline.catalog import TABLE_NAMES, TABLES, Table
from pipeline.local.simulator import binary_copy

COPY_CHUNK_ROWS = 100_000
_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S%.3f"


def copy_frame(
    conn: psycopg.Connection, table: Table, frame: pl.DataFrame, *, freeze: bool = False
) -> int:
    """Append `frame` to `table` with one `COPY ... FROM STDIN`, in chunks of rows.

    Binary format when the rows have few layouts (all the big tables), else CSV written by
    Polars (money floats with exactly two decimals, matching `numeric(10,2)`). Chunking
    bounds memory and lets the server parse one chunk while the next is encoded. `freeze`
    (only for a table created in this transaction) writes rows already frozen, sparing the
    first VACUUM a full pass.
    """
    frame = frame.select(table.column_names)
    binary = binary_copy.supports(frame, table)
    options = ["FORMAT binary" if binary else "FORMAT csv"] + (["FREEZE"] if freeze else [])
    statement = sql.SQL("COPY {} ({}) FROM STDIN ({})").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(map(sql.Identifier, table.column_names)),
        sql.SQL(", ".join(options)),
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        if binary:
            copy.write(binary_copy.SIGNATURE)
        for offset in range(0, frame.height, COPY_CHUNK_ROWS):
            chunk = frame.slice(offset, COPY_CHUNK_ROWS)
            if binary:
                for block in binary_copy.encode(chunk, table):
                    copy.write(block)
            else:
                copy.write(
                    chunk.write_csv(
                        include_header=False, datetime_format=_TIMESTAMP_FORMAT, float_precision=2
                    )
                )
        if binary:
            copy.write(binary_copy.TRAILER)
    return frame.height


def _sequence_of(conn: psycopg.Connection, table: Table) -> sql.Composable:
    """`pg_get_serial_sequence('"table"', 'pk')` (the table name quoted: `transaction`)."""
    return sql.SQL("pg_get_serial_sequence({}, {})").format(
        sql.Literal(sql.Identifier(table.name).as_string(conn)), sql.Literal(table.primary_key)
    )


def reserve_ids(conn: psycopg.Connection, table: Table, n: int) -> np.ndarray:
    """`n` fresh primary keys from the table's own sequence (safe next to other writers)."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    query = sql.SQL("SELECT nextval({}) FROM generate_series(1, %s)").format(
        _sequence_of(conn, table)
    )
    rows = conn.execute(query, (n,)).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64)


def sync_sequences(conn: psycopg.Connection) -> None:
    """After loading explicit ids, point every serial past the largest id in its table."""
    for name in TABLE_NAMES:
        table = TABLES[name]
        conn.execute(
            sql.SQL(
                "SELECT setval({seq}, coalesce(max({pk}), 1), max({pk}) IS NOT NULL) FROM {t}"
            ).format(
                seq=_sequence_of(conn, table),
                pk=sql.Identifier(table.primary_key),
                t=sql.Identifier(table.name),
            )
        )


_DEFERRABLE = """
SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.contype
FROM pg_constraint c
WHERE c.conrelid = ANY(%(tables)s::regclass[]) AND c.contype IN ('f', 'u', 'p')
ORDER BY c.contype <> 'f' DESC, c.conname
"""
_SECONDARY_INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i
WHERE i.indrelid = ANY(%(tables)s::regclass[]) AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
ORDER BY 1
"""


@contextmanager
def constraints_built_after(conn: psycopg.Connection) -> Iterator[None]:
    """Drop the totesys keys, foreign keys and secondary indexes, and recreate them exactly
    (definitions read back from PostgreSQL) after the block.

    Checking a foreign key per copied row costs more than the copy itself; validating it
    once over the whole table is a single join, and sorting once builds an index faster
    than inserting into it row by row. Must run inside the loading transaction,
    so a failure leaves the schema as it was.
    """
    names = [sql.Identifier(n).as_string(conn) for n in TABLE_NAMES]
    constraints = conn.execute(_DEFERRABLE, {"tables": names}).fetchall()
    indexes = conn.execute(_SECONDARY_INDEXES, {"tables": names}).fetchall()
    for table, name, _, _ in reversed(constraints):  # foreign keys before the keys they use
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.SQL(table), sql.Identifier(name)
            )
        )
    for index, _ in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(index)))
    yield
    for table, name, definition, _ in constraints:  # keys first: foreign keys need them
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.SQL(table), sql.Identifier(name), sql.SQL(definition)
            )
        )
    for _, definition in indexes:
        conn.execute(sql.SQL(definition))
