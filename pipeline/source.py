"""Reading totesys: one REPEATABLE READ, READ ONLY snapshot per extraction, rows as Arrow.

Rows travel through ADBC (`adbc_driver_postgresql`), which runs the query as a binary
`COPY ... TO STDOUT` and decodes it into Arrow record batches in C++: the fastest path
measured (benchmarks/extract_bench.py) and streaming, so memory stays bounded.

Two ADBC details shape this module:
- With bound parameters ADBC stops using COPY and buffers the whole result (measured:
  2M rows, one batch, ~1 GB RSS). The window bounds are therefore bound as parameters
  into transaction-local settings (`set_config(..., true)`) and the COPY query reads them
  with `current_setting()`: values never become SQL text, and the big query still streams.
- ADBC's own transaction switch cannot choose the isolation level, so the connection is
  in autocommit mode and the transaction is opened with an explicit `BEGIN ISOLATION LEVEL
  REPEATABLE READ READ ONLY`: the drift check, the clock and every row come from one snapshot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import adbc_driver_manager
import pyarrow as pa
from adbc_driver_postgresql import dbapi as adbc
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.catalog import Table
from pipeline.credentials import describe, redact
from pipeline.drift import SourceColumn
from pipeline.errors import (
    AuthenticationError,
    ConfigurationError,
    DataQualityError,
    SourceUnavailableError,
)

CONNECT_TIMEOUT_S = 10
BATCH_BYTES = 16 << 20  # ADBC's batch size hint: bounds the memory one batch takes
_SETTING = "totesys_extract.{}"  # transaction-local settings carrying the bound values
_AUTH_MARKERS = ("authentication failed", "no password supplied")


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


def _password(dsn: str) -> str | None:
    with contextlib.suppress(Exception):
        return conninfo_to_dict(dsn).get("password")  # type: ignore[return-value]
    return None


def _typed_error(exc: Exception, table: str, dsn: str) -> Exception:
    """Map a driver error to our typed errors, naming the table and never the password."""
    text = redact(str(exc).strip(), _password(dsn)).replace("\n\t", " ")
    lines = [line for line in text.splitlines() if line.strip()]
    detail = lines[0] if lines else type(exc).__name__
    where = f"table {table!r}: source {describe(dsn)}"
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate.startswith("28") or any(m in text for m in _AUTH_MARKERS):
        return AuthenticationError(
            f"{where}: authentication failed ({detail}); check the user name and password "
            "in TOTESYS_DSN or the secret"
        )
    if isinstance(exc, adbc_driver_manager.OperationalError):
        return SourceUnavailableError(f"{where} is unavailable: {detail}")
    return ConfigurationError(f"{where}: {detail}")


class SourceSnapshot:
    """One read-only, repeatable-read transaction on the source (use `open`)."""

    def __init__(self, conn: Any, table: Table, dsn: str) -> None:
        self._dsn = dsn
        self.table = table
        self._cursor = conn.cursor()
        self._cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self._cursor.execute("SET LOCAL jit = off")  # compiling costs more than these scans
        # The first query takes the snapshot; `now` is the transaction's start on the
        # source's own clock, in the same naive form as the timestamp(3) columns.
        self.now, self.timezone = self._one(
            "SELECT localtimestamp, current_setting('TimeZone')", ()
        )

    @classmethod
    @contextlib.contextmanager
    def open(cls, dsn: str, table: Table) -> Iterator[SourceSnapshot]:
        try:
            conninfo = _conninfo(dsn)
        except Exception as exc:
            raise ConfigurationError(
                f"table {table.name!r}: malformed source DSN ({redact(str(exc), _password(dsn))})"
            ) from None
        try:
            conn = adbc.connect(conninfo, autocommit=True)
        except adbc_driver_manager.Error as exc:
            raise _typed_error(exc, table.name, dsn) from None
        try:
            with contextlib.closing(conn):
                snapshot = cls(conn, table, dsn)
                with contextlib.closing(snapshot._cursor):
                    yield snapshot
                    snapshot._cursor.execute("COMMIT")
        except adbc_driver_manager.Error as exc:
            raise _typed_error(exc, table.name, dsn) from None

    def _one(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
        self._cursor.execute(query, params or None)
        row = self._cursor.fetchone()
        assert row is not None
        return tuple(row)

    def _set(self, name: str, value: str) -> None:
        self._one("SELECT set_config($1, $2, true)", (_SETTING.format(name), value))

    def _setting(self, name: str, cast: str) -> sql.Composable:
        return sql.SQL("current_setting({})::{}").format(
            sql.Literal(_SETTING.format(name)), sql.SQL(cast)
        )

    # -- metadata ------------------------------------------------------------------
    def columns(self) -> list[SourceColumn]:
        """The live columns of the table (as the SELECT would resolve its name)."""
        self._cursor.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull "
            "FROM pg_attribute a WHERE a.attrelid = to_regclass($1) "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (sql.Identifier(self.table.name).as_string(None),),
        )
        return [SourceColumn(str(n), str(t), bool(null)) for n, t, null in self._cursor.fetchall()]

    # -- rows ----------------------------------------------------------------------
    def _where(self, window: Window) -> sql.Composable:
        cursor, key = sql.Identifier(self.table.cursor), sql.Identifier(self.table.primary_key)
        self._set("until", _iso(window.until))
        parts = [sql.SQL("{} < {}").format(cursor, self._setting("until", "timestamp"))]
        if window.since is not None:
            self._set("since", _iso(window.since))
            since = self._setting("since", "timestamp")
            if window.after_key is None:
                parts.append(sql.SQL("{} >= {}").format(cursor, since))
            else:
                self._set("after_key", str(window.after_key))
                parts.append(
                    sql.SQL("({}, {}) > ({}, {})").format(
                        cursor, key, since, self._setting("after_key", "integer")
                    )
                )
        return sql.SQL(" AND ").join(parts)

    def batches(self, window: Window, limit: int | None = None) -> Iterator[pa.RecordBatch]:
        """The window's rows in (cursor, key) order as raw ADBC record batches (streamed)."""
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in self.table.column_names)
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}, {}").format(
            columns,
            sql.Identifier(self.table.name),
            self._where(window),
            sql.Identifier(self.table.cursor),
            sql.Identifier(self.table.primary_key),
        )
        if limit is not None:
            self._set("limit", str(limit))
            query = sql.SQL("{} LIMIT {}").format(query, self._setting("limit", "bigint"))
        self._cursor.adbc_statement.set_options(
            **{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)}
        )
        self._cursor.execute(query.as_string(None))
        reader = self._cursor.fetch_record_batch()
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:  # the stream broke mid-way
                raise SourceUnavailableError(
                    f"table {self.table.name!r}: reading from source {describe(self._dsn)} "
                    f"failed: {redact(str(exc), _password(self._dsn)).splitlines()[0]}"
                ) from None
            yield batch

    def has_more(self, window: Window, last_updated: datetime, key: int) -> bool:
        """Whether the window holds rows after (last_updated, key) in this snapshot."""
        rest = Window(since=last_updated, until=window.until, after_key=key)
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(
            sql.Identifier(self.table.name), self._where(rest)
        )
        return bool(self._one(query.as_string(None), ())[0])


def to_catalog(batch: pa.RecordBatch, schema: pa.Schema, table: str) -> pa.RecordBatch:
    """Cast one ADBC batch to the catalog schema (numeric text -> decimal, us -> ms).

    Casts are safe (checked): a timestamp with sub-millisecond digits or a numeric that
    does not fit decimal(10,2) is an error naming the column, never a silent rounding.
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
                f"{field.type} ({exc})"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
