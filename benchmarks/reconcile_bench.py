"""Reconciliation benchmark: a no-difference pass against raw COPY-out of the same tables.

    python -m benchmarks.reconcile_bench [--sales-orders 2000000] [--repeat 3] [--json]

Seeds a whole totesys with the simulator (`--sales-orders`, with their purchase orders,
transactions, payments and designs: about 4.3x as many rows; throwaway cluster unless
`--dsn`, or `--seeded DSN` as it is), extracts every table into a temporary lake with
reconciliation off, then measures in the same run, each the best of `--repeat`:

1. raw: binary `COPY (SELECT <catalog columns> FROM t) TO STDOUT` of every table,
   sequential on one connection (what a full read of the tables costs);
2. the first reconciliation of every table (it folds the full extraction into the held
   state: once per lake);
3. a no-difference pass of every table (`reconcile_table`, sequential): the cost every run
   pays when reconciliation is on (the target is at most 0.5x the raw COPY);
4. repair: 1,000 sales orders get a new version stamped an hour below the watermark
   (scattered over the key range, so about 1,000 compared buckets differ), then one pass of
   `sales_order` recovers them.

The machine may be shared: ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from typing import Any

import psycopg

from benchmarks.common import best_of, timed
from benchmarks.extract_bench import _row_counts, _seeded, raw_copy_all
from pipeline.catalog import TABLE_NAMES
from pipeline.extract.reconcile import reconcile_table
from pipeline.orchestration import extract_to_completion
from pipeline.settings import Settings, parse_cadence

TARGET_RATIO = 0.5
LATE_ROWS = 1_000


def _reconcile_all(settings: Settings, run_id: str) -> dict[str, Any]:
    results = {t: reconcile_table(t, run_id, settings) for t in TABLE_NAMES}
    return {
        "buckets": sum(r.buckets_compared for r in results.values()),
        "differed": sum(r.buckets_differed for r in results.values()),
        "recovered": sum(r.rows_recovered for r in results.values()),
    }


def _late_rows(dsn: str, count: int) -> None:
    """`count` sales orders, spread over the keys, get a new version an hour below the
    newest `last_updated` (a long transaction committing late)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = "
            "(SELECT max(last_updated) FROM sales_order) - interval '1 hour' "
            "WHERE sales_order_id IN (SELECT sales_order_id FROM sales_order "
            "ORDER BY hashint4(sales_order_id) LIMIT %s)",
            (count,),
        )


def measure(sales_orders: int, dsn: str | None, seeded: str | None, repeat: int) -> dict[str, Any]:
    with _seeded(sales_orders, dsn, seeded) as (db, build_s):
        counts = _row_counts(db)
        raw = best_of(repeat, lambda: raw_copy_all(db))
        with tempfile.TemporaryDirectory(prefix="reconcile-bench-") as lake:
            settings = Settings(
                ingest_url=lake, source_dsn=db, reconcile_every=parse_cadence("off")
            )
            with timed() as extract:
                for table in TABLE_NAMES:  # every row: a table over EXTRACT_MAX_ROWS continues
                    outcome = extract_to_completion(table, "full", settings)
                    assert outcome.error is None and not outcome.more_left, outcome
            with timed() as first:
                bootstrap = _reconcile_all(settings, "first")
            passes: list[tuple[float, dict[str, Any]]] = []
            for attempt in range(repeat):
                with timed() as t:
                    found = _reconcile_all(settings, f"again-{attempt}")
                passes.append((t.seconds, found))
            seconds, found = min(passes, key=lambda p: p[0])
            assert found["differed"] == 0 and found["recovered"] == 0, found
            _late_rows(db, LATE_ROWS)
            with timed() as repair:
                repaired = reconcile_table("sales_order", "repair", settings)
            assert repaired.rows_recovered == LATE_ROWS, repaired
    return {
        "rows": sum(counts.values()),
        "tables": counts,
        "build_s": round(build_s, 2),
        "extract_s": round(extract.seconds, 2),
        "raw_copy_binary_s": round(raw, 3),
        "first_pass_s": round(first.seconds, 3),
        "first_pass_buckets": bootstrap["buckets"],
        "no_difference_s": round(seconds, 3),
        "no_difference_ratio": round(seconds / raw, 3),
        "buckets": found["buckets"],
        "repair_rows": repaired.rows_recovered,
        "repair_buckets_differed": repaired.buckets_differed,
        "repair_s": round(repair.seconds, 3),
        "target_ratio": TARGET_RATIO,
    }


def _print(r: dict[str, Any]) -> None:
    n = r["rows"]
    print(f"reconcile benchmark: {n:,} source rows in 11 tables (seeded in {r['build_s']} s)")
    print(f"{'path':<52}{'seconds':>9}{'x raw COPY':>12}")
    raw = r["raw_copy_binary_s"]
    print(f"{'raw binary COPY TO STDOUT, all tables':<52}{raw:>9.2f}{1:>12.2f}")
    for label, key in (
        ("first reconciliation (folds the full extraction)", "first_pass_s"),
        ("no-difference reconciliation, all tables", "no_difference_s"),
    ):
        print(f"{label:<52}{r[key]:>9.2f}{r[key] / raw:>12.2f}")
    print(
        f"{'repair: ' + str(r['repair_rows']) + ' late rows of sales_order':<52}"
        f"{r['repair_s']:>9.2f}{r['repair_s'] / raw:>12.2f}"
    )
    verdict = "meets" if r["no_difference_ratio"] <= TARGET_RATIO else "MISSES"
    print(
        f"no-difference pass {r['no_difference_ratio']:.2f}x raw COPY: {verdict} the "
        f"{TARGET_RATIO}x target; {r['buckets']:,} buckets compared; the repair pass diffed "
        f"{r['repair_buckets_differed']:,} buckets"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sales-orders", type=int, default=2_000_000)
    parser.add_argument("--dsn", help="superuser DSN of a server to use (default: throwaway)")
    parser.add_argument("--seeded", metavar="DSN", help="use this seeded totesys as it is")
    parser.add_argument("--repeat", type=int, default=3, help="best of N")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the cluster
    started = time.perf_counter()
    result = measure(args.sales_orders, args.dsn, args.seeded, args.repeat)
    result["total_s"] = round(time.perf_counter() - started, 1)
    _print(result)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
