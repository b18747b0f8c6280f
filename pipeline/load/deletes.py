"""Apply a processed batch's deletion marks: `_deleted_at` on the rows of deleted source rows.

A source row deleted in totesys is never deleted from the warehouse (facts keep their
history, foreign keys hold): its dimension row and every fact version get the time the
deletion was detected; a row that reappears in the source gets NULL again. The transform
writes one mark per source key and warehouse table (`warehouse_schema.deletion_marks`);
here they are staged by binary COPY and applied with one set-based UPDATE per table, inside
the batch's transaction and after its dimensions and facts, so a fact version loaded in the
same batch is marked too. A row already carrying the value is not rewritten.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pipeline.lake import Lake
from pipeline.load import apply, batches, pgbinary, summaries
from pipeline.warehouse_schema import DELETED_AT, deletion_marks

_I = sql.Identifier


def apply_marks(
    conn: psycopg.Connection, lake: Lake, marks: batches.TableOutput, batch: str
) -> int:
    """Set or clear `_deleted_at` from `marks`; return the number of rows changed."""
    table = marks.table
    columns = deletion_marks(table)
    stage = _I(f"_marks_{table.name}")
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} ({} integer PRIMARY KEY, {} timestamp(3)) "
                "ON COMMIT DROP").format(stage, _I(columns[0].name), _I(DELETED_AT))
    )  # fmt: skip
    copy_sql = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(stage)
    chunks = (pgbinary.encode_batch(columns, rb) for rb in batches.stream(lake, marks))
    apply.copy_checked(conn, copy_sql, chunks, table, batch, marks.rows, "staged deletion marks")
    key = _I(columns[0].name)
    # A fact row whose mark moves leaves (or rejoins) the report summaries.
    changed = summaries.update_counted(
        conn,
        table,
        sql.SQL(
            "UPDATE {t} AS f SET {d} = m.{d} FROM {m} AS m, {t} AS o "
            "WHERE f.{k} = m.{k} AND o.{rid} = f.{rid} AND f.{d} IS DISTINCT FROM m.{d}"
        ).format(t=_I(table.name), d=_I(DELETED_AT), m=stage, k=key, rid=_I(table.primary_key)),
    )
    conn.execute(sql.SQL("DROP TABLE {}").format(stage))
    return changed
