"""One pipeline step in its own process, so the parent can measure its peak RSS.

`python -m benchmarks.e2e_steps extract|transform|load --run-id R ...` prints the step
result as JSON on stdout. Extract runs every table the way the local runner does.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.catalog import TABLE_NAMES
from pipeline.runner import RunSettings, extract_table_fully


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=["extract", "transform", "load"])
    p.add_argument("--run-id", required=True)
    p.add_argument("--source-dsn")
    p.add_argument("--warehouse-dsn")
    p.add_argument("--ingest-url", required=True)
    p.add_argument("--processed-url", required=True)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    settings = RunSettings(
        source_dsn=args.source_dsn,
        warehouse_dsn=args.warehouse_dsn,
        ingest_url=args.ingest_url,
        processed_url=args.processed_url,
        extract_workers=args.workers,
    )
    if args.step == "extract":
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.workers) as pool:
            results = dict(
                zip(
                    TABLE_NAMES,
                    pool.map(lambda t: extract_table_fully(t, settings, args.run_id), TABLE_NAMES),
                    strict=True,
                )
            )
        out = {"rows": sum(r["rows"] for r in results.values()), "tables": results}
    elif args.step == "transform":
        from pipeline.transform import transform

        out = transform(
            args.run_id, ingest_url=args.ingest_url, processed_url=args.processed_url
        ).to_dict()
    else:
        from pipeline.load import load

        out = load(
            args.run_id, processed_url=args.processed_url, warehouse_dsn=args.warehouse_dsn
        ).to_dict()
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
