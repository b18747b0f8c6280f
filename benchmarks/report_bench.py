"""How long the HTML report takes at N sales orders, against reading the facts once.

Seeds N sales orders (with their purchases, transactions and payments) with the
simulator, loads them with a full pipeline run and builds the report once (the first
report after a fresh load: no VACUUM, no statistics, hint bits unset), gives `--changed`
orders a second version (as business edits would), loads those too and builds once more
(the first report after an incremental load), then `VACUUM ANALYZE`s the warehouse (its
steady state: autovacuum does the same). Then, on the same server:

- raw: `SELECT count(*)` of every fact table, on one connection per table at once (the
  report's own layout): the cost of merely reading each fact row once;
- report: `pipeline.report.build_report` end to end (queries, charts, page), best and
  median of `--repeat` builds, with the server's CPU seconds (every backend of the
  cluster) and the client's, which a busy machine inflates less than wall time.

The load average before and after is printed: the machine may be shared.

    .venv/bin/python -m benchmarks.report_bench [--sales-orders 2000000] [--admin-dsn DSN]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.run import SNAPSHOT_SALES_ORDERS, change_rows
from pipeline.local import pgserver
from pipeline.warehouse_schema import FACTS

TICK = os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(postmaster_pid: int | None) -> float:
    """User + system CPU of every process the postmaster started (backends, workers)."""
    if postmaster_pid is None:
        return float("nan")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster_pid or int(entry) == postmaster_pid:
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / TICK


def postmaster_pid(dsn: str) -> int | None:
    """The server's postmaster when it runs on this machine (a backend's parent), else None:
    its children are what `server_cpu_seconds` sums."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        try:
            stat = Path(f"/proc/{row[0] if row else 0}/stat").read_text()
        except OSError:
            return None  # a remote server: its CPU is not measured
    return int(stat.rsplit(")", 1)[1].split()[1])


def raw_read(dsn: str) -> float:
    """Every fact row read once: count(*) per fact table, the tables at the same time."""

    def count(table: str) -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute("SET jit = off")
            conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(FACTS)) as pool:
        list(pool.map(count, [t.name for t in FACTS]))
    return time.perf_counter() - start


def timed_build(settings: Any, pid: int | None) -> dict[str, Any]:
    """One `build_report`: wall seconds, server and client CPU seconds, size."""
    from pipeline.report import build_report

    server0, client0, t0 = server_cpu_seconds(pid), time.process_time(), time.perf_counter()
    report = build_report(settings)
    return {
        "seconds": time.perf_counter() - t0,
        "server_cpu_s": server_cpu_seconds(pid) - server0,
        "client_cpu_s": time.process_time() - client0,
        "bytes": len(report.html.encode()),
        "charts": len(report.charts),
        "loadavg": os.getloadavg()[0],
    }


def prepare(admin_dsn: str, sales_orders: int, changed: int, workdir: Path) -> dict[str, Any]:
    from pipeline.local.runner import run_pipeline
    from pipeline.local.simulator.seed import seed
    from pipeline.settings import Settings

    source = pgserver.create_database(admin_dsn, "bench_report_totesys")
    warehouse = pgserver.create_database(admin_dsn, "bench_report_warehouse")
    started = time.perf_counter()
    counts = seed(source, scale=sales_orders / SNAPSHOT_SALES_ORDERS, seed=1)
    settings = Settings(
        source_dsn=source,
        warehouse_dsn=warehouse,
        ingest_url=str(workdir / "ingestion"),
        processed_url=str(workdir / "processed"),
    )
    pid, first_builds = postmaster_pid(admin_dsn), {}
    for label in ("full", "changed"):
        report = run_pipeline(settings)
        if not report.succeeded:
            raise RuntimeError(f"{label} run failed: {report.to_dict()}")
        first_builds[label] = timed_build(settings, pid)
        if label == "full":
            change_rows(source, changed)
    with psycopg.connect(warehouse, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        rows = {
            t.name: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t.name))
            ).fetchone()[0]  # type: ignore[index]
            for t in FACTS
        }
    print(f"prepared {counts} -> warehouse facts {rows} in {time.perf_counter() - started:.0f} s")
    return {"settings": settings, "fact_rows": rows, "first_builds": first_builds}


def measure(args: argparse.Namespace, admin_dsn: str, workdir: Path) -> dict:
    prepared = prepare(admin_dsn, args.sales_orders, args.changed, workdir)
    settings, pid = prepared["settings"], postmaster_pid(admin_dsn)
    dsn = settings.warehouse_dsn
    load_before = os.getloadavg()
    raw = min(raw_read(dsn) for _ in range(args.repeat))
    builds = [timed_build(settings, pid) for _ in range(args.repeat)]
    seconds = [b["seconds"] for b in builds]
    return {
        "sales_orders": args.sales_orders,
        "changed_orders": args.changed,
        "fact_rows": prepared["fact_rows"],
        "raw_read_seconds": raw,
        "first_build_after_full_load": prepared["first_builds"]["full"],
        "first_build_after_changed_load": prepared["first_builds"]["changed"],
        "builds": builds,
        "best_seconds": min(seconds),
        "median_seconds": statistics.median(seconds),
        "ratio_best_to_raw_read": min(seconds) / raw,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def print_result(r: dict[str, Any]) -> None:
    print(f"\n== report benchmark: {r['sales_orders']:,} sales orders, facts {r['fact_rows']}")
    print(
        f"raw read of every fact row (count(*) per fact, concurrent): {r['raw_read_seconds']:.2f} s"
    )
    labelled = [
        ("first build after the full load (no vacuum)", r["first_build_after_full_load"]),
        ("first build after the changed load (no vacuum)", r["first_build_after_changed_load"]),
        *((f"build {i} (vacuumed)", b) for i, b in enumerate(r["builds"], start=1)),
    ]
    for label, b in labelled:
        print(
            f"{label}: {b['seconds']:.2f} s wall, server CPU {b['server_cpu_s']:.2f} s, "
            f"client CPU {b['client_cpu_s']:.2f} s, {b['charts']} charts, "
            f"{b['bytes'] / 1e6:.1f} MB, load average {b['loadavg']:.1f}"
        )
    print(
        f"best {r['best_seconds']:.2f} s, median {r['median_seconds']:.2f} s "
        f"({r['ratio_best_to_raw_read']:.1f}x the raw read); load average "
        f"{r['loadavg_before'][0]:.1f} before, {r['loadavg_after'][0]:.1f} after, "
        f"{r['cpus']} CPUs"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sales-orders", type=int, default=2_000_000)
    p.add_argument("--changed", type=int, default=10_000, help="orders given a second version")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--admin-dsn", default=os.environ.get("BENCH_PG_DSN"))
    p.add_argument("--json", default="benchmarks/results/report.json")
    args = p.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="totesys-report-bench-") as tmp,
        pgserver.throwaway_postgres(dsn=args.admin_dsn) as server,  # throwaway: fsync off
    ):
        print(f"benchmark server: {server.description}", file=sys.stderr)
        result = measure(args, server.dsn, Path(tmp))
        result["server"] = server.description
    print_result(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
