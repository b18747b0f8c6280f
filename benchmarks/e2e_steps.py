"""One pipeline step in its own process, so the parent can measure its peak RSS.

`python -m benchmarks.e2e_steps extract|transform|load --run-id R ...` prints JSON:
the step result, the step's own time (imports excluded) and the process's peak RSS
(`VmHWM`, which, unlike `ru_maxrss`, does not inherit the parent's peak across exec).
Extract runs every table the way the local runner does; transform drains the backlog.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pipeline.transform  # noqa: F401  (imported up front: step time excludes imports)
from pipeline.catalog import TABLE_NAMES
from pipeline.load import load
from pipeline.orchestration import extract_to_completion, transform_rounds
from pipeline.settings import Settings


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_step(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env().replace(
        ingest_url=args.ingest_url, processed_url=args.processed_url
    )
    if args.step == "extract":
        with ThreadPoolExecutor(args.workers) as pool:
            results = dict(
                zip(
                    TABLE_NAMES,
                    pool.map(
                        lambda t: extract_to_completion(t, args.run_id, settings).to_dict(),
                        TABLE_NAMES,
                    ),
                    strict=True,
                )
            )
        failed = {t: r["error"] for t, r in results.items() if r["status"] == "failed"}
        if failed:  # a measurement of a failed extract would mean nothing
            raise RuntimeError(f"extract failed: {failed}")
        return {"rows": sum(r["rows"] for r in results.values()), "tables": results}
    if args.step == "transform":
        return transform_rounds(args.run_id, settings).to_dict()
    return load(args.run_id, settings).to_dict()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=["extract", "transform", "load"])
    p.add_argument("--run-id", required=True)
    p.add_argument("--ingest-url", required=True)
    p.add_argument("--processed-url", required=True)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    start = time.perf_counter()
    result = run_step(args)
    seconds = time.perf_counter() - start
    out = {"result": result, "step_seconds": seconds, "peak_rss_mb": peak_rss_mb()}
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
