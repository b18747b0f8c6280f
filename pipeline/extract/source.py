"""Reading totesys: one REPEATABLE READ, READ ONLY snapshot per extraction, rows as Arrow.

Rows travel through ADBC (`adbc_driver_postgresql`), which runs the query as a binary
`COPY ... TO STDOUT` and decodes it into Arrow record batches in C++: the fastest path
measured (benchmarks/extract_bench.py) and streaming, so memory stays bounded.

Two ADBC details shape this module:
- With bound parameters ADBC stops using COPY and buffers the whole result (measured:
  2M rows, one batch, ~1 GB RSS). The window bounds are therefore bound as parameters
  into transaction-local settings (`set_config(..., true)`) and the COPY query reads them
  with `current_setting()`: values never become SQL text, and the big query still streams.
  Each bound is read in a scalar subquery, `(SELECT current_setting(...)::timestamp)`,
  which PostgreSQL evaluates once (an InitPlan) instead of once per row: production has no
  index on the cursor, so an incremental extraction is a scan of the whole table, and the
  per-row form made that scan 4x slower (2M sales orders: 0.62 s against 0.16 s, literal
  bounds 0.14 s; `python -m benchmarks.extract_bench --window-scan`). With the opt-in
  cursor index the same query is an index range scan.
- ADBC's own transaction switch cannot choose the isolation level, so the connection is
  in autocommit mode and the transaction is opened with an explicit `BEGIN ISOLATION LEVEL
  REPEATABLE READ READ ONLY`: the drift check, the clock and every row come from one snapshot.

The low-level ADBC API is used, not `adbc_driver_manager.dbapi`: that module imports
`pyarrow.dataset`, pandas and Polars (1.2-1.8 s and ~60 MB per cold process on this
machine, ten times a no-change extraction of all tables), and prepares every statement.

Opening an ADBC connection costs ~0.1 s (the driver loads the server's whole type catalog
for every new database handle, then authenticates), more than a no-change extraction of a
table. Connections are therefore kept per process (`_POOL`): one that ended its snapshot
with a clean COMMIT is reused by the next extraction with the same DSN within a minute
(the runner's other tables, a warm Lambda's next call); a reused one that fails to open a
transaction is replaced by a new one, once; any error closes it. Transaction-local
settings (`set_config(..., true)`) end with the transaction, so a reused session starts
clean, and `pa.array` is avoided here too (it imports pandas).

Columns whose type is not a built-in (enums) or that ADBC decodes slowly (numeric: its
binary form to text costs 4x an integer, 0.34 CPU-s per million values, while the
server's own text output adds 0.07) are selected as text: the driver's type cache never
matters, and `to_catalog` casts the exact decimal text to Arrow's decimal (checked).
Source columns the catalog lacks are selected after the catalog's, as
`pipeline.extract.pgtypes` says (natively or as text), so the raw zone keeps them.

One scan per table per query: `batches` reads one row past `limit`, so whether a cut-off
window has more rows is known without a second query. A capped call cuts its window into
slices by an estimate from the planner's statistics (`cursor_stats`, see
`pipeline.extract.slices`), so each query sorts about its own rows, not the rest of the table.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import struct
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import adbc_driver_manager
import adbc_driver_postgresql
import pyarrow as pa
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.catalog import Table
from pipeline.credentials import Database, as_database, connection_error, redact
from pipeline.errors import (
    AuthenticationError,
    ConfigurationError,
    DataQualityError,
    SourceUnavailableError,
)
from pipeline.extract import pgtypes
from pipeline.extract.drift import SourceColumn, expected
from pipeline.extract.slices import CursorStats

CONNECT_TIMEOUT_S = 10
BATCH_BYTES = 16 << 20  # ADBC's batch size hint: bounds the memory one batch takes
_SETTING = "totesys_extract.{}"  # transaction-local settings carrying the bound values
POOL_SIZE = 4  # idle source connections kept per process (the runner extracts 2-4 at once)
POOL_MAX_IDLE_S = 60.0  # a kept connection idle for longer is closed, not reused


@dataclass(frozen=True)
class Window:
    """The rows one extraction reads, in (cursor, primary key) order.

    `since` is inclusive (None: from the first row); with `after_key` the window starts
    strictly after the row (since, after_key) instead, which is how a continuation resumes
    without overlap. `until` is exclusive and never later than the source's clock.
    """

    since: datetime | None
    until: datetime
    after_key: int | None = None


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def _conninfo(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
    params.setdefault("application_name", "totesys-etl extract")
    return make_conninfo(**params)  # type: ignore[arg-type]


def _typed_error(exc: Exception, table: str, db: Database) -> Exception:
    """Map a driver error to our typed errors, naming the table and never the password."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, adbc_driver_manager.OperationalError) or sqlstate.startswith("28"):
        return connection_error(db, str(exc), context=f"table {table!r}")
    lines = [line for line in redact(str(exc).strip()).splitlines() if line.strip()]
    return ConfigurationError(
        f"table {table!r}: {db.where}: {lines[0] if lines else type(exc).__name__}"
    )


class _Pool:
    """Idle source sessions of this process, most recent last: at most `size`, each kept
    for at most `max_idle` seconds (a firewall or NAT may drop a long-idle connection
    without telling either end; a fresh connection costs less than finding out)."""

    def __init__(self, size: int, max_idle: float) -> None:
        self.size, self.max_idle = size, max_idle
        self._idle: list[tuple[str, _Session, float]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def take(self, conninfo: str) -> _Session | None:
        found, now = None, time.monotonic()
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the sockets are the parent's
                self._idle, self._pid = [], os.getpid()
            stale = [e for e in self._idle if now - e[2] > self.max_idle]
            self._idle = [e for e in self._idle if now - e[2] <= self.max_idle]
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i][0] == conninfo:
                    found = self._idle.pop(i)[1]
                    break
        for _, old, _ in stale:
            _close(old)
        return found

    def give(self, conninfo: str, session: _Session) -> None:
        with self._lock:
            self._idle.append((conninfo, session, time.monotonic()))
            evicted = self._idle[: -self.size] if self.size else self._idle[:]
            del self._idle[: len(evicted)]
        for _, old, _ in evicted:
            _close(old)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, session, _ in idle:
            _close(session)


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


_POOL = _Pool(POOL_SIZE, POOL_MAX_IDLE_S)
atexit.register(_POOL.clear)


class _Session:
    """One source connection through ADBC's low-level API (autocommit, as ADBC starts)."""

    def __init__(self, conninfo: str) -> None:
        self._db = adbc_driver_postgresql.connect(conninfo)
        try:
            self._conn = adbc_driver_manager.AdbcConnection(self._db)
        except BaseException:
            self._db.close()
            raise
        self._open: list[Any] = []  # statements and readers, closed before the connection

    def reader(
        self, query: str, params: tuple[str, ...] = (), options: dict[str, str] | None = None
    ) -> tuple[Any, pa.RecordBatchReader]:
        """Run `query` with text parameters `$1..$n`; returns the statement and its result
        stream, to be handed back to `release` when done."""
        stmt = adbc_driver_manager.AdbcStatement(self._conn)
        self._open.append(stmt)
        try:
            if options:
                stmt.set_options(**options)
            stmt.set_sql_query(query)
            if params:
                names = [f"p{i}" for i in range(len(params))]
                stmt.bind(pa.RecordBatch.from_arrays([_text(p) for p in params], names=names))
            stream, _ = stmt.execute_query()
            reader = pa.RecordBatchReader.from_stream(stream)
        except BaseException:
            self.release(stmt)
            raise
        self._open.append(reader)
        return stmt, reader

    def release(self, stmt: Any, reader: pa.RecordBatchReader | None = None) -> None:
        for handle in (reader, stmt):  # the stream before the statement it reads from
            if handle is not None:
                _close(handle)
                with contextlib.suppress(ValueError):
                    self._open.remove(handle)

    def rows(self, query: str, params: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
        stmt, reader = self.reader(query, params)
        try:
            table = reader.read_all()
        finally:
            self.release(stmt, reader)
        return list(zip(*(column.to_pylist() for column in table.columns), strict=True))

    def execute(self, statement: str) -> None:
        stmt = adbc_driver_manager.AdbcStatement(self._conn)
        try:
            stmt.set_sql_query(statement)
            stmt.execute_update()
        finally:
            _close(stmt)

    def close(self) -> None:
        """Close what is still open (an interrupted stream), then the connection."""
        for handle in reversed(self._open):
            _close(handle)
        self._open.clear()
        try:
            self._conn.close()
        finally:
            self._db.close()


def _text(value: str) -> pa.Array:
    """A one-element string array, built from buffers: `pa.array` imports pandas (~1 s)."""
    data = value.encode()
    offsets = pa.py_buffer(struct.pack("<2i", 0, len(data)))
    return pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(data)])


def _connect(conninfo: str, table: Table, db: Database) -> _Session:
    try:
        return _Session(conninfo)
    except adbc_driver_manager.Error as exc:
        raise _typed_error(exc, table.name, db) from None


class SourceSnapshot:
    """One read-only, repeatable-read transaction on the source (use `open`)."""

    def __init__(self, session: _Session, table: Table, db: Database) -> None:
        self._db = db
        self.table = table
        self._session = session
        session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # The first query takes the snapshot; `now` is the transaction's start on the
        # source's own clock, in the same naive form as the timestamp(3) columns, and
        # `snapshot_to` a moment of that clock after the snapshot was taken: the snapshot's
        # instant lies in [now, snapshot_to] (reconciliation orders batches by it). JIT
        # compiling costs more than these scans, so it is off for this transaction.
        self.now, self.snapshot_to, self.timezone, _ = self._one(
            "SELECT localtimestamp, clock_timestamp()::timestamp, current_setting('TimeZone'), "
            "set_config('jit', 'off', true)",
            (),
        )

    @classmethod
    @contextlib.contextmanager
    def open(cls, target: Database | str, table: Table) -> Iterator[SourceSnapshot]:
        """A snapshot through a kept or a new session; a cached secret that fails to
        authenticate is fetched again once (`Database.refetched`: a rotation)."""
        db = as_database(target)
        try:
            conninfo = _conninfo(db.dsn)
        except Exception:  # libpq's complaint may quote the password: not repeated
            raise ConfigurationError(
                f"table {table.name!r}: the source DSN (from {db.origin}) is malformed"
            ) from None
        session = _POOL.take(conninfo)
        try:
            try:
                snapshot = cls(session, table, db) if session is not None else None
            except adbc_driver_manager.Error:  # a kept connection the server has closed
                _close(session)
                snapshot = None
            if snapshot is None:
                try:
                    session = _connect(conninfo, table, db)
                except AuthenticationError:
                    fresh = db.refetched()
                    if fresh is None:
                        raise
                    db, conninfo = fresh, _conninfo(fresh.dsn)
                    session = _connect(conninfo, table, db)
                snapshot = cls(session, table, db)
            yield snapshot
            snapshot._session.execute("COMMIT")
        except adbc_driver_manager.Error as exc:
            _close(session)
            raise _typed_error(exc, table.name, db) from None
        except BaseException:
            _close(session)  # the transaction may be open or the stream half read: never reuse
            raise
        _POOL.give(conninfo, snapshot._session)  # clean: committed, no statement open

    def _one(self, query: str, params: tuple[str, ...]) -> tuple[Any, ...]:
        rows = self._session.rows(query, params)
        assert rows
        return rows[0]

    def _set(self, values: dict[str, str]) -> None:
        """Bind `values` as transaction-local settings, all in one round trip."""
        calls = ", ".join(
            f"set_config(${2 * i + 1}, ${2 * i + 2}, true)" for i in range(len(values))
        )
        self._one(
            f"SELECT {calls}", tuple(p for n, v in values.items() for p in (_SETTING.format(n), v))
        )

    def _setting(self, name: str, cast: str) -> sql.Composable:
        """A bound value, evaluated once per query (module docstring)."""
        return sql.SQL("(SELECT current_setting({})::{})").format(
            sql.Literal(_SETTING.format(name)), sql.SQL(cast)
        )

    # -- metadata ------------------------------------------------------------------
    def columns(self) -> list[SourceColumn]:
        """The live columns of the table (as the SELECT would resolve its name), with the
        labels of enum-typed columns."""
        rows = self._session.rows(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, "
            "(SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e "
            "WHERE e.enumtypid = a.atttypid) "
            "FROM pg_attribute a WHERE a.attrelid = to_regclass($1) "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (sql.Identifier(self.table.name).as_string(None),),
        )
        return [
            SourceColumn(
                str(name), str(type_), bool(null), None if labels is None else tuple(labels)
            )
            for name, type_, null, labels in rows
        ]

    # -- rows ----------------------------------------------------------------------
    def _where(
        self,
        window: Window,
        values: dict[str, str],
        slice_from: datetime | None = None,
        slice_to: datetime | None = None,
    ) -> sql.Composable:
        """The window's condition, narrowed to `slice_from <= cursor < slice_to` when given
        (`pipeline.extract.slices`); the values it reads are added to `values` (see `_set`)."""
        cursor, key = sql.Identifier(self.table.cursor), sql.Identifier(self.table.primary_key)
        values["until"] = _iso(window.until)
        parts = [sql.SQL("{} < {}").format(cursor, self._setting("until", "timestamp"))]
        if slice_to is not None:
            values["slice_to"] = _iso(slice_to)
            parts.append(sql.SQL("{} < {}").format(cursor, self._setting("slice_to", "timestamp")))
        if slice_from is not None:
            values["slice_from"] = _iso(slice_from)
            parts.append(
                sql.SQL("{} >= {}").format(cursor, self._setting("slice_from", "timestamp"))
            )
        if window.since is not None:
            values["since"] = _iso(window.since)
            since = self._setting("since", "timestamp")
            if window.after_key is None:
                parts.append(sql.SQL("{} >= {}").format(cursor, since))
            else:
                values["after_key"] = str(window.after_key)
                parts.append(
                    sql.SQL("({}, {}) > ({}, {})").format(
                        cursor, key, since, self._setting("after_key", "integer")
                    )
                )
        return sql.SQL(" AND ").join(parts)

    def _select_list(
        self, added: tuple[SourceColumn, ...] = (), alias: str | None = None
    ) -> sql.Composable:
        """Catalog columns, then `added` source columns; enums, numerics and types without
        an Arrow mapping as their exact text (module docstring). `alias`: the table's alias
        in the query."""
        items: list[sql.Composable] = []
        types = [(c.name, expected(c)) for c in self.table.columns]
        for name, pg in [*types, *((c.name, c.pg) for c in added)]:
            ident = sql.Identifier(name)
            value = sql.Identifier(alias, name) if alias else ident
            if pgtypes.read_as_text(pg):
                items.append(sql.SQL("{}::text AS {}").format(value, ident))
            else:
                items.append(sql.SQL("{} AS {}").format(value, ident) if alias else ident)
        return sql.SQL(", ").join(items)

    def batches(
        self,
        window: Window,
        limit: int | None = None,
        added: tuple[SourceColumn, ...] = (),
        *,
        slice_from: datetime | None = None,
        slice_to: datetime | None = None,
    ) -> Generator[pa.RecordBatch, None, None]:
        """The window's rows in (cursor, key) order as raw ADBC record batches (streamed),
        only those with `slice_from <= cursor < slice_to` when given.

        With `limit`, one row more than `limit` is read (when the window has it), so the
        caller learns whether rows are left without scanning the table again.
        """
        values: dict[str, str] = {}
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}, {}").format(
            self._select_list(added),
            sql.Identifier(self.table.name),
            self._where(window, values, slice_from, slice_to),
            sql.Identifier(self.table.cursor),
            sql.Identifier(self.table.primary_key),
        )
        if limit is not None:
            values["limit"] = str(limit + 1)
            query = sql.SQL("{} LIMIT {}").format(query, self._setting("limit", "bigint"))
        self._set(values)
        yield from self._stream(query)

    def cursor_stats(self) -> CursorStats | None:
        """The planner's statistics of the cursor column (`pipeline.extract.slices`), or
        None when the table has none (never analysed) or none that a bound can use. The
        row count is scaled from the pages `ANALYZE` saw to the pages there are now, as the
        planner does."""
        rows = self._session.rows(
            "SELECT c.reltuples, c.relpages, "
            "pg_relation_size(c.oid) / current_setting('block_size')::bigint, "
            "s.null_frac, s.histogram_bounds::text::timestamp[], "
            "s.most_common_vals::text::timestamp[], s.most_common_freqs "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 "
            "AND a.atttypid = 'timestamp'::regtype "  # what the casts read (drift: no stats)
            "JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname "
            "AND s.attname = $2 AND NOT s.inherited "
            "WHERE c.oid = to_regclass($1)",
            (sql.Identifier(self.table.name).as_string(None), self.table.cursor),
        )
        if not rows:
            return None
        tuples, pages, pages_now, null_frac, bounds, common, freqs = rows[0]
        if tuples is None or tuples < 0 or (not bounds and not common):
            return None
        scale = pages_now / pages if pages and pages_now else 1.0
        return CursorStats(
            rows=float(tuples) * scale,
            null_frac=float(null_frac or 0.0),
            bounds=tuple(bounds or ()),
            common=tuple(zip(common or (), map(float, freqs or ()), strict=True)),
        )

    # -- reconciliation: keys and cursors only --------------------------------------------
    def key_fingerprints(self, shift: int, hash_sql: sql.Composable, future: datetime) -> pa.Table:
        """Per bucket of `2**shift` consecutive keys: `bucket`, `rows`, `xor` (of the rows'
        hashes, `hash_sql`) and `future` (rows stamped after `future`). One scan of the
        table reading the key and cursor columns only; a few thousand result rows."""
        key, cursor = sql.Identifier(self.table.primary_key), sql.Identifier(self.table.cursor)
        query = sql.SQL(
            "SELECT ({k} >> {shift})::bigint AS bucket, count(*) AS rows, bit_xor({h}) AS xor, "
            "count(*) FILTER (WHERE {c} > {future}) AS future FROM {t} GROUP BY 1 ORDER BY 1"
        ).format(
            k=key,
            c=cursor,
            h=hash_sql,
            shift=sql.Literal(shift),
            future=self._setting("future", "timestamp"),
            t=sql.Identifier(self.table.name),
        )
        self._set({"future": _iso(future)})
        return self._table(query)

    def keys_in(self, ranges: list[tuple[int, int]]) -> pa.Table:
        """`(key, last_updated)` of the rows whose key lies in one of the inclusive
        `ranges` (sorted, disjoint), by key: an index range scan per range."""
        key, cursor = sql.Identifier(self.table.primary_key), sql.Identifier(self.table.cursor)
        query = sql.SQL(
            "SELECT t.{k}, t.{c} FROM {r} CROSS JOIN LATERAL "
            "(SELECT {k}, {c} FROM {t} WHERE {within}) t ORDER BY 1"
        ).format(k=key, c=cursor, **self._ranges(ranges))
        return self._table(query)

    def rows_in(
        self, ranges: list[tuple[int, int]], added: tuple[SourceColumn, ...] = ()
    ) -> Iterator[pa.RecordBatch]:
        """The catalog columns of the rows whose key lies in one of `ranges`, streamed in
        (cursor, key) order like `batches`."""
        query = sql.SQL(
            "SELECT {cols} FROM {r} CROSS JOIN LATERAL (SELECT * FROM {t} WHERE {within}) t "
            "ORDER BY {c}, {k}"
        ).format(
            cols=self._select_list(added, "t"),
            c=sql.Identifier("t", self.table.cursor),
            k=sql.Identifier("t", self.table.primary_key),
            **self._ranges(ranges),
        )
        return self._stream(query)

    def _ranges(self, ranges: list[tuple[int, int]]) -> dict[str, sql.Composable]:
        """The FROM items joining the table to `ranges` (bound as settings, see `_set`)."""
        self._set(
            {
                "lo": "{" + ",".join(str(lo) for lo, _ in ranges) + "}",
                "hi": "{" + ",".join(str(hi) for _, hi in ranges) + "}",
            }
        )
        # A lateral subquery per range: an index range scan on the primary key each (a join
        # on BETWEEN may be planned as a scan of the whole table per range).
        return {
            "r": sql.SQL("unnest({}, {}) AS r(lo, hi)").format(
                self._setting("lo", "integer[]"), self._setting("hi", "integer[]")
            ),
            "t": sql.Identifier(self.table.name),
            "within": sql.SQL("{k} BETWEEN r.lo AND r.hi").format(
                k=sql.Identifier(self.table.primary_key)
            ),
        }

    def _table(self, query: sql.Composable) -> pa.Table:
        stmt, reader = self._session.reader(query.as_string(None))
        try:
            return reader.read_all()
        except (pa.ArrowException, OSError) as exc:  # the stream broke mid-way
            raise self._broken(exc) from None
        finally:
            self._session.release(stmt, reader)

    def _stream(self, query: sql.Composable) -> Iterator[pa.RecordBatch]:
        stmt, reader = self._session.reader(
            query.as_string(None),
            options={"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)},
        )
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except (pa.ArrowException, OSError) as exc:  # the stream broke mid-way
                    raise self._broken(exc) from None
                yield batch
        finally:
            self._session.release(stmt, reader)

    def _broken(self, exc: Exception) -> SourceUnavailableError:
        return SourceUnavailableError(
            f"table {self.table.name!r}: reading from {self._db.where} "
            f"failed: {redact(str(exc)).splitlines()[0]}"
        )

    def scalar(self, query: str) -> Any:
        """One value of a constant query (no identifiers, no values: those go through the
        methods above)."""
        return self._one(query, ())[0]


def to_catalog(batch: pa.RecordBatch, schema: pa.Schema, table: str) -> pa.RecordBatch:
    """Cast one ADBC batch to the batch schema (`pipeline.extract.drift.batch_schema`:
    numeric text -> decimal, us -> ms, bigint -> a catalog integer).

    Casts are safe (checked): a timestamp with sub-millisecond digits, a numeric that does
    not fit decimal(10,2) or a widened integer column's value beyond int32 is an error
    naming the column, never a silent rounding or wrap-around.
    """
    arrays = []
    for field in schema:
        column = batch.column(field.name)
        if isinstance(column.type, pa.ExtensionType):
            column = column.storage  # ADBC's opaque numeric: its text is the exact value
        try:
            arrays.append(column.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataQualityError(
                f"table {table!r}, column {field.name!r}: source values do not convert to "
                f"{field.type} ({exc}); nothing was written for {table!r}. If the source "
                "widened the column (see the drift warnings), adopt the wider type in "
                "pipeline/catalog.py and the warehouse, or fix the rows"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
