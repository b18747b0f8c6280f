"""Load step throughput against the raw binary COPY limit, measured in the same run.

Builds N synthetic `fact_sales_order` rows (plus the dimension rows they reference, with
their history: one version each, as the transform emits for new rows) and N
`dim_transaction` rows (the big dimension of a real first load) as a processed batch in a
temporary lake, then, each in a fresh database of the same server:

- raw: binary `COPY ... FROM STDIN` of the same rows, pre-encoded (the encoding is not
  timed), into tables shaped like `fact_sales_order` and `dim_transaction` with the same
  indexes (`LIKE ... INCLUDING ALL`: PKs, natural-key UNIQUE; no foreign keys);
- raw_fk (with `--fk-baseline`): the same COPY into the real `fact_sales_order`, whose
  nine foreign keys PostgreSQL checks row by row (slow: shows what the load avoids);
- load: `pipeline.load.load` end to end into empty tables (manifest, footer checks,
  dimensions COPYed into their empty tables, facts COPYed into the real table with FK triggers
  bypassed after a set-based check, ledger, commit);
- load_incremental (with `--incremental`): a second batch of as many new fact and
  dim_transaction rows into the now full tables, which adds the key lookups against
  existing rows (facts: natural key; the dimension: its primary key, then new keys COPYed).
  With `--superseding N`, N of its fact rows are new versions of sales orders the first
  batch loaded (the last N ids), so the load also marks the versions they replace.

The facts' references draw uniformly from DIM_ROWS rows each, but `currency_id` from
CURRENCIES (3, as in the real snapshot): per-currency aggregates, like the report summaries
the load keeps, then have as many groups as a real warehouse's, not one per few rows.

Each phase runs in its own process so its peak RSS is its own. Usage:

    .venv/bin/python -m benchmarks.load_bench [--rows 2000000] [--dsn ADMIN_DSN] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import psycopg
import pyarrow as pa
from psycopg import sql

from pipeline.lake import Lake
from pipeline.load import pgbinary
from pipeline.load.migrations import migrate
from pipeline.local import pgserver
from pipeline.settings import Settings
from pipeline.transform.dim_date import build_dim_date
from pipeline.warehouse_schema import HISTORIES, WAREHOUSE_TABLES, WarehouseTable

FACT = WAREHOUSE_TABLES["fact_sales_order"]
DIM_ROWS = 1000
CURRENCIES = 3  # the real shape: the 2024-11 snapshot's sales orders use 3 currencies
FIRST_DAY = date(2019, 1, 1)
DAYS = 2000
PART_ROWS = 500_000


def _transactions(n: int, first_id: int = 1) -> pa.Table:
    ids = np.arange(first_id, first_id + n, dtype=np.int32)
    sale = ids % 3 != 0
    return pa.table(
        {
            "transaction_id": ids,
            "transaction_type": np.where(sale, "SALE", "PURCHASE"),
            "sales_order_id": pa.array(ids, mask=~sale),
            "purchase_order_id": pa.array(ids, mask=sale),
        },
        schema=WAREHOUSE_TABLES["dim_transaction"].arrow_schema,
    )


def _dims() -> dict[str, pa.Table]:
    ids = np.arange(1, DIM_ROWS + 1, dtype=np.int32)
    text = pa.array([f"v{i}" for i in ids])

    def table(name: str, **overrides: pa.Array) -> pa.Table:
        spec = WAREHOUSE_TABLES[name]
        cols = [
            overrides.get(c.name, pa.array(ids) if c.pg_type == "integer" else text)
            for c in spec.columns
        ]
        return pa.Table.from_arrays(cols, schema=spec.arrow_schema)

    days = [FIRST_DAY + timedelta(days=i) for i in range(DAYS)]
    dim_date = (
        build_dim_date(pl.Series(days, dtype=pl.Date))
        .to_arrow()
        .cast(WAREHOUSE_TABLES["dim_date"].arrow_schema)
    )
    dims = {
        "dim_staff": table("dim_staff"),
        "dim_location": table("dim_location"),
        "dim_design": table("dim_design"),
        "dim_currency": table("dim_currency"),
        "dim_counterparty": table("dim_counterparty"),
    }
    return {
        "dim_date": dim_date,
        **dims,
        **{h.name: _history(dims[str(h.history_of)], h) for h in HISTORIES if h.history_of in dims},
    }


def _history(dim: pa.Table, history: WarehouseTable) -> pa.Table:
    """The history a transform emits for new dimension rows: one current version each."""
    n = dim.num_rows
    start = pa.array(np.full(n, 1_546_300_800_000, dtype=np.int64), pa.timestamp("ms"))
    columns = [
        *dim.columns,
        start,
        pa.nulls(n, pa.timestamp("ms")),
        pa.array(np.ones(n, dtype=bool)),
        pa.array(np.zeros(n, dtype=bool)),
    ]
    return pa.Table.from_arrays(columns, schema=history.arrow_schema)


def _facts(n: int, seed: int = 7, first_id: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    epoch = (FIRST_DAY - date(1970, 1, 1)).days

    def ref() -> pa.Array:
        return pa.array(rng.integers(1, DIM_ROWS + 1, n, dtype=np.int32))

    def day() -> pa.Array:
        return pa.array(rng.integers(epoch, epoch + DAYS, n, dtype=np.int32)).view(pa.date32())

    def ms() -> pa.Array:
        return pa.array(rng.integers(0, 86_400_000, n, dtype=np.int32)).view(pa.time32("ms"))

    cents = rng.integers(1, 10_000_000, n, dtype=np.int64)
    price = pa.Array.from_buffers(
        pa.decimal128(10, 2), n, [None, pa.py_buffer(np.stack([cents, cents >> 63], 1).tobytes())]
    )
    cols = {
        "sales_order_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int32)),
        "created_date": day(),
        "created_time": ms(),
        "last_updated_date": day(),
        "last_updated_time": ms(),
        "sales_staff_id": ref(),
        "counterparty_id": ref(),
        "units_sold": pa.array(rng.integers(1, 100_000, n, dtype=np.int32)),
        "unit_price": price,
        "currency_id": pa.array(rng.integers(1, CURRENCIES + 1, n, dtype=np.int32)),
        "design_id": ref(),
        "agreed_payment_date": day(),
        "agreed_delivery_date": day(),
        "agreed_delivery_location_id": ref(),
    }
    return pa.table(cols, schema=FACT.arrow_schema)


def build_lake(
    path: str, rows: int, run_id: str = "bench", first_id: int = 1, superseding: int = 0
) -> None:
    """A processed batch: dimensions and `rows` facts, parts of PART_ROWS rows; the facts'
    source ids start `superseding` below `first_id` (new versions of those orders, other
    random last_updated)."""
    lake = Lake(path)
    outputs: dict[str, Any] = {}
    tables = {
        **_dims(),
        "dim_transaction": _transactions(rows, first_id=first_id),
        "fact_sales_order": (
            _facts(rows, seed=8, first_id=first_id - superseding)
            if superseding
            else _facts(rows, first_id=first_id)
        ),
    }
    for name, table in tables.items():
        keys = []
        for i, start in enumerate(range(0, table.num_rows, PART_ROWS)):
            key = f"{name}/run={run_id}/part-{i:05d}.parquet"
            lake.write_parquet(key, table.slice(start, PART_ROWS))
            keys.append(key)
        outputs[name] = {"files": keys, "rows": table.num_rows}
    lake.write_json(
        f"_manifests/{run_id}.json",
        {
            "run_id": run_id,
            "inputs": [],
            "outputs": outputs,
            "rows_in": {},
            "quarantined": {},
            "committed_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        },
    )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _raw_copy(dsn: str, rows: int, with_fk: bool, queue: Any) -> None:
    """Pre-encode the rows, then time only the binary COPYs into the target tables."""
    migrate(dsn)
    data = {"fact_sales_order": _facts(rows), "dim_transaction": _transactions(rows)}
    with psycopg.connect(dsn, autocommit=True) as conn:
        if with_fk:  # the referenced dimension rows, as the load would have them
            _insert_dims(conn)
        copies = []
        for name, table in data.items():
            spec = WAREHOUSE_TABLES[name]
            target = name
            if not with_fk:
                target = f"raw_{name}"
                conn.execute(
                    sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                        sql.Identifier(target), sql.Identifier(name)
                    )
                )
            chunks = [
                pgbinary.encode_batch(spec.columns, b)
                for b in table.to_batches(max_chunksize=65_536)
            ]
            cols = sql.SQL(", ").join(map(sql.Identifier, spec.column_names))
            stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(target), cols
            )
            copies.append((stmt, chunks))
        del data
        started = time.perf_counter()
        for copy_sql, chunks in copies:
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                copy.write(pgbinary.HEADER)
                for chunk in chunks:
                    copy.write(chunk)
                copy.write(pgbinary.TRAILER)
        seconds = time.perf_counter() - started
    total = 2 * rows
    queue.put({"seconds": seconds, "rows_per_s": total / seconds, "peak_rss_mb": _peak_rss_mb()})


def _insert_dims(conn: psycopg.Connection) -> None:
    for name, table in _dims().items():
        spec = WAREHOUSE_TABLES[name]
        cols = sql.SQL(", ").join(map(sql.Identifier, spec.column_names))
        stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(sql.Identifier(name), cols)
        with conn.cursor() as cur, cur.copy(stmt) as copy:
            copy.write(pgbinary.HEADER)
            for b in table.to_batches():
                copy.write(pgbinary.encode_batch(spec.columns, b))
            copy.write(pgbinary.TRAILER)


def _timed_load(dsn: str, lake_path: str, rows: int) -> dict[str, float]:
    from pipeline.load import load

    started = time.perf_counter()
    result = load("bench-load", Settings(processed_url=lake_path, warehouse_dsn=dsn))
    seconds = time.perf_counter() - started
    for name in ("fact_sales_order", "dim_transaction"):
        loaded = result.rows.get(name, 0)
        if loaded != rows:
            raise SystemExit(f"load wrote {loaded} {name} rows, expected {rows}")
    total = 2 * rows  # the big tables; the small dimensions are not counted
    return {"seconds": seconds, "rows_per_s": total / seconds, "peak_rss_mb": _peak_rss_mb()}


def _our_load(
    dsn: str, lake_path: str, rows: int, incremental: bool, superseding: int, queue: Any
) -> None:
    """The first load into empty tables; with `incremental`, then a second batch of as
    many new fact rows into the now full table (the path that looks up existing keys)."""
    migrate(dsn)  # as `init-warehouse` would have, before the first load
    out = {"first": _timed_load(dsn, lake_path, rows)}
    if incremental:
        build_lake(lake_path, rows, "bench2", first_id=rows + 1, superseding=superseding)
        out["incremental"] = _timed_load(dsn, lake_path, rows)
    queue.put(out)


def _phase(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def run(
    rows: int, admin_dsn: str, fk_baseline: bool, incremental: bool, superseding: int = 0
) -> dict[str, Any]:
    results: dict[str, Any] = {"rows": rows, "superseding": superseding}
    with tempfile.TemporaryDirectory(prefix="load-bench-") as lake_path:
        started = time.perf_counter()
        build_lake(lake_path, rows)
        results["build_lake_s"] = round(time.perf_counter() - started, 2)
        for name, target, args in [
            ("raw_copy", _raw_copy, (rows, False)),
            ("load", _our_load, (lake_path, rows, incremental, superseding)),
            *([("raw_copy_fk", _raw_copy, (rows, True))] if fk_baseline else []),
        ]:
            db = f"bench_{name}"
            dsn = pgserver.create_database(admin_dsn, db)
            try:
                out = _phase(target, dsn, *args)
                results.update(
                    {"load": out["first"], "load_incremental": out.get("incremental")}
                    if name == "load"
                    else {name: out}
                )
            finally:
                pgserver.drop_database(admin_dsn, db)
    results["ratio_load_vs_raw_copy"] = round(
        results["load"]["rows_per_s"] / results["raw_copy"]["rows_per_s"], 3
    )
    return results


def _print(results: dict[str, Any]) -> None:
    print(
        f"rows: {results['rows']:,} facts + {results['rows']:,} dim_transaction "
        f"(lake built in {results['build_lake_s']} s)"
    )
    for name in ("raw_copy", "raw_copy_fk", "load", "load_incremental"):
        if r := results.get(name):
            print(
                f"  {name:16} {r['seconds']:8.2f} s  {r['rows_per_s']:>10,.0f} rows/s  "
                f"peak RSS {r['peak_rss_mb']:,.0f} MB"
            )
    print(f"  load / raw binary COPY = {results['ratio_load_vs_raw_copy']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dsn", help="admin DSN of a server to use (default: a throwaway one)")
    parser.add_argument("--fk-baseline", action="store_true", help="also time COPY with FKs")
    parser.add_argument(
        "--incremental", action="store_true", help="also time a second batch into the full table"
    )
    parser.add_argument(
        "--superseding",
        type=int,
        default=0,
        help="with --incremental: this many of the second batch's facts are new versions",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    with pgserver.throwaway_postgres(dsn=args.dsn) as server:
        print(f"benchmark server: {server.description}", file=sys.stderr)
        results = run(args.rows, server.dsn, args.fk_baseline, args.incremental, args.superseding)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
