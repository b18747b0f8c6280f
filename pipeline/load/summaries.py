"""Keep the report summaries (`pipeline.summary_schema`) exact, in each batch's transaction.

A summary counts a fact's current rows (`_superseded_at IS NULL AND _deleted_at IS NULL`).
What a batch changes, and how each change reaches the summaries:

- **Appended rows** (the bulk: a first load, new orders): aggregated in the load's client
  while the COPY streams (`Tally`: Acero's hash aggregate per record batch, in the COPY's
  producer thread), and only the groups are upserted (CSV COPY of the groups into a
  temporary table, one `INSERT ... ON CONFLICT DO UPDATE` adding them per summary). Rows
  whose source id lies within the ids the fact held before the batch are left out: they
  may supersede a version, or be superseded (a late older version).
- **Rows whose standing changes** (few): the source ids `pipeline.load.versions` re-marks,
  the rows a correction rewrites (`pipeline.load.facts.correct`) and the rows whose deletion
  mark is set or cleared (`pipeline.load.deletes`). For those, the current rows' contribution
  is subtracted before the statement and the current rows' contribution added after it
  (`add_current`, signed, by index lookups of the source ids): "after minus before", so a
  statement that changes nothing adds nothing.

The ledger keeps a batch from being applied twice, and the summaries commit or roll back
with the batch, so a re-run cannot count anything twice. The dimensions' rows per lineage
batch (`DIMENSION_ROWS`) are kept from the COPY's row count and the upsert's previous
lineage; `FACT_NEWEST` is the newest `last_updated` of every row appended.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow._acero as _acero
import pyarrow.csv as pacsv
from psycopg import sql

from pipeline.load import pgbinary
from pipeline.load.ddl import LINEAGE_COLUMN
from pipeline.summary_schema import (
    DIMENSION_ROWS,
    FACT_NEWEST,
    MEASURES,
    SUMMARIES,
    Summary,
    key_type,
    of_fact,
)
from pipeline.warehouse_schema import (
    DELETED_AT,
    DIMENSIONS,
    SUPERSEDED_AT,
    WAREHOUSE_TABLES,
    WarehouseTable,
)

_I = sql.Identifier
SourceRange = tuple[int, int]
_SAFE = 1 << 62  # int64 cents stay exact below this (products and group sums)
_MS_PER_DAY = 86_400_000
_EPOCH = dt.datetime(1970, 1, 1)


def _unique(name: str, keys: tuple[str, ...]) -> sql.Composed:
    return sql.SQL("CONSTRAINT {} UNIQUE NULLS NOT DISTINCT ({})").format(
        _I(f"{name}_key"), sql.SQL(", ").join(map(_I, keys))
    )


def summary_statements() -> list[sql.Composed]:
    """CREATE TABLE (and the top-N index) of every summary, then each filled from the
    facts already loaded, so a warehouse migrated with data reports the same numbers."""
    statements: list[sql.Composed] = []
    for s in SUMMARIES:
        keys = [sql.SQL("{} {}").format(_I(k), sql.SQL(key_type(s.table, k))) for k in s.keys]
        statements.append(
            sql.SQL(
                "CREATE TABLE {} ({}, n bigint NOT NULL, units numeric, value numeric NOT NULL, {})"
            ).format(_I(s.name), sql.SQL(", ").join(keys), _unique(s.name, s.keys))
        )
        if s.ranked:
            statements.append(
                sql.SQL("CREATE INDEX {} ON {} (currency_id, value DESC)").format(
                    _I(f"{s.name}_rank_idx"), _I(s.name)
                )
            )
    statements.append(
        sql.SQL(
            "CREATE TABLE {} (table_name text NOT NULL, {} text, n bigint NOT NULL, {})"
        ).format(
            _I(DIMENSION_ROWS),
            _I(LINEAGE_COLUMN),
            _unique(DIMENSION_ROWS, ("table_name", LINEAGE_COLUMN)),
        )
    )
    statements.append(
        sql.SQL("CREATE TABLE {} (table_name text PRIMARY KEY, newest timestamp)").format(
            _I(FACT_NEWEST)
        )
    )
    for fact in MEASURES:
        table = WAREHOUSE_TABLES[fact]
        statements.append(_apply(fact, _current(table, 1, sql.SQL("TRUE"))))
        _, day, time = map(_I, table.natural_key)
        statements.append(
            sql.SQL(
                "INSERT INTO {n} (table_name, newest) SELECT {name}, max({d} + {t}) FROM {f}"
            ).format(n=_I(FACT_NEWEST), name=sql.Literal(fact), d=day, t=time, f=_I(fact))
        )
    for dim in DIMENSIONS:
        statements.append(
            sql.SQL(
                "INSERT INTO {rows} (table_name, {lin}, n) SELECT {name}, {lin}, count(*) "
                "FROM {dim} GROUP BY 2"
            ).format(
                rows=_I(DIMENSION_ROWS),
                lin=_I(LINEAGE_COLUMN),
                name=sql.Literal(dim.name),
                dim=_I(dim.name),
            )
        )
    return statements


# -- signed contributions of current rows, grouped in SQL (few rows) ------------------------
def _columns(table: WarehouseTable) -> list[str]:
    """Every fact column a summary of `table` reads (keys and measures), once, in order."""
    m = MEASURES[table.name]
    wanted = [k for s in of_fact(table.name) for k in s.keys] + [m.units or "", *m.value]
    return list(dict.fromkeys(c for c in wanted if c))


def _current(table: WarehouseTable, sign: int, where: sql.Composable) -> sql.Composed:
    """`sign` and the summarized columns of the current rows of `table` (alias f) where
    `where` holds."""
    return sql.SQL(
        "SELECT {sign} AS sign, {cols} FROM {fact} f "
        "WHERE f.{sup} IS NULL AND f.{dele} IS NULL AND ({where})"
    ).format(
        sign=sql.Literal(sign),
        cols=sql.SQL(", ").join(_I("f", c) for c in _columns(table)),
        fact=_I(table.name),
        sup=_I(SUPERSEDED_AT),
        dele=_I(DELETED_AT),
        where=where,
    )


def _mask(keys: tuple[str, ...], within: list[str]) -> int:
    """`GROUPING(within...)` of a grouping set over `keys`: a 1 bit for each absent key."""
    return sum(1 << (len(within) - 1 - i) for i, k in enumerate(within) if k not in keys)


def _upsert(s: Summary, source: sql.Composable) -> sql.Composed:
    """INSERT adding the rows of `source` (keys, n, units, value) to summary `s`."""
    keys = sql.SQL(", ").join(map(_I, s.keys))
    return sql.SQL(
        "INSERT INTO {s} AS s ({keys}, n, units, value) {source} "
        "ON CONFLICT ON CONSTRAINT {key} DO UPDATE SET n = s.n + EXCLUDED.n, "
        "units = s.units + EXCLUDED.units, value = s.value + EXCLUDED.value"
    ).format(s=_I(s.name), keys=keys, source=source, key=_I(f"{s.name}_key"))


_ONE = sql.SQL("SELECT 1")


def _apply(
    fact: str,
    delta: sql.Composable,
    head: sql.Composable | None = None,
    result: sql.Composable = _ONE,
) -> sql.Composed:
    """One statement: aggregate `delta` (rows with a sign) into every summary of `fact`;
    `head`: CTEs `delta` reads (a data-modifying one runs once, in the same snapshot)."""
    m = MEASURES[fact]
    summaries = of_fact(fact)
    union = list(dict.fromkeys(k for s in summaries for k in s.keys))
    value = sql.SQL(" * ").join(_I(c) for c in m.value)
    units = sql.SQL("sum(sign * {})").format(_I(m.units)) if m.units else sql.SQL("NULL::numeric")
    grouped = sql.SQL(
        "grouped AS (SELECT GROUPING({union}) AS grouping_set, {union}, sum(sign) AS n, "
        "{units} AS units, sum(sign * {value}) AS value FROM delta "
        "GROUP BY GROUPING SETS ({sets}))"
    ).format(
        union=sql.SQL(", ").join(map(_I, union)),
        units=units,
        value=value,
        sets=sql.SQL(", ").join(
            sql.SQL("({})").format(sql.SQL(", ").join(map(_I, s.keys))) for s in summaries
        ),
    )
    upserts = [
        sql.SQL("{cte} AS ({upsert})").format(
            cte=_I(f"up_{i}"),
            upsert=_upsert(
                s,
                sql.SQL("SELECT {k}, n, units, value FROM grouped WHERE grouping_set = {m}").format(
                    k=sql.SQL(", ").join(map(_I, s.keys)), m=sql.Literal(_mask(s.keys, union))
                ),
            ),
        )
        for i, s in enumerate(summaries)
    ]
    return sql.SQL("WITH {head}delta AS ({delta}), {grouped}, {upserts} {result}").format(
        head=sql.SQL("{}, ").format(head) if head is not None else sql.SQL(""),
        delta=delta,
        grouped=grouped,
        upserts=sql.SQL(", ").join(upserts),
        result=result,
    )


def add_current(
    conn: psycopg.Connection,
    table: WarehouseTable,
    sign: int,
    where: sql.Composable,
    params: dict[str, object] | None = None,
) -> None:
    """Add `sign` times the contribution of `table`'s current rows where `where` holds (an
    SQL condition on alias `f`) to its summaries: call it with -1 before a statement that
    changes those rows' standing or values, and with +1 after it."""
    if table.name in MEASURES:
        conn.execute(_apply(table.name, _current(table, sign, where)), params)


def update_counted(
    conn: psycopg.Connection,
    table: WarehouseTable,
    update: sql.Composed,
    params: dict[str, object] | None = None,
) -> int:
    """Run `update` and keep the summaries exact; return the number of rows it changed.

    `update` is an UPDATE of `table` AS f that joins the table again AS o on the record
    id (`FROM ..., <table> AS o WHERE o.<id> = f.<id> ...`), so o holds each changed row as
    it was before the statement: each row's contribution after the statement is added and
    its contribution before it subtracted (when current), in the same statement. Only rows
    the UPDATE changes are read: index lookups, no scan.
    """
    if table.name not in MEASURES:
        with conn.cursor() as cur:
            cur.execute(update, params)
            return cur.rowcount
    cols = _columns(table)
    flags = (SUPERSEDED_AT, DELETED_AT)
    returning = sql.SQL(", ").join(
        sql.SQL("{}.{} AS {}").format(_I(side), _I(c), _I(f"{side}_{c}"))
        for side in ("o", "f")
        for c in (*cols, *flags)
    )

    def side(alias: str, sign: int) -> sql.Composed:
        return sql.SQL("SELECT {sign} AS sign, {cols} FROM up WHERE {live}").format(
            sign=sql.Literal(sign),
            cols=sql.SQL(", ").join(
                sql.SQL("{} AS {}").format(_I(f"{alias}_{c}"), _I(c)) for c in cols
            ),
            live=sql.SQL(" AND ").join(
                sql.SQL("{} IS NULL").format(_I(f"{alias}_{c}")) for c in flags
            ),
        )

    statement = _apply(
        table.name,
        sql.SQL("{} UNION ALL {}").format(side("o", -1), side("f", 1)),
        head=sql.SQL("up AS ({} RETURNING {})").format(update, returning),
        result=sql.SQL("SELECT count(*) FROM up"),
    )
    row = conn.execute(statement, params).fetchone()
    return int(row[0]) if row else 0


def ids_in(table: WarehouseTable, relation: sql.Identifier, column: str) -> sql.Composed:
    """`f.<column> IN (SELECT <column> FROM relation)`: the rows a staged key set names."""
    return sql.SQL("f.{c} IN (SELECT {c} FROM {r})").format(c=_I(column), r=relation)


# -- appended rows, aggregated in the client ------------------------------------------------
def _cents(array: pa.Array) -> np.ndarray:
    """numeric(10,2) as int64 cents (the low word of decimal128(p, 2): |value| < 2^63)."""
    if not pa.types.is_decimal(array.type) or array.type.scale != 2:
        raise TypeError(f"money columns must be decimal128(p, 2), got {array.type}")
    words = np.frombuffer(
        array.buffers()[1], dtype="<i8", count=2 * len(array), offset=array.offset * 16
    )
    return words[::2]


def _int64_array(values: np.ndarray) -> pa.Array:
    data = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


@dataclass
class Tally:
    """The groups of the appended rows that count, per summary of one fact, built record
    batch by record batch while the COPY streams (rows are never held, only groups).

    Rows whose source id lies in `held` (the [min, max] source id the fact held before the
    batch) are left to the standing path. `exact` turns False when int64 cents could
    overflow; the caller then adds those rows in SQL instead (`add_current`)."""

    table: WarehouseTable
    batch: str
    held: SourceRange | None
    parts: dict[str, list[pa.Table]] = field(default_factory=dict)
    newest_ms: int | None = None
    total: float = 0.0
    exact: bool = True

    def add(self, rb: pa.RecordBatch) -> None:
        if self.table.name not in MEASURES or rb.num_rows == 0:
            return
        source_id, day, time = self.table.natural_key
        updated = pgbinary.raw_values(rb.column(day), "<i4").astype(np.int64) * _MS_PER_DAY
        updated += pgbinary.raw_values(rb.column(time), "<i4")
        top = int(updated.max())
        self.newest_ms = top if self.newest_ms is None else max(self.newest_ms, top)
        if self.held is not None:
            ids = pgbinary.raw_values(rb.column(source_id), "<i4")
            outside = (ids < self.held[0]) | (ids > self.held[1])
            rb = rb.filter(pgbinary.bool_array(outside))
        if rb.num_rows == 0 or not self.exact:
            return
        m = MEASURES[self.table.name]
        cents = _cents(rb.column(m.value[-1]))
        factors = [pgbinary.raw_values(rb.column(c), "<i4").astype(np.int64) for c in m.value[:-1]]
        bound = int(np.abs(cents).max())
        for f in factors:
            bound *= int(np.abs(f).max())
        if bound >= _SAFE:
            self.exact = False
            return
        value = cents.copy()
        for f in factors:
            value *= f
        self.total += float(np.abs(value).astype(np.float64).sum())
        if self.total >= _SAFE / 2:
            self.exact = False
            return
        columns: dict[str, pa.Array] = {
            "_n": _int64_array(np.ones(rb.num_rows, dtype=np.int64)),
            "_cents": _int64_array(value),
        }
        if m.units:
            columns["_units"] = _int64_array(pgbinary.raw_values(rb.column(m.units), "<i4"))
        for s in of_fact(self.table.name):
            keys = [k for k in s.keys if k != LINEAGE_COLUMN]
            part = pa.table({**{k: rb.column(k) for k in keys}, **columns})
            self.parts.setdefault(s.name, []).append(_group(part, keys))

    def apply(self, conn: psycopg.Connection) -> None:
        """Upsert the groups into the summaries and the newest `last_updated` seen."""
        if self.newest_ms is not None:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {t} AS t (table_name, newest) VALUES (%s, %s) ON CONFLICT "
                    "(table_name) DO UPDATE SET newest = greatest(t.newest, EXCLUDED.newest)"
                ).format(t=_I(FACT_NEWEST)),
                (self.table.name, _EPOCH + dt.timedelta(milliseconds=self.newest_ms)),
            )
        for s in of_fact(self.table.name):
            parts = self.parts.get(s.name)
            if parts:
                keys = [k for k in s.keys if k != LINEAGE_COLUMN]
                _upsert_groups(conn, s, _group(pa.concat_tables(parts), keys), self.batch)


def _group(part: pa.Table, keys: list[str]) -> pa.Table:
    """The rows of `part` grouped by `keys`: `_n`, `_cents` and `_units` (int64) summed.

    Acero's aggregate node straight from `pyarrow._acero` (what `Table.group_by` runs):
    the public `pyarrow.acero` module imports `pyarrow.dataset`, which imports pandas (a
    second of every load's cold start)."""
    function = "hash_sum" if keys else "sum"
    sums = [c for c in ("_n", "_cents", "_units") if c in part.column_names]
    aggregate = _acero.AggregateNodeOptions(
        [(c, function, None, c) for c in sums], keys=keys or None
    )
    plan = _acero.Declaration.from_sequence(
        [
            _acero.Declaration("table_source", _acero.TableSourceNodeOptions(part)),
            _acero.Declaration("aggregate", aggregate),
        ]
    )
    grouped: pa.Table = plan.to_table(use_threads=False)
    return grouped


def _upsert_groups(conn: psycopg.Connection, s: Summary, groups: pa.Table, batch: str) -> None:
    """COPY the groups (CSV: a few thousand rows usually) into a temporary table, then add
    them to the summary with one INSERT ... ON CONFLICT DO UPDATE.

    The groups go in key order, so the upsert walks the summary's unique index in order: a
    large batch (a first load's, hundreds of thousands of groups, most of them updates) costs
    about a third less than in hash order."""
    tmp = _I(f"_tally_{s.name}")
    keys = [k for k in s.keys if k != LINEAGE_COLUMN]
    if keys:
        groups = groups.sort_by([(k, "ascending") for k in keys])
    with_units = "_units" in groups.column_names
    typed = [sql.SQL("{} {}").format(_I(k), sql.SQL(key_type(s.table, k))) for k in keys]
    typed += [sql.SQL("{} bigint").format(_I(c)) for c in ("_n", "_cents", "_units")]
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} ({}) ON COMMIT DROP").format(
            tmp, sql.SQL(", ").join(typed)
        )
    )
    if not with_units:
        groups = groups.append_column("_units", pa.nulls(groups.num_rows, pa.int64()))
    columns = [*keys, "_n", "_cents", "_units"]
    buffer = io.BytesIO()
    options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
    pacsv.write_csv(groups.select(columns), buffer, options)
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT CSV)").format(
        tmp, sql.SQL(", ").join(map(_I, columns))
    )
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        copy.write(buffer.getvalue())
    names = [sql.Literal(batch) if k == LINEAGE_COLUMN else _I(k) for k in s.keys]
    select = sql.SQL("SELECT {}, _n, _units, _cents * 0.01 FROM {}").format(
        sql.SQL(", ").join(names), tmp
    )
    conn.execute(_upsert(s, select))
    conn.execute(sql.SQL("DROP TABLE {}").format(tmp))


def tally_rows(first_id: int, held: SourceRange | None, table: WarehouseTable) -> sql.Composed:
    """The appended rows a `Tally` covers (record id >= `first_id`, source id outside
    `held`), as a condition on alias f: what `add_current` adds when the tally is inexact."""
    rows = sql.SQL("f.{} >= {}").format(_I(table.primary_key), sql.Literal(first_id))
    if held is None:
        return rows
    return sql.SQL("{} AND f.{} NOT BETWEEN {} AND {}").format(
        rows, _I(table.natural_key[0]), sql.Literal(held[0]), sql.Literal(held[1])
    )


# -- dimensions -----------------------------------------------------------------------------
def add_dimension_rows(table: WarehouseTable, counts: sql.Composable) -> sql.Composed:
    """INSERT adding `counts` (a query or CTE name of `batch, n` pairs, n signed) to
    `table`'s rows per lineage batch: a statement, or the body of a data-modifying CTE."""
    return sql.SQL(
        "INSERT INTO {rows} AS r (table_name, {lin}, n) "
        "SELECT {name}, c.batch, sum(c.n) FROM {counts} AS c GROUP BY 2 "
        "ON CONFLICT ON CONSTRAINT {key} DO UPDATE SET n = r.n + EXCLUDED.n"
    ).format(
        rows=_I(DIMENSION_ROWS),
        lin=_I(LINEAGE_COLUMN),
        name=sql.Literal(table.name),
        counts=counts,
        key=_I(f"{DIMENSION_ROWS}_key"),
    )


def record_dimension_rows(
    conn: psycopg.Connection, table: WarehouseTable, batch: str, rows: int
) -> None:
    """`rows` new rows of `table` written by `batch` (COPYed in: no previous lineage)."""
    if rows and not table.is_history:
        counts = sql.SQL("(SELECT %(batch)s::text AS batch, %(n)s::bigint AS n)")
        conn.execute(add_dimension_rows(table, counts), {"batch": batch, "n": rows})
