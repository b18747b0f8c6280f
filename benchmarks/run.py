"""End-to-end benchmark: totesys-etl against the physical limit and the alternatives.

One command, one PostgreSQL, one run: seeds N sales orders (with their transactions and
payments) with the simulator, then measures side by side

1. the raw limits: `COPY (query) TO STDOUT` of every source table and binary `COPY FROM`
   of the warehouse rows into same-shape tables (sequential sum = the raw limit);
2. totesys-etl full load, per step (extract, transform, load) in its own process with its
   peak RSS;
3. totesys-etl incremental: a no-change run and a run after `--delta` changed rows, on the
   production shape (no index on `last_updated`, as `seed` creates it) and with the opt-in
   cursor indexes (`seed --cursor-indexes`) on the same rows, next to the raw limit of the
   source: one filtered scan of every table for the same window;
4. the original project's style (pandas transform + row-by-row INSERT) on a subset,
   extrapolated linearly to N (said so in the output);
5. dlt (`sql_database`, pyarrow backend, into the same PostgreSQL) when installed.

    python -m benchmarks.run [--sales-orders 2000000] [--json benchmarks/results/e2e.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pipeline.catalog import TABLES
from pipeline.local import pgserver
from pipeline.warehouse_schema import WAREHOUSE_TABLES

SNAPSHOT_SALES_ORDERS = 11_187


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        return conn.execute(q).fetchone()[0]  # type: ignore[index]


def raw_copy_out(source_dsn: str) -> dict[str, float]:
    """COPY every source table (catalog columns) to STDOUT in binary and discard it."""
    rows, start = 0, time.perf_counter()
    with psycopg.connect(source_dsn) as conn, conn.cursor() as cur:
        for table in TABLES.values():
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
            query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT BINARY)").format(
                cols, sql.Identifier(table.name)
            )
            with cur.copy(query) as copy:
                for _ in copy:
                    pass
            rows += cur.rowcount
    return {"rows": rows, "seconds": time.perf_counter() - start}


def raw_copy_in(warehouse_dsn: str) -> dict[str, float]:
    """Binary COPY FROM of the loaded warehouse rows into empty same-shape tables."""
    rows, seconds = 0, 0.0
    with psycopg.connect(warehouse_dsn) as conn, conn.cursor() as cur:
        for name, table in WAREHOUSE_TABLES.items():
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
            ident, clone = sql.Identifier(name), sql.Identifier(f"raw_{name}")
            buf = bytearray()
            with cur.copy(
                sql.SQL("COPY {} ({}) TO STDOUT (FORMAT BINARY)").format(ident, cols)
            ) as copy:
                for block in copy:
                    buf += block
            cur.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING INDEXES)").format(
                    clone, ident
                )
            )
            conn.commit()
            start = time.perf_counter()
            with cur.copy(
                sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(clone, cols)
            ) as copy:
                copy.write(bytes(buf))
            conn.commit()
            seconds += time.perf_counter() - start
            rows += cur.rowcount
            cur.execute(sql.SQL("DROP TABLE {}").format(clone))
            conn.commit()
    return {"rows": rows, "seconds": seconds}


def run_step(step: str, run_id: str, env: dict[str, str], urls: dict[str, str]) -> dict[str, Any]:
    """Run one step in a child process: its in-process time, the process's wall time (with
    interpreter start and imports) and peak RSS."""
    cmd = [
        sys.executable, "-m", "benchmarks.e2e_steps", step, "--run-id", run_id,
        "--ingest-url", urls["ingest"], "--processed-url", urls["processed"],
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"step {step} failed with exit code {done.returncode}")
    out = json.loads(done.stdout)
    return {
        "seconds": out["step_seconds"],
        "process_seconds": wall,
        "peak_rss_mb": out["peak_rss_mb"],
        "result": out["result"],
    }


def run_pipeline_steps(label: str, env: dict[str, str], urls: dict[str, str]) -> dict[str, Any]:
    steps = {s: run_step(s, f"bench-{label}", env, urls) for s in ("extract", "transform", "load")}
    return {"steps": steps, "seconds": sum(s["seconds"] for s in steps.values())}


def raw_window_scan(source_dsn: str, lag_s: float = 900.0) -> dict[str, float]:
    """The least an incremental extraction can cost the source: read every table's rows of
    the last `lag_s` seconds (the overlap window of a no-change run), literal bounds, one
    query per table on one connection. Without a cursor index each is a full scan."""
    seconds = 0.0
    rows = 0
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("SET jit = off")
        for table in TABLES.values():
            cursor = sql.Identifier(table.cursor)
            (top,) = conn.execute(  # type: ignore[misc]
                sql.SQL("SELECT max({}) FROM {}").format(cursor, sql.Identifier(table.name))
            ).fetchone()
            start = time.perf_counter()
            (n,) = conn.execute(  # type: ignore[misc]
                sql.SQL("SELECT count(*) FROM {} WHERE {} >= %s - %s * interval '1 second'").format(
                    sql.Identifier(table.name), cursor
                ),
                (top, lag_s),
            ).fetchone()
            seconds += time.perf_counter() - start
            rows += n
    return {"rows": rows, "seconds": seconds}


def set_cursor_indexes(source_dsn: str, present: bool) -> float:
    """Create (what `seed --cursor-indexes` adds) or drop the opt-in cursor indexes, then
    analyze; returns the seconds it took."""
    from pipeline.local.simulator.schema import cursor_index_name, cursor_index_statements

    drops = [
        sql.SQL("DROP INDEX {}").format(sql.Identifier(cursor_index_name(t)))
        for t in TABLES.values()
    ]
    start = time.perf_counter()
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        for statement in cursor_index_statements() if present else drops:
            conn.execute(statement)
        conn.execute("ANALYZE")
    return time.perf_counter() - start


def incremental_runs(
    source: str, delta_rows: int, env: dict[str, str], urls: dict[str, str]
) -> dict[str, Any]:
    """No-change and `delta_rows` runs without, then with, the opt-in cursor indexes.

    Each pair reads the same rows: a delta's changed rows stay inside the overlap window of
    every later run, so both no-change runs come before the first delta, and the indexes
    are dropped again for the production-shape delta.
    """
    plain: dict[str, Any] = {"raw_window_scan": raw_window_scan(source)}
    plain["no_change"] = run_pipeline_steps("nochange", env, urls)
    indexed: dict[str, Any] = {"build_seconds": set_cursor_indexes(source, True)}
    indexed["raw_window_scan"] = raw_window_scan(source)
    indexed["no_change"] = run_pipeline_steps("nochange-idx", env, urls)
    set_cursor_indexes(source, False)
    change_rows(source, delta_rows)
    plain["delta"] = run_pipeline_steps("delta", env, urls)
    set_cursor_indexes(source, True)
    change_rows(source, delta_rows)
    indexed["delta"] = run_pipeline_steps("delta-idx", env, urls)
    return {"plain": plain, "indexed": indexed}


def change_rows(source_dsn: str, n: int) -> None:
    """Bump `last_updated` (and a value) on n sales orders, as business edits would."""
    with psycopg.connect(source_dsn) as conn:
        conn.execute(
            "UPDATE sales_order SET units_sold = units_sold + 1, "
            "last_updated = (SELECT max(last_updated) FROM sales_order) + interval '1 second' "
            "WHERE sales_order_id IN (SELECT sales_order_id FROM sales_order "
            "ORDER BY sales_order_id LIMIT %s)",
            (n,),
        )


def measure(args: argparse.Namespace, admin_dsn: str, workdir: Path) -> dict[str, Any]:
    from benchmarks.baselines import dlt_baseline, pandas_baseline
    from pipeline.local.simulator.seed import seed

    source = pgserver.create_database(admin_dsn, "bench_totesys")
    warehouse = pgserver.create_database(admin_dsn, "bench_warehouse")
    scale = args.sales_orders / SNAPSHOT_SALES_ORDERS
    t0 = time.perf_counter()
    counts = seed(source, scale=scale, seed=1)
    seed_s = time.perf_counter() - t0
    source_rows = sum(counts.values())
    print(f"seeded {source_rows:,} rows (scale {scale:.1f}) in {seed_s:.1f} s", flush=True)

    env = {**os.environ, "TOTESYS_DSN": source, "WAREHOUSE_DSN": warehouse}
    urls = {"ingest": str(workdir / "ingestion"), "processed": str(workdir / "processed")}

    raw_out = raw_copy_out(source)
    full = run_pipeline_steps("full", env, urls)
    raw_in = raw_copy_in(warehouse)
    runs = incremental_runs(source, args.delta, env, urls)
    plain, indexed = runs["plain"], runs["indexed"]

    baseline = pandas_baseline(source, admin_dsn, rows_limit=args.baseline_rows)
    baseline_full_s = baseline["seconds_per_source_row"] * source_rows
    dlt = None if args.no_dlt else dlt_baseline(source, admin_dsn, workdir)

    raw_s = raw_out["seconds"] + raw_in["seconds"]
    return {
        "sales_orders": args.sales_orders,
        "source_rows": source_rows,
        "seed_seconds": seed_s,
        "raw": {"copy_out": raw_out, "copy_in": raw_in, "seconds": raw_s},
        "full": full,
        "no_change": plain["no_change"],
        "delta": {"rows_changed": args.delta, **plain["delta"]},
        "raw_window_scan": plain["raw_window_scan"],
        "cursor_indexes": indexed,
        "pandas_baseline": {**baseline, "extrapolated_seconds": baseline_full_s},
        "dlt": dlt,
        "ratios": {
            "ours_vs_raw_limit": raw_s / full["seconds"],
            "ours_vs_pandas_baseline": baseline_full_s / full["seconds"],
            "ours_vs_dlt": (dlt["seconds"] / full["seconds"]) if dlt else None,
        },
    }


def print_table(r: dict[str, Any]) -> None:
    n = r["source_rows"]
    print(
        f"\n== totesys-etl end-to-end benchmark: {r['sales_orders']:,} sales orders, "
        f"{n:,} source rows, on {r.get('server', 'the given server')}"
    )
    print(f"{'measurement':<44}{'seconds':>10}{'rows/s':>14}{'peak RSS MB':>13}")

    def line(name: str, seconds: float, rows: int | None = None, rss: float | None = None) -> None:
        rows = n if rows is None else rows
        rate = f"{rows / seconds:,.0f}" if seconds and rows else "-"
        print(f"{name:<44}{seconds:>10.2f}{rate:>14}{(f'{rss:.0f}' if rss else '-'):>13}")

    line(
        "raw COPY TO STDOUT (all source tables)",
        r["raw"]["copy_out"]["seconds"],
        r["raw"]["copy_out"]["rows"],
    )
    line(
        "raw binary COPY FROM (warehouse rows)",
        r["raw"]["copy_in"]["seconds"],
        r["raw"]["copy_in"]["rows"],
    )
    line("raw limit (out + in, sequential)", r["raw"]["seconds"])
    runs = (
        ("full", "full"),
        ("no_change", "no change"),
        ("delta", f"{r['delta']['rows_changed']:,} changed rows"),
    )
    for key, label in runs:
        rows = n if key == "full" else 0
        for step, s in r[key]["steps"].items():
            line(f"totesys-etl {label}: {step}", s["seconds"], rows, s["peak_rss_mb"])
        line(f"totesys-etl {label}: total step time", r[key]["seconds"], rows)
    print("(step time is in-process; each step process also spends ~1 s starting Python)")
    ci = r["cursor_indexes"]
    print(
        f"\n-- incremental runs, production shape (no cursor index) vs opt-in cursor indexes "
        f"(built in {ci['build_seconds']:.1f} s)"
    )
    print(f"{'measurement':<40}{'no index':>10}{'cursor idx':>12}{'rows read (each)':>20}")
    changed = f"{r['delta']['rows_changed']:,} changed"
    pairs = [("raw: filtered scan of every table", r["raw_window_scan"], ci["raw_window_scan"])]
    for run, label in (("no_change", "no change"), ("delta", changed)):
        pairs.append((f"{label}: extract", r[run]["steps"]["extract"], ci[run]["steps"]["extract"]))
        pairs.append((f"{label}: all steps", r[run], ci[run]))

    def rows(d: dict[str, Any]) -> object:
        return d.get("rows", d.get("result", {}).get("rows", "-"))

    for name, plain, indexed in pairs:
        read = f"{rows(plain)} / {rows(indexed)}"
        print(f"{name:<40}{plain['seconds']:>10.3f}{indexed['seconds']:>12.3f}{read:>20}")
    b = r["pandas_baseline"]
    line(f"pandas + row-by-row (extrapolated from {b['rows']:,})", b["extrapolated_seconds"])
    if r["dlt"]:
        line(
            "dlt sql_database (pyarrow) -> postgres (EL only)",
            r["dlt"]["seconds"],
            r["dlt"]["rows"],
        )
    else:
        print("dlt: not installed (pip install -e '.[bench]')")
    print()
    for k, v in r["ratios"].items():
        print(f"{k:<28}{'-' if v is None else f'{v:.2f}x'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sales-orders", type=int, default=2_000_000)
    p.add_argument("--delta", type=int, default=10_000, help="changed rows for the delta run")
    p.add_argument("--baseline-rows", type=int, default=20_000, help="pandas baseline subset")
    p.add_argument("--admin-dsn", default=os.environ.get("BENCH_PG_DSN"))
    p.add_argument("--no-dlt", action="store_true")
    p.add_argument("--json", default="benchmarks/results/e2e.json")
    args = p.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="totesys-bench-") as tmp,
        pgserver.throwaway_postgres(dsn=args.admin_dsn, fast=False) as server,
    ):
        print(f"benchmark server: {server.description}", file=sys.stderr)
        result = measure(args, server.dsn, Path(tmp))
        result["server"] = server.description
    print_table(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
