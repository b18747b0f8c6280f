"""Apply one history table of a processed batch, inside the batch's transaction.

A processed batch carries the full history of every key whose versions changed in its
transform run (`pipeline.transform.history`), so applying it replaces those keys'
versions: versions the batch no longer has are deleted, the others upserted by
(key, valid_from), written only when a value changed (a version keeps its id while it
exists). Re-applying a batch changes nothing; a key whose versions a later batch wrote is
left alone (the ledger orders batches, as for the type 1 dimensions).

Keys the table does not hold yet (all of them on a first load) are COPYed straight in,
as `pipeline.load.apply` does for dimensions: the general path's upsert costs several
times a COPY.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import psycopg
from psycopg import sql

from pipeline.errors import DataQualityError
from pipeline.lake import Lake
from pipeline.load import apply, batches, ddl
from pipeline.warehouse_schema import WarehouseTable

_I = sql.Identifier


def apply_history(
    conn: psycopg.Connection,
    lake: Lake,
    out: batches.TableOutput,
    batch: str,
    committed_at: datetime,
) -> int:
    """Write one history table's rows of the batch; return the rows inserted, updated or
    deleted."""
    table = out.table
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(_I(table.name)))
    (empty,) = conn.execute(  # type: ignore[misc]
        sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(_I(table.name))
    ).fetchone()
    general = np.ones(out.rows, dtype=bool)  # rows for the general path
    if empty or out.rows >= apply.SPLIT_ROWS:
        if not empty:
            keys = batches.read_columns(lake, out, [table.natural_key[0]])
            known = np.zeros(out.rows, dtype=bool)
            known[apply.rows_present(conn, table, table.natural_key[:1], keys)] = True
            general = known
        try:
            with conn.transaction():  # a savepoint: a repeated version takes the general path
                copied = apply.copy_rows(conn, lake, out, batch, None if empty else ~general)
            if empty:
                return copied
        except psycopg.errors.UniqueViolation:
            copied, general = 0, np.ones(out.rows, dtype=bool)  # the general path names it
    else:
        copied = 0
    if not general.any():
        return copied
    apply.stage(conn, lake, out, batch, None if general.all() else general)
    written = _replace_versions(conn, table, batch, committed_at)
    apply.drop_stage(conn, table)
    return copied + written


def _replace_versions(
    conn: psycopg.Connection, table: WarehouseTable, batch: str, committed_at: datetime
) -> int:
    """The staged keys' versions become exactly the staged ones."""
    key, valid_from = (_I(c) for c in table.natural_key)
    names = tuple(c for c in table.column_names if c not in table.natural_key)
    stage, target = apply.stage_name(table), _I(table.name)
    duplicate = conn.execute(
        sql.SQL("SELECT {k}, {v} FROM {s} GROUP BY {k}, {v} HAVING count(*) > 1 LIMIT 1").format(
            k=key, v=valid_from, s=stage
        )
    ).fetchone()
    if duplicate:
        raise DataQualityError(
            f"processed batch {batch}: {table.name} has more than one version of "
            f"{table.natural_key[0]} = {duplicate[0]} starting at {duplicate[1]}"
        )
    params = {"batch": batch, "committed_at": committed_at}
    newer = sql.SQL(
        "EXISTS (SELECT 1 FROM {t} h JOIN {ledger} l ON l.batch_run_id = h.{lin} "
        "WHERE h.{k} = s.{k} AND (l.committed_at, l.batch_run_id) > (%(committed_at)s, %(batch)s))"
    ).format(t=target, ledger=_I(ddl.LEDGER_TABLE), lin=_I(ddl.LINEAGE_COLUMN), k=key)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DELETE FROM {s} s WHERE ").format(s=stage) + newer, params)
        cur.execute(
            sql.SQL(
                "DELETE FROM {t} h USING (SELECT DISTINCT {k} FROM {s}) AS keys "
                "WHERE h.{k} = keys.{k} AND NOT EXISTS "
                "(SELECT 1 FROM {s} s WHERE s.{k} = h.{k} AND s.{v} = h.{v})"
            ).format(t=target, s=stage, k=key, v=valid_from)
        )
        deleted = cur.rowcount
        cols = sql.SQL(", ").join(map(_I, table.column_names))
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} AS h ({cols}, {lin}) SELECT {cols}, %(batch)s FROM {s} "
                "ON CONFLICT ({k}, {v}) DO UPDATE "
                "SET ({vals}, {lin}) = ROW({excl}, EXCLUDED.{lin}) "
                "WHERE ROW({old}) IS DISTINCT FROM ROW({excl})"
            ).format(
                t=target,
                cols=cols,
                lin=_I(ddl.LINEAGE_COLUMN),
                s=stage,
                k=key,
                v=valid_from,
                vals=sql.SQL(", ").join(map(_I, names)),
                excl=sql.SQL(", ").join(_I("excluded", n) for n in names),
                old=sql.SQL(", ").join(_I("h", n) for n in names),
            ),
            params,
        )
        return deleted + cur.rowcount
