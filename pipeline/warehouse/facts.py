"""Append a batch's fact rows: binary COPY straight into the fact table, new versions only.

`INSERT ... SELECT ... ON CONFLICT` from a staging table costs about as much as the raw
COPY again (row-at-a-time inserts) on top of the staging COPY itself. Since loads are
serialized by the load lock, the rows to skip can be known up front instead: versions
repeated inside the batch (the first one wins, as ON CONFLICT DO NOTHING would keep) and
versions already in the table (one indexed lookup on the natural key). Into an empty
table (a first load, a backfill) the COPY is simply tried and the natural-key constraint
reports repeats, in which case the mask is computed and the COPY redone. The rows are
COPYed into the table itself, with record ids numbered here (max + 1, in batch order) so
a re-run after a crash numbers exactly like one clean pass; the sequence does not roll
back and is only moved forward afterwards. The natural-key UNIQUE constraint still
guards against any other writer.

Foreign keys: PostgreSQL checks them with one trigger query per row and column, about
ten times the cost of the insert. Each referenced dimension is checked set-based instead
(the batch's distinct keys, collected while streaming), and for batches of at least
`BULK_FK_ROWS` rows the per-row triggers are switched off for this transaction
(`session_replication_role = replica`, if the role may set it) while the referenced
dimensions are locked in SHARE mode so the checked keys stay valid until commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from pipeline.errors import LoadConflictError, ReferentialIntegrityError
from pipeline.lake import Lake
from pipeline.warehouse import apply, batches, ddl, pgbinary
from pipeline.warehouse_schema import WAREHOUSE_TABLES, WarehouseTable, WColumn

log = logging.getLogger(__name__)

BULK_FK_ROWS = 50_000
_I = sql.Identifier


def _nk_ints(table: pa.Table) -> pa.Table:
    """Natural-key columns as int32 (date: days, time: ms) for hashing and joining."""
    return pa.table(
        {
            name: col.combine_chunks().view(pa.int32())
            for name, col in zip(table.column_names, table.columns, strict=True)
        }
    )


def _rows_already_loaded(
    conn: psycopg.Connection, table: WarehouseTable, keys: pa.Table
) -> np.ndarray:
    """Positions (in batch order) of the versions the fact table already holds.

    The batch's natural keys go to a temporary table by binary COPY and only the matching
    positions come back (binary COPY, parsed with numpy): memory stays flat even when a
    large batch is loaded twice.
    """
    spec = {c.name: c for c in table.columns}
    columns = [WColumn("_row", "integer"), *(spec[n] for n in table.natural_key)]
    keys = keys.add_column(0, "_row", pa.array(np.arange(keys.num_rows, dtype=np.int32)))
    tmp = _I(f"_keys_{table.name}")
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} ({}) ON COMMIT DROP").format(
            tmp,
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(_I(c.name), sql.SQL(c.pg_type)) for c in columns
            ),
        )
    )
    with conn.cursor() as cur:
        with cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(tmp)) as copy:
            copy.write(pgbinary.HEADER)
            for rb in keys.to_batches(max_chunksize=batches.READ_BATCH_ROWS):
                copy.write(pgbinary.encode_batch(columns, rb))
            copy.write(pgbinary.TRAILER)
        match = sql.SQL(" AND ").join(
            sql.SQL("f.{c} = k.{c}").format(c=_I(n)) for n in table.natural_key
        )
        query = sql.SQL(
            "COPY (SELECT k._row FROM {tmp} k JOIN {t} f ON {match}) TO STDOUT (FORMAT BINARY)"
        ).format(tmp=tmp, t=_I(table.name), match=match)
        with cur.copy(query) as copy:
            data = b"".join(bytes(block) for block in copy)
    conn.execute(sql.SQL("DROP TABLE {}").format(tmp))
    return pgbinary.decode_int_column(data)


def keep_mask(conn: psycopg.Connection, lake: Lake, out: batches.TableOutput) -> np.ndarray:
    """Which rows of the batch (in file order) are new versions: the first of each natural
    key inside the batch, unless the table already holds it."""
    names = list(out.table.natural_key)
    typed = batches.read_columns(lake, out, names)
    keys = _nk_ints(typed)
    keys = keys.append_column("_row", pa.array(np.arange(keys.num_rows, dtype=np.int64)))
    firsts = keys.group_by(names, use_threads=False).aggregate([("_row", "min")])
    mask = np.zeros(keys.num_rows, dtype=bool)
    mask[firsts["_row_min"].to_numpy()] = True
    mask[_rows_already_loaded(conn, out.table, typed)] = False
    return mask


def _bypass_fk_triggers(conn: psycopg.Connection, table: WarehouseTable) -> bool:
    """SHARE-lock the referenced dimensions, then switch the per-row FK triggers off.

    False (triggers stay on) if this role may not set `session_replication_role`.
    """
    try:
        with conn.transaction():  # a savepoint: a refused SET leaves the batch intact
            conn.execute("SET LOCAL session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        log.info(
            "bulk fact load keeps per-row FK triggers: grant SET on session_replication_role",
            extra={"table": table.name},
        )
        return False
    dims = sorted({c.references for c in table.columns if c.references})
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.SQL(", ").join(map(_I, dims))))
    return True


def check_references(
    conn: psycopg.Connection,
    lake: Lake,
    out: batches.TableOutput,
    keys: dict[str, pa.Array],
    batch: str,
) -> None:
    """Every distinct referencing value of the batch exists in its dimension."""
    for column in out.table.columns:
        if not column.references or column.name not in keys:
            continue
        dim = WAREHOUSE_TABLES[column.references]
        missing = conn.execute(
            sql.SQL(
                "SELECT k FROM unnest(%s::{t}[]) AS u(k) "
                "WHERE NOT EXISTS (SELECT 1 FROM {d} d WHERE d.{pk} = u.k) LIMIT 1"
            ).format(t=sql.SQL(column.pg_type), d=_I(dim.name), pk=_I(dim.primary_key)),
            (keys[column.name].to_pylist(),),
        ).fetchone()
        if missing:
            raise reference_error(lake, out, column.name, str(missing[0]), batch)


def reference_error(
    lake: Lake, out: batches.TableOutput, column: str, key: str, batch: str
) -> ReferentialIntegrityError:
    """The typed error, naming the first batch row that carries the missing key."""
    sid = out.table.natural_key[0]
    row = next(
        (
            r[sid]
            for rb in batches.stream(lake, out)
            for r in rb.select([sid, column]).to_pylist()
            if str(r[column]) == key
        ),
        "?",
    )
    referenced = next(c.references for c in out.table.columns if c.name == column)
    return ReferentialIntegrityError(
        out.table.name, column, f"{key} (row {sid} = {row})", str(referenced), batch
    )


def _copy_columns(table: WarehouseTable) -> tuple[WColumn, ...]:
    return (
        WColumn(table.primary_key, "integer"),
        *table.columns,
        WColumn(ddl.LINEAGE_COLUMN, "text"),
    )


def append(conn: psycopg.Connection, lake: Lake, out: batches.TableOutput, batch: str) -> int:
    """COPY the batch's new fact versions into the table; return the number of rows added.

    When no version of the batch can already be in the table, the COPY is tried as is
    (in a savepoint) and the natural-key constraint catches versions repeated inside the
    batch; only then, or when the table holds overlapping keys, is the mask computed.
    """
    table = out.table
    mask = keep_mask(conn, lake, out) if _may_overlap(conn, lake, out) else None
    rows = out.rows if mask is None else int(mask.sum())
    if rows == 0:
        return 0
    bypass = rows >= BULK_FK_ROWS and _bypass_fk_triggers(conn, table)
    rid, t = _I(table.primary_key), _I(table.name)
    (base,) = conn.execute(sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(rid, t)).fetchone()  # type: ignore[misc]
    try:
        keys = _copy(conn, lake, out, batch, mask, base + 1)
    except psycopg.errors.UniqueViolation as exc:
        if mask is not None:
            raise LoadConflictError(
                f"{table.name}: a row with the same natural key was written by someone else "
                f"during load of batch {batch} ({exc.diag.message_detail}); retry the load"
            ) from None
        mask = keep_mask(conn, lake, out)  # versions repeated inside the batch
        rows = int(mask.sum())
        keys = _copy(conn, lake, out, batch, mask, base + 1)
    check_references(conn, lake, out, keys, batch)
    if bypass:
        conn.execute("SET LOCAL session_replication_role = origin")
    conn.execute(  # keep the serial default usable for anyone inserting by hand
        sql.SQL("SELECT setval(pg_get_serial_sequence(%s, %s), %s, false)"),
        (table.name, table.primary_key, base + 1 + rows),
    )
    return rows


def _may_overlap(conn: psycopg.Connection, lake: Lake, out: batches.TableOutput) -> bool:
    """False when the table is empty (a first or backfill load): nothing to skip there."""
    t = _I(out.table.name)
    (empty,) = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(t)).fetchone()  # type: ignore[misc]
    return not empty


def _copy(
    conn: psycopg.Connection,
    lake: Lake,
    out: batches.TableOutput,
    batch: str,
    mask: np.ndarray | None,
    first_id: int,
) -> dict[str, pa.Array]:
    """One COPY attempt in a savepoint; return the distinct referencing values copied."""
    table = out.table
    columns = _copy_columns(table)
    seen: dict[str, list[pa.Array]] = {c.name: [] for c in table.columns if c.references}
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        _I(table.name), sql.SQL(", ").join(_I(c.name) for c in columns)
    )
    encoded = _encode(lake, out, batch, mask, first_id, seen)
    try:
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
            copy.write(pgbinary.HEADER)
            for chunk in batches.prefetch(encoded):
                copy.write(chunk)
            copy.write(pgbinary.TRAILER)
    except psycopg.errors.ForeignKeyViolation as exc:  # triggers on: PostgreSQL found it
        raise _trigger_fk_error(exc, lake, out, batch) from None
    except psycopg.errors.UniqueViolation:
        raise
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
        raise apply.copy_error(exc, table, batch) from None
    return {n: pc.unique(pa.concat_arrays(a)) for n, a in seen.items() if a}


def _encode(
    lake: Lake,
    out: batches.TableOutput,
    batch: str,
    mask: np.ndarray | None,
    first_id: int,
    seen: dict[str, list[pa.Array]],
) -> Iterator[bytes]:
    """COPY data of the rows to keep, with record ids from `first_id` and the lineage;
    the distinct values of each referencing column are collected into `seen`."""
    table, offset, next_id = out.table, 0, first_id
    columns = _copy_columns(table)
    for rb in batches.stream(lake, out):
        if mask is not None:
            part, offset = mask[offset : offset + rb.num_rows], offset + rb.num_rows
            rb = rb.filter(pa.array(part))
        n = rb.num_rows
        ids = pa.array(np.arange(next_id, next_id + n, dtype=np.int32))
        lineage = pa.array([batch] * n, pa.string())
        full = rb.add_column(0, table.primary_key, ids).append_column(ddl.LINEAGE_COLUMN, lineage)
        yield pgbinary.encode_batch(columns, full)
        for name, values in seen.items():
            values.append(pc.unique(rb.column(name)))
        next_id += n


def _trigger_fk_error(
    exc: psycopg.errors.ForeignKeyViolation, lake: Lake, out: batches.TableOutput, batch: str
) -> ReferentialIntegrityError:
    _, column, _ = ddl.foreign_keys().get(exc.diag.constraint_name or "", ("", "?", ""))
    detail: Any = exc.diag.message_detail or ""
    key = detail.split(")=(", 1)[-1].split(")", 1)[0] if ")=(" in detail else detail
    return reference_error(lake, out, column, key, batch)
