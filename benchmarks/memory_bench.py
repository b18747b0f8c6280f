"""Peak memory of each step against the size of the source, at a fixed transform slice.

    python -m benchmarks.memory_bench [--sales-orders 250000,1000000] [--slice 250000]
        [--no-compare] [--json benchmarks/results/memory.json]

For each size: seeds that many sales orders with the simulator (with their transactions and
payments), then runs a full first run step by step, each step in its own process (its peak
RSS is its own, `benchmarks.e2e_steps`): the extract (`EXTRACT_MAX_ROWS` as configured),
the transform with `TRANSFORM_MAX_ROWS=--slice` (all its rounds in one process, as the
local runner runs them; a warm Lambda container keeps its allocator's pages between calls
too), and the load. The claim it checks: the transform's peak depends on the slice, not on
the table, so it stays flat when the data grows (the last line prints the ratio of the
largest size's transform peak to the smallest's).

Throughput: each step's source rows per second of its own process time, next to the raw
PostgreSQL limits measured on the same data in the same run (binary `COPY ... TO STDOUT`
of every source table, binary `COPY FROM` of the loaded warehouse rows into empty tables
with the same indexes, `benchmarks.run`), and the largest size's figures over the
smallest's: the raw limits say how much of a change with size is PostgreSQL's own.

Unless `--no-compare`, each size is also transformed unsliced (one call takes everything)
into a second processed zone and loaded into a second warehouse, and the two warehouses
are compared table by table by a multiset fingerprint of their business columns (row
count and the sum of a 64-bit hash of every row, computed by PostgreSQL): slicing must
change nothing the warehouse holds.

The transform bound on calls is lifted (`TRANSFORM_MAX_ROUNDS`) so that a small slice
never stops the benchmark short of the whole backlog. Not a test: peaks vary a little
with the allocator's timing; compare sizes within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.run import SNAPSHOT_SALES_ORDERS, raw_copy_in, raw_copy_out, run_step
from pipeline.local import pgserver
from pipeline.warehouse_schema import WAREHOUSE_TABLES

UNSLICED = 1_000_000_000  # rows per call: everything in one call
ROUNDS = 100_000  # calls per run: never the limit here


def fingerprints(dsn: str) -> dict[str, tuple[int, int]]:
    """Per warehouse table: (rows, sum of hashes) over the business columns (the serial
    record ids and `_` lineage columns depend on load order, as in the tests' comparison)."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for name, table in WAREHOUSE_TABLES.items():
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
            query = sql.SQL(
                "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) "
                "FROM (SELECT {} FROM {}) t"
            ).format(cols, sql.Identifier(name))
            rows, total = conn.execute(query).fetchone()  # type: ignore[misc]
            out[name] = (int(rows), int(total))
    return out


def _steps(env: dict[str, str], urls: dict[str, str], steps: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for step in steps:
        print(f"  {step} ...", file=sys.stderr, flush=True)
        out[step] = run_step(step, "bench-full", env, urls)
    return out


def measure_size(
    admin_dsn: str, orders: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    from pipeline.local.simulator.seed import seed

    name = f"mem_{orders}"
    source = pgserver.create_database(admin_dsn, f"{name}_source")
    start = time.perf_counter()
    counts = seed(source, scale=orders / SNAPSHOT_SALES_ORDERS, seed=1)
    print(
        f"{orders:,} sales orders: seeded {sum(counts.values()):,} rows in "
        f"{time.perf_counter() - start:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    lake = workdir / name
    base = {**os.environ, "TOTESYS_DSN": source, "TRANSFORM_MAX_ROUNDS": str(ROUNDS)}
    sliced = {"ingest": str(lake / "ingestion"), "processed": str(lake / "processed")}
    env = {
        **base,
        "WAREHOUSE_DSN": pgserver.create_database(admin_dsn, f"{name}_sliced"),
        "TRANSFORM_MAX_ROWS": str(args.slice),
    }
    result: dict[str, Any] = {
        "sales_orders": orders,
        "source_rows": sum(counts.values()),
        "source": counts,
        "steps": _steps(env, sliced, ("extract", "transform", "load")),
    }
    print("  raw COPY out and in ...", file=sys.stderr, flush=True)
    result["raw"] = {"copy_out": raw_copy_out(source), "copy_in": raw_copy_in(env["WAREHOUSE_DSN"])}
    if args.compare:
        whole = {**sliced, "processed": str(lake / "processed-unsliced")}
        env_whole = {
            **base,
            "WAREHOUSE_DSN": pgserver.create_database(admin_dsn, f"{name}_whole"),
            "TRANSFORM_MAX_ROWS": str(UNSLICED),
        }
        result["unsliced"] = _steps(env_whole, whole, ("transform", "load"))
        a, b = fingerprints(env["WAREHOUSE_DSN"]), fingerprints(env_whole["WAREHOUSE_DSN"])
        result["warehouse_rows"] = {t: n for t, (n, _) in a.items()}
        result["equal_to_unsliced"] = a == b
        result["differences"] = sorted(t for t in a if a[t] != b[t])
    for db in ("source", "sliced", "whole"):
        pgserver.drop_database(admin_dsn, f"{name}_{db}")
    return result


def print_table(results: list[dict[str, Any]], slice_rows: int) -> None:
    print(f"\n== peak RSS per step, transform slice {slice_rows:,} rows (TRANSFORM_MAX_ROWS)")
    head = f"{'sales orders':>13}{'source rows':>13}{'extract':>9}{'transform':>11}{'load':>7}"
    print(f"{head}{'rounds':>8}{'transform s':>13}{'unsliced':>10}{'equal':>7}")
    for r in results:
        s = r["steps"]
        rounds = len(s["transform"]["result"]["run_ids"])
        whole = r.get("unsliced")
        unsliced = f"{whole['transform']['peak_rss_mb']:.0f}" if whole else "-"
        equal = {True: "yes", False: "NO", None: "-"}[r.get("equal_to_unsliced")]
        print(
            f"{r['sales_orders']:>13,}{r['source_rows']:>13,}"
            f"{s['extract']['peak_rss_mb']:>9.0f}{s['transform']['peak_rss_mb']:>11.0f}"
            f"{s['load']['peak_rss_mb']:>7.0f}{rounds:>8}{s['transform']['seconds']:>13.1f}"
            f"{unsliced:>10}{equal:>7}"
        )
        if r.get("differences"):
            print(f"  tables that differ from the unsliced run: {', '.join(r['differences'])}")
    print("(peak RSS in MB; unsliced: the transform's peak taking everything in one call)")
    if len(results) > 1:
        low, high = results[0], results[-1]
        growth = high["source_rows"] / low["source_rows"]
        ratio = high["steps"]["transform"]["peak_rss_mb"] / low["steps"]["transform"]["peak_rss_mb"]
        print(f"data x{growth:.1f}: transform peak x{ratio:.2f}")


def _throughput(r: dict[str, Any]) -> dict[str, float]:
    """Rows per second: each step and all three over the source rows, raw COPY over its own."""
    rows, steps = r["source_rows"], r["steps"]
    out = {step: rows / steps[step]["seconds"] for step in ("extract", "transform", "load")}
    out["all three"] = rows / sum(
        steps[step]["seconds"] for step in ("extract", "transform", "load")
    )
    for name, raw in r["raw"].items():
        out[f"raw {name.replace('_', ' ')}"] = raw["rows"] / raw["seconds"]
    return out


def print_throughput(results: list[dict[str, Any]]) -> None:
    print("\n== throughput: rows per second (steps: source rows; raw COPY: the rows it moved)")
    rates = [_throughput(r) for r in results]
    names = list(rates[0])
    print(f"{'sales orders':>13}" + "".join(f"{n:>14}" for n in names))
    for r, rate in zip(results, rates, strict=True):
        print(f"{r['sales_orders']:>13,}" + "".join(f"{rate[n]:>14,.0f}" for n in names))
    if len(results) > 1:
        label = (
            f"{results[-1]['sales_orders'] // 1000:,}k / {results[0]['sales_orders'] // 1000:,}k"
        )
        print(f"{label:>13}" + "".join(f"{rates[-1][n] / rates[0][n]:>14.2f}" for n in names))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sales-orders", default="250000,1000000", help="sizes, comma-separated")
    p.add_argument("--slice", type=int, default=250_000, help="TRANSFORM_MAX_ROWS")
    p.add_argument("--no-compare", dest="compare", action="store_false")
    p.add_argument("--admin-dsn", default=os.environ.get("BENCH_PG_DSN"))
    p.add_argument("--json", default="benchmarks/results/memory.json")
    args = p.parse_args(argv)
    sizes = sorted(int(s) for s in args.sales_orders.split(","))
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="totesys-memory-") as tmp,
        pgserver.throwaway_postgres(dsn=args.admin_dsn, fast=True) as server,
    ):
        print(f"benchmark server: {server.description}", file=sys.stderr)
        for orders in sizes:
            results.append(measure_size(server.dsn, orders, args, Path(tmp)))
    print_table(results, args.slice)
    print_throughput(results)
    out = {"slice": args.slice, "server": server.description, "sizes": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
