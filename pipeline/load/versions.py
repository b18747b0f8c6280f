"""Which fact versions are current: `_superseded_at`, kept by the load.

A fact keeps every version of a source row (natural key: source id, last_updated date and
time). Each version a newer one replaced carries that newer version's `last_updated` in
`_superseded_at` (the end of its validity); the newest version of each source row has NULL.
Readers that want current rows (the report) then filter
`_superseded_at IS NULL AND _deleted_at IS NULL` in a plain scan instead of de-duplicating
every version per source id on each read.

The load keeps the column exact at the cost of the versions that change: after a batch's
facts are COPYed (the column is not in the COPY, so it is NULL), only the source ids that
can now hold more than one version are re-marked, by one window over their versions:
ids repeated inside the batch, and ids within the [min, max] of the source ids the table
held before the batch (an id outside that range had no version yet). A batch of new
source rows (the usual incremental, a first load) touches nothing. A re-delivered version
already in the table is not appended (`pipeline.load.facts.keep_mask`), so it changes
nothing here; corrections update values in place, never the natural key. Deletes are
orthogonal (`_deleted_at`, `pipeline.load.deletes`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from pipeline.load import pgbinary
from pipeline.warehouse_schema import SUPERSEDED_AT, WarehouseTable, WColumn

_I = sql.Identifier
SourceRange = tuple[int, int]  # min and max source id a fact held before a batch


def mark_statement(table: WarehouseTable, ids: sql.Identifier | None = None) -> sql.Composed:
    """Set `_superseded_at` of every version of the source ids listed in the relation `ids`
    (one column, named like the source id; None: all of them) to the next newer version's
    `last_updated`, NULL for the newest; rows already right are not rewritten."""
    source_id, updated_date, updated_time = map(_I, table.natural_key)
    scope: sql.Composable = sql.SQL("")
    if ids is not None:
        scope = sql.SQL(" WHERE {sid} IN (SELECT {sid} FROM {ids})").format(sid=source_id, ids=ids)
    return sql.SQL(
        "UPDATE {t} AS f SET {s} = v.next FROM (SELECT {rid}, lead({d} + {tm}) OVER "
        "(PARTITION BY {sid} ORDER BY {d}, {tm}) AS next FROM {t}{scope}) AS v "
        "WHERE f.{rid} = v.{rid} AND f.{s} IS DISTINCT FROM v.next"
    ).format(
        t=_I(table.name),
        s=_I(SUPERSEDED_AT),
        rid=_I(table.primary_key),
        sid=source_id,
        d=updated_date,
        tm=updated_time,
        scope=scope,
    )


def held_range(conn: psycopg.Connection, table: WarehouseTable) -> SourceRange | None:
    """The smallest and largest source id the fact holds (two index endpoint reads), or None
    when it is empty."""
    sid = _I(table.natural_key[0])
    row = conn.execute(
        sql.SQL("SELECT min({sid}), max({sid}) FROM {t}").format(sid=sid, t=_I(table.name))
    ).fetchone()
    return None if row is None or row[0] is None else (int(row[0]), int(row[1]))


def touched_ids(ids: np.ndarray, held: SourceRange | None) -> np.ndarray:
    """The batch's appended source ids (`ids`, in batch order) that may now have more than
    one version: repeated in the batch, or within `held`. Sorted, distinct."""
    parts = []
    if held is not None:
        parts.append(ids[(ids >= held[0]) & (ids <= held[1])])
    if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()):  # strictly rising: no repeat
        distinct, counts = np.unique(ids, return_counts=True)
        parts.append(distinct[counts > 1])
    if not parts:
        return np.zeros(0, dtype=np.int32)
    return np.unique(np.concatenate(parts)).astype(np.int32)


def mark(conn: psycopg.Connection, table: WarehouseTable, ids: np.ndarray) -> int:
    """Re-mark every version of the source ids `ids` (distinct); return the rows changed."""
    if len(ids) == 0:
        return 0
    with staged_ids(conn, table, ids) as tmp:
        return mark_staged(conn, table, tmp)


@contextmanager
def staged_ids(
    conn: psycopg.Connection, table: WarehouseTable, ids: np.ndarray
) -> Iterator[sql.Identifier]:
    """The source ids `ids` (distinct) in a temporary table, named by the identifier yielded.

    Binary COPY (a batch can supersede many rows), then ANALYZE, so few ids are index
    probes of the natural key, not a scan of the fact.
    """
    column = WColumn(table.natural_key[0], "integer")
    tmp = _I(f"_versions_{table.name}")
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} ({} integer PRIMARY KEY) ON COMMIT DROP").format(
            tmp, _I(column.name)
        )
    )
    batch = pa.record_batch([pgbinary.int32_array(ids)], names=[column.name])
    with conn.cursor() as cur:
        with cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(tmp)) as copy:
            copy.write(pgbinary.HEADER + pgbinary.encode_batch([column], batch))
            copy.write(pgbinary.TRAILER)
        cur.execute(sql.SQL("ANALYZE {}").format(tmp))
    yield tmp
    conn.execute(sql.SQL("DROP TABLE {}").format(tmp))


def mark_staged(conn: psycopg.Connection, table: WarehouseTable, tmp: sql.Identifier) -> int:
    """Re-mark every version of the source ids staged in `tmp`; return the rows changed."""
    with conn.cursor() as cur:
        cur.execute(mark_statement(table, tmp))
        return cur.rowcount
