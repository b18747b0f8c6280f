"""Extract benchmark: `extract_table` against the raw COPY limit of the same server, same run.

    python -m benchmarks.extract_bench [--rows 2000000] [--max-rows N] [--dsn DSN] [--json]
    python -m benchmarks.extract_bench --all-tables [--rows 2000000] [--workers 2]
        [--cursor-indexes]
    python -m benchmarks.extract_bench --window-scan [--rows 2000000]

Builds `--rows` sales orders (in a throwaway local cluster unless `--dsn` names a
superuser DSN; a fresh database is created and dropped there), then measures:

1. raw: `COPY (SELECT <catalog columns> FROM sales_order ORDER BY last_updated,
   sales_order_id) TO STDOUT`, text and binary, consumed and discarded (psycopg);
2. adbc fetch: the same query through ADBC into Arrow batches, discarded (the decode cost);
3. extract: `pipeline.extract.extract_table` (full extract into a temporary local lake,
   with its continuations when `--max-rows` (`EXTRACT_MAX_ROWS`, default 2,000,000) cuts
   it into several calls), in a child process so its peak RSS (`ru_maxrss`, imports
   included, as in a Lambda) is its own. The table is analysed after it is built, as
   autovacuum would have done on a production source, so several calls show what
   `pipeline.extract.slices` saves on a source without a cursor index.

Targets: extract >= 0.5x the raw rows/s, peak RSS < 600 MB. The machine may be shared:
each measurement is the best of `--repeat` runs.

`--all-tables` seeds a whole totesys with the simulator instead (`--rows` sales orders,
with their purchase orders, transactions, payments and designs: about 4.3x as many rows)
and compares a binary `COPY` of every table's catalog columns (sequential, one connection,
as `benchmarks.run` measures it) with the extraction of all 11 tables, `--workers` at a
time (as the runner does), each in a child process: a full first run, then a no-change
run. Besides wall seconds it prints the child's CPU seconds (whole process, imports
included) and its import time: on a shared machine CPU seconds compare much better than
wall seconds. The source has the production shape (no index on `last_updated`) unless
`--cursor-indexes` asks for the opt-in indexes (`totesys-etl seed --cursor-indexes`).

`--window-scan` builds `--rows` sales orders (no cursor index, as in production) and times
the incremental query's scan for an empty window three ways, best of `--repeat`: bounds as
literals (the source's limit), bounds read by `current_setting()` in the WHERE clause (once
per row) and in scalar subqueries (once per query, what `pipeline.extract.source` sends).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.common import best_of, create_sales_orders, timed
from pipeline.catalog import TABLES
from pipeline.local import pgserver
from pipeline.settings import Settings

TABLE = TABLES["sales_order"]
TARGET_RATIO = 0.5
TARGET_RSS_MB = 600


def _query() -> sql.Composed:
    return sql.SQL("SELECT {} FROM {} ORDER BY {}, {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in TABLE.column_names),
        sql.Identifier(TABLE.name),
        sql.Identifier(TABLE.cursor),
        sql.Identifier(TABLE.primary_key),
    )


def raw_copy(dsn: str, binary: bool) -> None:
    """The physical limit: the server serialises, the client receives and discards."""
    statement = sql.SQL("COPY ({}) TO STDOUT {}").format(
        _query(), sql.SQL("(FORMAT binary)" if binary else "")
    )
    with psycopg.connect(dsn) as conn, conn.cursor().copy(statement) as copy:
        for _ in copy:
            pass


def adbc_fetch(dsn: str) -> None:
    from adbc_driver_postgresql import dbapi

    with dbapi.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(_query().as_string(None))
        for _ in cur.fetch_record_batch():
            pass


def _warm_up(dsn: str) -> None:
    """Load the ADBC driver once, so the first timed fetch does not pay for it."""
    from adbc_driver_postgresql import dbapi

    with dbapi.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()


def extract_in_child(dsn: str, max_rows: int | None = None) -> dict[str, Any]:
    """Run one full extract (all its calls) in a fresh interpreter; returns its seconds,
    rows, calls and peak RSS."""
    cap = ["--max-rows", str(max_rows)] if max_rows else []
    with tempfile.TemporaryDirectory(prefix="extract-bench-") as lake:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.extract_bench", "--child", lake, *cap],
            input=dsn,
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(lake: str, max_rows: int | None) -> None:
    from pipeline.extract import extract_table

    dsn = sys.stdin.read()
    settings = Settings(ingest_url=lake, source_dsn=dsn)
    if max_rows:
        settings = settings.replace(extract_max_rows=max_rows)
    rows = files = calls = 0
    call: str | None = "bench"
    with timed() as t:
        while call:
            result = extract_table(TABLE.name, call, settings)
            rows, files, calls = rows + result.rows, files + len(result.files), calls + 1
            call = result.next_run_id if result.more else None
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": t.seconds, "rows": rows, "peak_rss_mb": peak_mb,
                      "files": files, "calls": calls}))  # fmt: skip


def _child_all(lake: str, run_id: str, workers: int) -> None:
    """All tables into `lake`, `workers` at a time, as the local runner extracts them."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    from pipeline.catalog import TABLE_NAMES
    from pipeline.extract import extract_table

    imported = time.perf_counter()
    dsn = sys.stdin.read()

    def one(table: str) -> int:
        rows, call = 0, run_id
        while True:
            result = extract_table(table, call, Settings(ingest_url=lake, source_dsn=dsn))
            rows += result.rows
            if not result.more:
                return rows
            call = result.next_run_id  # type: ignore[assignment]

    with ThreadPoolExecutor(workers) as pool:
        rows = sum(pool.map(one, TABLE_NAMES))
    done = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": done - imported, "import_s": imported - started, "rows": rows,
                      "cpu_s": usage.ru_utime + usage.ru_stime,
                      "peak_rss_mb": usage.ru_maxrss / 1024}))  # fmt: skip


def extract_all_in_child(dsn: str, lake: str, run_id: str, workers: int) -> dict[str, Any]:
    """One `_child_all` run; adds the child's whole wall time (interpreter start included)."""
    args = ["--child-all", lake, "--run-id", run_id, "--workers", str(workers)]
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.extract_bench", *args],
        input=dsn,
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        **json.loads(out.stdout.strip().splitlines()[-1]),
        "process_s": time.perf_counter() - started,
    }


def raw_copy_all(dsn: str) -> None:
    """Binary COPY of every table's catalog columns, sequential on one connection."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for table in TABLES.values():
            query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT BINARY)").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names),
                sql.Identifier(table.name),
            )
            with cur.copy(query) as copy:
                for _ in copy:
                    pass


def _row_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            name: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            ).fetchone()[0]  # type: ignore[index]
            for name in TABLES
        }


_WINDOW_SCAN = {
    "literal bounds": "last_updated >= '2100-01-01' AND last_updated < '2101-01-01'",
    "current_setting() per row": "last_updated >= current_setting('bench.since')::timestamp "
    "AND last_updated < current_setting('bench.until')::timestamp",
    "current_setting() once (InitPlan)": "last_updated >= "
    "(SELECT current_setting('bench.since')::timestamp) "
    "AND last_updated < (SELECT current_setting('bench.until')::timestamp)",
}


def measure_window_scan(rows: int, dsn: str | None, repeat: int) -> dict[str, Any]:
    """The no-change scan of `rows` sales orders with the window bounds in three forms."""
    with _database(dsn) as db:
        with timed() as build:
            create_sales_orders(db, rows)
        out: dict[str, Any] = {"rows": rows, "build_s": round(build.seconds, 2)}
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SET jit = off")
            conn.execute("SELECT set_config('bench.since', '2100-01-01', false)")
            conn.execute("SELECT set_config('bench.until', '2101-01-01', false)")
            for label, condition in _WINDOW_SCAN.items():
                query = sql.SQL("SELECT {} FROM sales_order WHERE {} ORDER BY {}, {}").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in TABLE.column_names),
                    sql.SQL(condition),  # type: ignore[arg-type]  # constant text above
                    sql.Identifier(TABLE.cursor),
                    sql.Identifier(TABLE.primary_key),
                )
                out[label] = round(best_of(repeat, lambda q=query: conn.execute(q).fetchall()), 3)
    return out


@contextlib.contextmanager
def _seeded(
    sales_orders: int, dsn: str | None, seeded: str | None, cursor_indexes: bool = False
) -> Iterator[tuple[str, float]]:
    """A seeded totesys: `seeded` as it is, or a fresh one (throwaway unless `dsn`)."""
    if seeded:
        yield seeded, 0.0
        return
    from pipeline.local.simulator.seed import SALES_ORDERS, seed

    with _database(dsn) as db:
        with timed() as build:
            seed(db, scale=sales_orders / SALES_ORDERS, seed=1, cursor_indexes=cursor_indexes)
        yield db, build.seconds


def measure_all(
    sales_orders: int,
    dsn: str | None,
    seeded: str | None,
    repeat: int,
    workers: int,
    cursor_indexes: bool = False,
) -> dict[str, Any]:
    with _seeded(sales_orders, dsn, seeded, cursor_indexes) as (db, build_s):
        counts = _row_counts(db)
        rows = sum(counts.values())
        raw = best_of(repeat, lambda: raw_copy_all(db))
        full, no_change = [], []
        for attempt in range(repeat):
            with tempfile.TemporaryDirectory(prefix="extract-bench-") as lake:
                full.append(extract_all_in_child(db, lake, f"full-{attempt}", workers))
                no_change.append(extract_all_in_child(db, lake, f"again-{attempt}", workers))
    best = min(full, key=lambda r: r["seconds"])
    again = min(no_change, key=lambda r: r["process_s"])
    assert best["rows"] == rows, (best, rows)
    return {
        "rows": rows,
        "tables": counts,
        "workers": workers,
        "cursor_indexes": cursor_indexes,
        "build_s": round(build_s, 2),
        "raw_copy_binary_s": round(raw, 3),
        "extract_s": round(best["seconds"], 3),
        "extract_process_s": round(best["process_s"], 3),
        "extract_cpu_s": round(best["cpu_s"], 3),
        "extract_import_s": round(best["import_s"], 3),
        "ratio_to_raw": round(raw / best["seconds"], 3),
        "ratio_to_raw_process": round(raw / best["process_s"], 3),
        "extract_peak_rss_mb": round(max(r["peak_rss_mb"] for r in full), 1),
        "no_change_s": round(again["seconds"], 3),
        "no_change_process_s": round(again["process_s"], 3),
        "no_change_cpu_s": round(again["cpu_s"], 3),
        "no_change_rows": again["rows"],
    }


def _print_all(r: dict[str, Any]) -> None:
    n = r["rows"]
    print(f"extract benchmark, all tables: {n:,} seeded rows, {r['workers']} tables at a time "
          f"(seeded in {r['build_s']} s; "
          f"{'opt-in cursor indexes' if r['cursor_indexes'] else 'no cursor index'})")  # fmt: skip
    print(f"{'path':<44}{'seconds':>9}{'rows/s':>12}{'x raw':>8}{'CPU s':>8}")
    raw = r["raw_copy_binary_s"]
    print(f"{'raw binary COPY, all tables, sequential':<44}{raw:>9.2f}{n / raw:>12,.0f}{1:>8.2f}")
    for label, seconds, cpu in (
        ("extract all tables (in process)", r["extract_s"], r["extract_cpu_s"]),
        ("extract all tables (whole process)", r["extract_process_s"], r["extract_cpu_s"]),
    ):
        print(f"{label:<44}{seconds:>9.2f}{n / seconds:>12,.0f}{raw / seconds:>8.2f}{cpu:>8.2f}")
    print(f"{'no-change run (in process)':<44}{r['no_change_s']:>9.3f}{'':>20}"
          f"{r['no_change_cpu_s']:>8.2f}")  # fmt: skip
    print(f"{'no-change run (whole process)':<44}{r['no_change_process_s']:>9.3f}")
    print(f"pipeline.extract import {r['extract_import_s']:.2f} s; "
          f"peak RSS {r['extract_peak_rss_mb']:.0f} MB; "
          f"no-change rows re-delivered by the overlap: {r['no_change_rows']}")  # fmt: skip


@contextlib.contextmanager
def _database(dsn: str | None) -> Iterator[str]:
    """A fresh database on the given server, or on a throwaway one (`pgserver`'s chooser)."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(pgserver.throwaway_postgres(dsn=dsn))
        print(f"benchmark server: {server.description}", file=sys.stderr)
        name = f"extract_bench_{uuid.uuid4().hex[:8]}"
        db = pgserver.create_database(server.dsn, name)
        stack.callback(pgserver.drop_database, server.dsn, name)
        yield db


def measure(rows: int, dsn: str | None, repeat: int, max_rows: int | None = None) -> dict[str, Any]:
    with _database(dsn) as db:
        with timed() as build:
            create_sales_orders(db, rows)
        _warm_up(db)
        raw_text = best_of(repeat, lambda: raw_copy(db, binary=False))
        raw_binary = best_of(repeat, lambda: raw_copy(db, binary=True))
        adbc = best_of(repeat, lambda: adbc_fetch(db))
        runs = [extract_in_child(db, max_rows) for _ in range(repeat)]
    extract = min(runs, key=lambda r: r["seconds"])
    assert extract["rows"] == rows, extract
    raw = min(raw_text, raw_binary)
    return {
        "rows": rows,
        "build_s": round(build.seconds, 2),
        "raw_copy_text_s": round(raw_text, 3),
        "raw_copy_binary_s": round(raw_binary, 3),
        "adbc_fetch_s": round(adbc, 3),
        "extract_s": round(extract["seconds"], 3),
        "raw_rows_per_s": round(rows / raw),
        "adbc_rows_per_s": round(rows / adbc),
        "extract_rows_per_s": round(rows / extract["seconds"]),
        "ratio_to_raw": round(raw / extract["seconds"], 3),
        "extract_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "extract_files": extract["files"],
        "extract_calls": extract["calls"],
        "max_rows": max_rows,
        "targets": {"ratio_to_raw": TARGET_RATIO, "peak_rss_mb": TARGET_RSS_MB},
        "ok": raw / extract["seconds"] >= TARGET_RATIO
        and max(r["peak_rss_mb"] for r in runs) < TARGET_RSS_MB,
    }


def _print_table(r: dict[str, Any]) -> None:
    n = r["rows"]
    cap = f", {r['extract_calls']} extract calls" if r.get("extract_calls", 1) > 1 else ""
    print(f"extract benchmark: {n:,} sales_order rows (built in {r['build_s']} s{cap})")
    print(f"{'path':<34}{'seconds':>9}{'rows/s':>12}{'x raw':>8}")
    raw = min(r["raw_copy_text_s"], r["raw_copy_binary_s"])
    for label, seconds in (
        ("raw COPY TO STDOUT (text)", r["raw_copy_text_s"]),
        ("raw COPY TO STDOUT (binary)", r["raw_copy_binary_s"]),
        ("ADBC fetch to Arrow, discarded", r["adbc_fetch_s"]),
        ("extract_table -> Parquet (zstd)", r["extract_s"]),
    ):
        print(f"{label:<34}{seconds:>9.2f}{n / seconds:>12,.0f}{raw / seconds:>8.2f}")
    print(
        f"extract peak RSS: {r['extract_peak_rss_mb']:.0f} MB (target < {TARGET_RSS_MB}); "
        f"ratio to raw: {r['ratio_to_raw']:.2f} (target >= {TARGET_RATIO}); "
        f"{'OK' if r['ok'] else 'BELOW TARGET'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument(
        "--max-rows", type=int, help="rows per extract call (default: EXTRACT_MAX_ROWS's default)"
    )
    parser.add_argument("--dsn", help="superuser DSN of a server to use (default: throwaway)")
    parser.add_argument("--repeat", type=int, default=2, help="best of N for every path")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    parser.add_argument("--all-tables", action="store_true", help="seed and extract all 11")
    parser.add_argument("--workers", type=int, default=2, help="tables at a time (--all-tables)")
    parser.add_argument("--seeded", metavar="DSN", help="--all-tables: use this seeded totesys")
    parser.add_argument(
        "--cursor-indexes", action="store_true", help="--all-tables: seed the opt-in indexes"
    )
    parser.add_argument(
        "--window-scan", action="store_true", help="time the no-change scan's bound forms"
    )
    parser.add_argument("--child", metavar="LAKE", help=argparse.SUPPRESS)
    parser.add_argument("--child-all", metavar="LAKE", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.max_rows)
        return 0
    if args.child_all:
        _child_all(args.child_all, args.run_id, args.workers)
        return 0
    # A plain SIGTERM would skip the clean-up and leave the throwaway cluster running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    if args.window_scan:
        result = measure_window_scan(args.rows, args.dsn, args.repeat)
        print(f"no-change window scan of {args.rows:,} sales orders, no cursor index (best of "
              f"{args.repeat}):")  # fmt: skip
        for label in _WINDOW_SCAN:
            print(f"  {label:<36}{result[label]:>8.3f} s")
    elif args.all_tables:
        result = measure_all(
            args.rows, args.dsn, args.seeded, args.repeat, args.workers, args.cursor_indexes
        )
        result["total_s"] = round(time.perf_counter() - started, 1)
        _print_all(result)
    else:
        result = measure(args.rows, args.dsn, args.repeat, args.max_rows)
        result["total_s"] = round(time.perf_counter() - started, 1)
        _print_table(result)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
