"""Append a batch's fact rows: binary COPY straight into the fact table, new versions only.

`INSERT ... SELECT ... ON CONFLICT` from a staging table costs about as much as the raw
COPY again (row-at-a-time inserts) on top of the staging COPY itself. Since loads are
serialized by the load lock, the rows to skip can be known up front instead: versions
already in the table (index probes of the batch's natural keys, `apply.rows_present`,
skipped when the table is empty) and versions repeated inside the batch (the first one
wins, as ON CONFLICT DO NOTHING would keep). Repeats are rare (the transform
de-duplicates), so the COPY is tried first and the natural-key constraint reports them, in
which case the in-batch mask is computed and the COPY redone. The rows are COPYed into the
table itself, with record ids numbered here (max + 1, in batch order) so a re-run after a
crash numbers exactly like one clean pass; the sequence does not roll back and is only
moved forward afterwards. The natural-key UNIQUE constraint still guards against any other
writer.

Foreign keys: PostgreSQL checks them with one trigger query per row and column, about
ten times the cost of the insert. Each referenced dimension is checked set-based instead
(the batch's distinct keys, collected while streaming: `KeySet`; many keys by key range,
see `_missing_key`), and for batches of at least `BULK_FK_ROWS` rows the per-row triggers
are switched off for this transaction (`session_replication_role = replica`, if the role
may set it) while the referenced dimensions are locked in SHARE mode so the checked keys
stay valid until commit.

Versions: after the COPY, the source ids that may now hold several versions get their
`_superseded_at` marks recomputed (`pipeline.load.versions`); a batch of new source rows
costs one min/max lookup.

Arrow arrays are built from numpy buffers (`pgbinary.int32_array`, ...), never from Python
objects: pyarrow's Python-object conversion imports pandas, a second of every cold start.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from pipeline.errors import DataQualityError, LoadConflictError, ReferentialIntegrityError
from pipeline.lake import Lake
from pipeline.load import apply, batches, ddl, pgbinary, summaries, versions
from pipeline.warehouse_schema import WAREHOUSE_TABLES, WarehouseTable, WColumn

log = logging.getLogger(__name__)

BULK_FK_ROWS = 1_000  # per-row FK triggers cost ~15 us a row; the set-based check ~10 ms
PROBE_KEYS = 20_000  # up to this many distinct keys per column: one index probe each
_I = sql.Identifier


def _nk_ints(table: pa.Table) -> pa.Table:
    """Natural-key columns as int32 (date: days, time: ms) for hashing and joining."""
    return pa.table(
        {
            name: col.combine_chunks().view(pa.int32())
            for name, col in zip(table.column_names, table.columns, strict=True)
        }
    )


def keep_mask(
    conn: psycopg.Connection, lake: Lake, out: batches.TableOutput, *, dedupe: bool = True
) -> np.ndarray:
    """Which rows of the batch (in file order) are new versions: not already in the table
    and, with `dedupe`, the first of each natural key inside the batch."""
    names = list(out.table.natural_key)
    typed = batches.read_columns(lake, out, names)
    if dedupe:
        keys = _nk_ints(typed)
        keys = keys.append_column("_row", pgbinary.int32_array(np.arange(keys.num_rows)))
        firsts = keys.group_by(names, use_threads=False).aggregate([("_row", "min")])
        mask = np.zeros(keys.num_rows, dtype=bool)
        mask[firsts["_row_min"].to_numpy()] = True
    else:
        mask = np.ones(typed.num_rows, dtype=bool)
    mask[apply.rows_present(conn, out.table, out.table.natural_key, typed)] = False
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


class KeySet:
    """The distinct values of one referencing column (int32 keys; dates as days since 1970),
    collected chunk by chunk as a presence bitmap over [lo, hi]: a scatter per chunk instead
    of hashing. A range too wide for a bitmap falls back to sorted unique chunks."""

    MAX_SPAN = 1 << 26  # bytes of bitmap at most (64 MB)

    def __init__(self) -> None:
        self.lo = 0
        self.present: np.ndarray | None = np.zeros(0, dtype=bool)
        self.sparse: list[np.ndarray] = []

    def add(self, array: pa.Array) -> None:
        values = pgbinary.raw_values(array, "<i4")
        valid = pgbinary.validity(array)
        if valid is not None:  # NOT NULL columns: COPY refuses the batch anyway
            values = values[valid]
        if not len(values):
            return
        if self.present is None:
            self.sparse.append(np.unique(values))
            return
        lo, hi = int(values.min()), int(values.max())
        held = len(self.present)
        if held:
            lo, hi = min(lo, self.lo), max(hi, self.lo + held - 1)
        if hi - lo + 1 > self.MAX_SPAN:
            self.sparse = [self.values(), np.unique(values)]
            self.present = None
            return
        if not held or lo != self.lo or hi - lo + 1 != held:  # widen the bitmap
            grown = np.zeros(hi - lo + 1, dtype=bool)
            if held:
                grown[self.lo - lo : self.lo - lo + held] = self.present
            self.lo, self.present = lo, grown
        self.present[values.astype(np.int64) - lo] = True

    def values(self) -> np.ndarray:
        """The distinct keys, sorted (int64)."""
        if self.present is None:
            return np.unique(np.concatenate(self.sparse)).astype(np.int64)
        return self.lo + np.flatnonzero(self.present)


def check_references(
    conn: psycopg.Connection,
    lake: Lake,
    out: batches.TableOutput,
    keys: dict[str, KeySet],
    batch: str,
) -> None:
    """Every distinct referencing value of the batch exists in its dimension."""
    for column in out.table.columns:
        if not column.references or column.name not in keys:
            continue
        missing = _missing_key(conn, column, keys[column.name].values())
        if missing is not None:
            raise reference_error(lake, out, column.name, missing, batch)


def _py(column: WColumn, value: int) -> int | dt.date:
    return _EPOCH + dt.timedelta(days=value) if column.pg_type == "date" else value


_EPOCH = dt.date(1970, 1, 1)


def _missing_key(conn: psycopg.Connection, column: WColumn, keys: np.ndarray) -> str | None:
    """One of `keys` (distinct, sorted; dates as days) absent from the referenced
    dimension, or None.

    A few keys, or keys spread thinly over their range: one index probe each. Many keys
    (a bulk load: millions of transaction ids) would cost a probe each too, so first the
    dimension's keys in [min, max] are counted: the keys are integers, so a count equal to
    the width of the range means every value in it exists. When the dimension has gaps
    there, its keys in the range are fetched (binary COPY) and compared here with numpy.
    """
    if len(keys) == 0:
        return None
    dim = WAREHOUSE_TABLES[str(column.references)]
    pk, d = _I(dim.primary_key), _I(dim.name)
    lo, hi = _py(column, int(keys[0])), _py(column, int(keys[-1]))
    span = int(keys[-1]) - int(keys[0]) + 1
    if len(keys) > PROBE_KEYS and len(keys) * 4 >= span:
        (count,) = conn.execute(  # type: ignore[misc]
            sql.SQL("SELECT count(*) FROM {d} WHERE {pk} BETWEEN %s AND %s").format(d=d, pk=pk),
            (lo, hi),
        ).fetchone()
        if count == span:
            return None
        query = sql.SQL(
            "COPY (SELECT {pk} FROM {d} WHERE {pk} BETWEEN {lo} AND {hi}) TO STDOUT (FORMAT BINARY)"
        ).format(pk=pk, d=d, lo=sql.Literal(lo), hi=sql.Literal(hi))
        with conn.cursor() as cur, cur.copy(query) as copy:
            data = b"".join(bytes(block) for block in copy)
        present = pgbinary.decode_int_column(data)
        if column.pg_type == "date":
            present = present + pgbinary.PG_EPOCH_DAYS
        absent = np.flatnonzero(~np.isin(keys, present))
        return str(_py(column, int(keys[absent[0]]))) if len(absent) else None
    missing = conn.execute(
        sql.SQL(
            "SELECT k FROM unnest(%s::{t}[]) AS u(k) "
            "WHERE NOT EXISTS (SELECT 1 FROM {d} d WHERE d.{pk} = u.k) LIMIT 1"
        ).format(t=sql.SQL(column.pg_type), d=d, pk=pk),
        ([_py(column, int(k)) for k in keys],),
    ).fetchone()
    return None if missing is None else str(missing[0])


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
    """Write the batch's fact versions; return the number of rows added or changed.

    New versions are COPYed in. Versions repeated inside a batch are rare (the transform
    de-duplicates), so the COPY is first tried (in a savepoint) skipping only the versions
    the table already holds (nothing when it is empty); if the natural-key constraint then
    reports a repeat, the in-batch first occurrences are computed too and the COPY redone.
    A repeat even then was written by someone else meanwhile: `LoadConflictError`
    (transient). Versions the table holds already are re-deliveries the transform found
    changed (or could not compare): the row with that natural key is updated in place
    where a value differs (`correct`), its lineage naming this batch.
    """
    table = out.table
    mask = keep_mask(conn, lake, out, dedupe=False) if _may_overlap(conn, lake, out) else None
    rows = out.rows if mask is None else int(mask.sum())
    corrected = 0
    if mask is not None and not mask.all():
        corrected = correct(conn, lake, out, batch, ~mask)
    if rows == 0:
        return corrected
    bypass = rows >= BULK_FK_ROWS and _bypass_fk_triggers(conn, table)
    held = versions.held_range(conn, table) if mask is not None else None
    rid, t = _I(table.primary_key), _I(table.name)
    (base,) = conn.execute(sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(rid, t)).fetchone()  # type: ignore[misc]
    try:
        keys, ids, tally = _copy(conn, lake, out, batch, mask, base + 1, held)
    except psycopg.errors.UniqueViolation:
        mask = keep_mask(conn, lake, out)  # versions repeated inside the batch
        rows = int(mask.sum())
        try:
            keys, ids, tally = _copy(conn, lake, out, batch, mask, base + 1, held)
        except psycopg.errors.UniqueViolation as exc:
            raise LoadConflictError(
                f"{table.name}: a row with the same natural key was written by someone else "
                f"during load of batch {batch} ({exc.diag.message_detail}); retry the load"
            ) from None
    check_references(conn, lake, out, keys, batch)
    _mark_and_summarize(conn, table, versions.touched_ids(ids, held), tally, base + 1, held)
    if bypass:
        conn.execute("SET LOCAL session_replication_role = origin")
    conn.execute(  # keep the serial default usable for anyone inserting by hand
        sql.SQL("SELECT setval(pg_get_serial_sequence(%s, %s), %s, false)"),
        (table.name, table.primary_key, base + 1 + rows),
    )
    return rows + corrected


def _mark_and_summarize(
    conn: psycopg.Connection,
    table: WarehouseTable,
    touched: np.ndarray,
    tally: summaries.Tally,
    first_id: int,
    held: versions.SourceRange | None,
) -> None:
    """Re-mark the versions of the `touched` source ids and bring the summaries up to date.

    The tally holds the appended rows outside `held` (each current: a new source id, one
    version). Until the marks move, the summaries count, of the touched ids, their current
    rows from before the batch and the appended rows outside `held` (the tally's, or the
    fallback's when it is inexact): that is subtracted, the marks are set, and the touched
    ids' current rows are added again.
    """
    if not tally.exact:
        summaries.add_current(conn, table, 1, summaries.tally_rows(first_id, held, table))
    if len(touched):
        with versions.staged_ids(conn, table, touched) as tmp:
            source_id = table.natural_key[0]
            named = summaries.ids_in(table, tmp, source_id)
            counted = sql.SQL("f.{rid} < {first} OR ({fresh})").format(
                rid=_I(table.primary_key),
                first=sql.Literal(first_id),
                fresh=summaries.tally_rows(first_id, held, table),
            )
            summaries.add_current(conn, table, -1, sql.SQL("{} AND ({})").format(named, counted))
            versions.mark_staged(conn, table, tmp)
            summaries.add_current(conn, table, 1, named)
    tally.apply(conn)


def correct(
    conn: psycopg.Connection, lake: Lake, out: batches.TableOutput, batch: str, held: np.ndarray
) -> int:
    """Update in place the fact rows whose natural key the `held` rows of the batch carry,
    where any value differs; return the number of rows changed. The record id stays, the
    lineage column names `batch`. Few rows (corrections), so the per-row FK triggers check
    them (they run before any trigger bypass of the batch's COPY)."""
    table = out.table
    apply.stage(conn, lake, out, batch, held)
    stage = apply.stage_name(table)
    nk = table.natural_key
    dup = conn.execute(
        sql.SQL("SELECT {k} FROM {s} GROUP BY {k} HAVING count(*) > 1 LIMIT 1").format(
            k=sql.SQL(", ").join(map(_I, nk)), s=stage
        )
    ).fetchone()
    if dup:
        raise DataQualityError(
            f"processed batch {batch}: {table.name} has more than one row for the natural key "
            f"{dict(zip(nk, dup, strict=True))}; a batch must hold one row per version"
        )
    values = [c for c in table.column_names if c not in nk]
    statement = sql.SQL(
        "UPDATE {t} AS f SET ({cols}, {lin}) = ROW({new}, %(batch)s) FROM {s} AS s, {t} AS o "
        "WHERE {match} AND o.{rid} = f.{rid} AND ROW({old}) IS DISTINCT FROM ROW({new})"
    ).format(
        t=_I(table.name),
        rid=_I(table.primary_key),
        cols=sql.SQL(", ").join(map(_I, values)),
        lin=_I(ddl.LINEAGE_COLUMN),
        new=sql.SQL(", ").join(_I("s", c) for c in values),
        old=sql.SQL(", ").join(_I("f", c) for c in values),
        s=stage,
        match=sql.SQL(" AND ").join(sql.SQL("f.{c} = s.{c}").format(c=_I(c)) for c in nk),
    )
    try:  # the summaries lose each changed row's old values and gain its new ones
        changed = summaries.update_counted(conn, table, statement, {"batch": batch})
    except psycopg.errors.ForeignKeyViolation as exc:
        raise _trigger_fk_error(exc, lake, out, batch) from None
    apply.drop_stage(conn, table)
    return changed


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
    held: versions.SourceRange | None,
) -> tuple[dict[str, KeySet], np.ndarray, summaries.Tally]:
    """One COPY attempt in a savepoint; return the distinct referencing values copied, the
    source ids copied (in batch order) and the summary groups of the rows copied outside
    `held`."""
    table = out.table
    columns = _copy_columns(table)
    seen = {c.name: KeySet() for c in table.columns if c.references}
    source_ids: list[np.ndarray] = []
    tally = summaries.Tally(table, batch, held)
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        _I(table.name), sql.SQL(", ").join(_I(c.name) for c in columns)
    )
    encoded = _encode(lake, out, batch, mask, first_id, seen, source_ids, tally)
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
    ids = np.concatenate(source_ids) if source_ids else np.zeros(0, dtype=np.int32)
    return seen, ids, tally


def _encode(
    lake: Lake,
    out: batches.TableOutput,
    batch: str,
    mask: np.ndarray | None,
    first_id: int,
    seen: dict[str, KeySet],
    source_ids: list[np.ndarray],
    tally: summaries.Tally,
) -> Iterator[bytes]:
    """COPY data of the rows to keep, with record ids from `first_id` and the lineage;
    the distinct values of each referencing column are collected into `seen`, the source
    ids into `source_ids`, the summary groups into `tally` (in the COPY's producer thread,
    while the server writes the previous chunk)."""
    table, offset, next_id = out.table, 0, first_id
    source_id = table.natural_key[0]
    columns = _copy_columns(table)
    for rb in batches.stream(lake, out):
        if mask is not None:
            part, offset = mask[offset : offset + rb.num_rows], offset + rb.num_rows
            rb = rb.filter(pgbinary.bool_array(part))
        n = rb.num_rows
        ids = pgbinary.int32_array(np.arange(next_id, next_id + n))
        lineage = pgbinary.constant_text(batch.encode(), n)
        full = rb.add_column(0, table.primary_key, ids).append_column(ddl.LINEAGE_COLUMN, lineage)
        yield pgbinary.encode_batch(columns, full)
        for name, keyset in seen.items():
            keyset.add(rb.column(name))
        source_ids.append(pgbinary.raw_values(rb.column(source_id), "<i4").copy())
        tally.add(rb)
        next_id += n


def _trigger_fk_error(
    exc: psycopg.errors.ForeignKeyViolation, lake: Lake, out: batches.TableOutput, batch: str
) -> ReferentialIntegrityError:
    _, column, _ = ddl.foreign_keys().get(exc.diag.constraint_name or "", ("", "?", ""))
    detail: Any = exc.diag.message_detail or ""
    key = detail.split(")=(", 1)[-1].split(")", 1)[0] if ")=(" in detail else detail
    return reference_error(lake, out, column, key, batch)
