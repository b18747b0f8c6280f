"""Apply one dimension of a processed batch, inside the caller's transaction.

Rows are staged with binary COPY into a temporary table, then upserted with one
set-based statement (SCD type 1), written only when a value changed. Facts take a
faster path (`pipeline.warehouse.facts`). Identifiers come from
`pipeline.warehouse_schema` only and are quoted; values are always parameters.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import sql

from pipeline.errors import DataQualityError
from pipeline.lake import Lake
from pipeline.warehouse import batches, ddl, pgbinary
from pipeline.warehouse_schema import WarehouseTable

_I = sql.Identifier


def _cols(names: tuple[str, ...], prefix: str | None = None) -> sql.Composable:
    if prefix is None:
        return sql.SQL(", ").join(map(_I, names))
    return sql.SQL(", ").join(_I(prefix, n) for n in names)


def stage_name(table: WarehouseTable) -> sql.Identifier:
    return _I(f"_stage_{table.name}")


def stage(conn: psycopg.Connection, lake: Lake, out: batches.TableOutput, batch: str) -> int:
    """Create the staging table and COPY the files' rows into it; return the row count."""
    table = out.table
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} ({}) ON COMMIT DROP").format(
            stage_name(table), sql.SQL(", ").join(ddl.column_definitions(table))
        )
    )
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        stage_name(table), _cols(table.column_names)
    )
    try:
        with conn.cursor() as cur:
            with cur.copy(copy_sql) as copy:
                copy.write(pgbinary.HEADER)
                for record_batch in batches.stream(lake, out):
                    copy.write(pgbinary.encode_batch(table.columns, record_batch))
                copy.write(pgbinary.TRAILER)
            staged = cur.rowcount
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
        raise copy_error(exc, table, batch) from None
    if staged != out.rows:
        raise DataQualityError(
            f"processed batch {batch}: staged {staged} {table.name} rows, manifest says {out.rows}"
        )
    return staged


def copy_error(exc: psycopg.Error, table: WarehouseTable, batch: str) -> DataQualityError:
    """A value PostgreSQL refused during COPY, named by table, column and batch row."""
    diag = exc.diag
    return DataQualityError(
        f"processed batch {batch}: {table.name}: {diag.message_primary} "
        f"(column {diag.column_name}; {diag.context or 'no row context'})"
    )


def drop_stage(conn: psycopg.Connection, table: WarehouseTable) -> None:
    conn.execute(sql.SQL("DROP TABLE {}").format(stage_name(table)))


def _check_unique_keys(conn: psycopg.Connection, table: WarehouseTable, batch: str) -> None:
    pk = _I(table.primary_key)
    dup = conn.execute(
        sql.SQL("SELECT {pk} FROM {s} GROUP BY {pk} HAVING count(*) > 1 LIMIT 1").format(
            pk=pk, s=stage_name(table)
        )
    ).fetchone()
    if dup:
        raise DataQualityError(
            f"processed batch {batch}: {table.name} has more than one row for "
            f"{table.primary_key} = {dup[0]}; a dimension batch must hold one row per key"
        )


def upsert_dimension(
    conn: psycopg.Connection, table: WarehouseTable, batch: str, committed_at: datetime
) -> int:
    """SCD1 upsert; an unchanged row, or one last written by a newer batch, is left alone."""
    names = table.column_names
    head = sql.SQL(
        "INSERT INTO {t} AS t ({cols}, {lin}) SELECT {cols}, %(batch)s FROM {s} "
    ).format(t=_I(table.name), cols=_cols(names), lin=_I(ddl.LINEAGE_COLUMN), s=stage_name(table))
    if table.name == "dim_date":  # derived from the date itself: never changes
        tail = sql.SQL("ON CONFLICT ({}) DO NOTHING").format(_I(table.primary_key))
    else:
        _check_unique_keys(conn, table, batch)
        values = names[1:]
        tail = sql.SQL(
            "ON CONFLICT ({pk}) DO UPDATE SET ({vals}, {lin}) = ROW({excl}, EXCLUDED.{lin}) "
            "WHERE ROW({old}) IS DISTINCT FROM ROW({excl}) "
            "AND NOT EXISTS (SELECT 1 FROM {ledger} l WHERE l.batch_run_id = t.{lin} "
            "AND (l.committed_at, l.batch_run_id) > (%(committed_at)s, %(batch)s))"
        ).format(
            pk=_I(table.primary_key),
            vals=_cols(values),
            lin=_I(ddl.LINEAGE_COLUMN),
            excl=_cols(values, "excluded"),
            old=_cols(values, "t"),
            ledger=_I(ddl.LEDGER_TABLE),
        )
    with conn.cursor() as cur:
        cur.execute(head + tail, {"batch": batch, "committed_at": committed_at})
        return cur.rowcount
