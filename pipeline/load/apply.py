"""Apply one dimension of a processed batch, inside the caller's transaction.

The general path: rows are staged with binary COPY into a temporary table, then upserted
with one set-based statement (SCD type 1), written only when a value changed.

`INSERT ... ON CONFLICT` costs about four times a raw COPY (row-at-a-time inserts with
speculative index checks, per-row WAL), so rows whose key the table does not hold yet are
COPYed straight into it with their lineage instead: all of them into an empty dimension
(a first load), and for batches of at least `SPLIT_ROWS` rows the keys already present
are looked up first (`rows_present`: index probes of the batch's keys within the table's
key range) and only those rows take the general path. The table is locked against other
writers (SHARE ROW EXCLUSIVE; readers are not blocked) before that, so the lookup stays
true until commit; the whole thing runs in a savepoint: a key repeated in the batch rolls
it back and the batch takes the general path, which names the key (or, for `dim_date`,
skips the repeat). Facts take their own path (`pipeline.load.facts`). Identifiers come
from `pipeline.warehouse_schema` only and are quoted; values are always parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from pipeline.errors import DataQualityError
from pipeline.lake import Lake
from pipeline.load import batches, ddl, pgbinary, summaries
from pipeline.warehouse_schema import WarehouseTable, WColumn

_I = sql.Identifier
SPLIT_ROWS = 10_000  # from this many rows, a non-empty dimension's new keys are COPYed in
_INT4_KEYS = (pa.int32(), pa.date32(), pa.time32("ms"))  # what `rows_present` sorts by


def _cols(names: tuple[str, ...], prefix: str | None = None) -> sql.Composable:
    if prefix is None:
        return sql.SQL(", ").join(map(_I, names))
    return sql.SQL(", ").join(_I(prefix, n) for n in names)


def stage_name(table: WarehouseTable) -> sql.Identifier:
    return _I(f"_stage_{table.name}")


def stage(
    conn: psycopg.Connection,
    lake: Lake,
    out: batches.TableOutput,
    batch: str,
    mask: np.ndarray | None = None,
) -> int:
    """Create the staging table and COPY the files' rows (those `mask` keeps) into it;
    return the row count."""
    table = out.table
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} ({}) ON COMMIT DROP").format(
            stage_name(table), sql.SQL(", ").join(ddl.column_definitions(table))
        )
    )
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        stage_name(table), _cols(table.column_names)
    )
    chunks = (
        pgbinary.encode_batch(table.columns, record_batch)
        for record_batch in _masked(batches.stream(lake, out), mask)
    )
    return copy_checked(
        conn,
        copy_sql,
        chunks,
        table,
        batch,
        out.rows if mask is None else int(mask.sum()),
        "staged",
    )


def _masked(
    record_batches: Iterator[pa.RecordBatch], mask: np.ndarray | None
) -> Iterator[pa.RecordBatch]:
    """The rows `mask` (one flag per row, in file order) keeps; all of them without one."""
    offset = 0
    for rb in record_batches:
        if mask is None:
            yield rb
            continue
        part, offset = mask[offset : offset + rb.num_rows], offset + rb.num_rows
        if part.all():
            yield rb
        elif part.any():
            yield rb.filter(pgbinary.bool_array(part))


def rows_present(
    conn: psycopg.Connection, table: WarehouseTable, key: tuple[str, ...], keys: pa.Table
) -> np.ndarray:
    """Positions (in batch order) of the batch rows whose `key` the table already holds.

    Each row is one probe of the index that leads with `key` (a lookup per batch row,
    never a scan or hash of the whole table): a first load of many batches into a growing
    table would otherwise cost batches x table, quadratic in its size. Rows whose first key
    column lies outside the [min, max] the table holds (two index endpoint reads) cannot be
    there and are not probed, so a batch of new keys, the usual case, costs nothing more.
    The probed keys go to a temporary table in key order (binary COPY), so the probes walk
    the index in order, and only the matching positions come back (binary COPY, parsed with
    numpy): memory stays flat even when a large batch is loaded twice.
    """
    spec = {c.name: c for c in table.columns}
    columns = [WColumn("_row", "integer"), *(spec[n] for n in key)]
    held = _held_range(conn, table, spec[key[0]])
    if held is None:
        return np.zeros(0, dtype=np.int64)
    keys = keys.select(list(key)).combine_chunks()
    values = [_int4_values(keys.column(n)) for n in key]
    inside = np.flatnonzero((values[0] >= held[0]) & (values[0] <= held[1]))
    if not len(inside):
        return np.zeros(0, dtype=np.int64)
    order = pgbinary.int32_array(inside[np.lexsort([v[inside] for v in reversed(values)])])
    probe = pa.Table.from_arrays(
        [order, *(keys.column(n).take(order) for n in key)], names=["_row", *key]
    )
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
            for rb in probe.to_batches(max_chunksize=batches.READ_BATCH_ROWS):
                copy.write(pgbinary.encode_batch(columns, rb))
            copy.write(pgbinary.TRAILER)
        # LATERAL ... LIMIT 1 cannot be flattened into a join: a nested loop of index probes
        match = sql.SQL(" AND ").join(sql.SQL("f.{c} = k.{c}").format(c=_I(n)) for n in key)
        query = sql.SQL(
            "COPY (SELECT k._row FROM {tmp} k CROSS JOIN LATERAL "
            "(SELECT 1 FROM {t} f WHERE {match} LIMIT 1) AS hit) TO STDOUT (FORMAT BINARY)"
        ).format(tmp=tmp, t=_I(table.name), match=match)
        with cur.copy(query) as copy:
            data = b"".join(bytes(block) for block in copy)
    conn.execute(sql.SQL("DROP TABLE {}").format(tmp))
    return pgbinary.decode_int_column(data)


def _int4_values(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A key column (integer, date as days, time as ms: 4 bytes each) as int64, for the
    range filter and the sort; keys are NOT NULL."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type not in _INT4_KEYS:
        raise TypeError(f"key columns must be 4-byte integers, dates or times, got {array.type}")
    return pgbinary.raw_values(array, "<i4").astype(np.int64)


def _held_range(
    conn: psycopg.Connection, table: WarehouseTable, column: WColumn
) -> tuple[int, int] | None:
    """The smallest and largest value of `column` the table holds (dates as days since
    1970, as Arrow holds them), or None when it is empty."""
    days = sql.SQL(" - DATE '1970-01-01'" if column.pg_type == "date" else "")
    c = _I(column.name)
    row = conn.execute(  # min/max of the bare column: index endpoint reads
        sql.SQL("SELECT min({c}){d}, max({c}){d} FROM {t}").format(c=c, d=days, t=_I(table.name))
    ).fetchone()
    return None if row is None or row[0] is None else (int(row[0]), int(row[1]))


def apply_dimension(
    conn: psycopg.Connection,
    lake: Lake,
    out: batches.TableOutput,
    batch: str,
    committed_at: datetime,
) -> int:
    """Write one dimension's rows of the batch; return the number of rows written."""
    table = out.table
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(_I(table.name)))
    (empty,) = conn.execute(  # type: ignore[misc]
        sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(_I(table.name))
    ).fetchone()
    if empty or out.rows >= SPLIT_ROWS:
        try:
            with conn.transaction():  # a savepoint: a repeated key takes the general path
                return _copy_new_upsert_known(conn, lake, out, batch, committed_at, empty)
        except psycopg.errors.UniqueViolation:
            pass  # the general path reports the repeated key (dim_date skips it)
    stage(conn, lake, out, batch)
    written = upsert_dimension(conn, table, batch, committed_at)
    drop_stage(conn, table)
    return written


def _copy_new_upsert_known(
    conn: psycopg.Connection,
    lake: Lake,
    out: batches.TableOutput,
    batch: str,
    committed_at: datetime,
    empty: bool,
) -> int:
    """Rows with keys the table lacks: COPYed in; the others staged and upserted."""
    table = out.table
    known = np.zeros(out.rows, dtype=bool)
    if not empty:
        keys = batches.read_columns(lake, out, [table.primary_key])
        known[rows_present(conn, table, (table.primary_key,), keys)] = True
    written = 0
    if not known.all():
        written = copy_rows(conn, lake, out, batch, None if empty else ~known)
    if known.any():
        stage(conn, lake, out, batch, known)
        written += upsert_dimension(conn, table, batch, committed_at)
        drop_stage(conn, table)
    return written


def copy_rows(
    conn: psycopg.Connection,
    lake: Lake,
    out: batches.TableOutput,
    batch: str,
    mask: np.ndarray | None = None,
) -> int:
    """COPY the rows `mask` keeps (all without one), with the lineage column, straight
    into the table; a key it already holds raises `UniqueViolation`."""
    table = out.table
    columns = (*table.columns, WColumn(ddl.LINEAGE_COLUMN, "text"))
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        _I(table.name), _cols(tuple(c.name for c in columns))
    )
    lineage = batch.encode()

    def encoded() -> Iterator[bytes]:
        for record_batch in _masked(batches.stream(lake, out), mask):
            n = record_batch.num_rows
            with_lineage = record_batch.append_column(
                ddl.LINEAGE_COLUMN, pgbinary.constant_text(lineage, n)
            )
            yield pgbinary.encode_batch(columns, with_lineage)

    expected = out.rows if mask is None else int(mask.sum())
    written = copy_checked(
        conn, copy_sql, batches.prefetch(encoded()), table, batch, expected, "copied"
    )
    summaries.record_dimension_rows(conn, table, batch, written)
    return written


def copy_checked(
    conn: psycopg.Connection,
    copy_sql: sql.Composed,
    chunks: Iterable[bytes],
    table: WarehouseTable,
    batch: str,
    expected: int,
    verb: str,
) -> int:
    """Binary COPY of pre-encoded chunks; bad data becomes a typed error naming the table,
    and a row count other than `expected` (a short or over-long file) is refused.
    A `UniqueViolation` passes through untouched: callers use it to pick another path."""
    try:
        with conn.cursor() as cur:
            with cur.copy(copy_sql) as copy:
                copy.write(pgbinary.HEADER)
                for chunk in chunks:
                    copy.write(chunk)
                copy.write(pgbinary.TRAILER)
            written = cur.rowcount
    except psycopg.errors.UniqueViolation:
        raise
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
        raise copy_error(exc, table, batch) from None
    if written != expected:
        raise DataQualityError(
            f"processed batch {batch}: {verb} {written} {table.name} rows, expected {expected}"
        )
    return written


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
    # One statement, so `old` reads the rows as they were before the upsert (one snapshot):
    # each written row counts +1 for this batch and -1 for the batch that wrote it before
    # (the report's dimension rows per load day, `pipeline.load.summaries`).
    pk, lin = _I(table.primary_key), _I(ddl.LINEAGE_COLUMN)
    statement = sql.SQL(
        "WITH old AS (SELECT t.{pk}, t.{lin} FROM {t} t JOIN {s} USING ({pk})), "
        "up AS ({upsert} RETURNING t.{pk}), "
        "counts AS (SELECT %(batch)s::text AS batch, 1 AS n FROM up "
        "UNION ALL SELECT o.{lin}, -1 FROM up JOIN old o USING ({pk})), "
        "tally AS ({tally}) SELECT count(*) FROM up"
    ).format(
        pk=pk,
        lin=lin,
        t=_I(table.name),
        s=stage_name(table),
        upsert=head + tail,
        tally=summaries.add_dimension_rows(table, _I("counts")),
    )
    row = conn.execute(statement, {"batch": batch, "committed_at": committed_at}).fetchone()
    return int(row[0]) if row else 0
