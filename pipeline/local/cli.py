"""`totesys-etl` command line: a thin adapter that parses options and calls the step modules.

Every command maps its options (with environment fallbacks) onto one function of the
package and prints the result; no pipeline logic lives here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from pipeline.errors import PipelineError


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _cmd_seed(args: argparse.Namespace) -> int:
    if args.from_parquet:
        from pipeline.local.simulator.snapshot import load_snapshot

        counts = load_snapshot(args.dsn, args.from_parquet, force=args.force)
    else:
        from pipeline.local.simulator.seed import seed

        counts = seed(
            args.dsn, scale=args.scale, seed=args.seed, force=args.force, start=args.start
        )
    _print_json(counts) if args.json else _print_counts("seeded", counts)
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pipeline.local.simulator.simulate import simulate

    summary = simulate(args.dsn, days=args.days, seed=args.seed)
    _print_json(summary) if args.json else _print_counts("simulated", summary)
    return 0


DEFAULT_INGEST_URL = "lake/ingestion"
DEFAULT_PROCESSED_URL = "lake/processed"


def _table_list(text: str) -> list[str]:
    from pipeline.catalog import get_table

    try:
        return [get_table(t.strip()).name for t in text.split(",") if t.strip()]
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _timestamp(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO timestamp: {text!r}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.catalog import TABLE_NAMES
    from pipeline.local.runner import RunSettings, run_pipeline

    settings = RunSettings(
        source_dsn=args.source_dsn,
        warehouse_dsn=args.warehouse_dsn,
        ingest_url=args.ingest_url,
        processed_url=args.processed_url,
        tables=args.tables or TABLE_NAMES,
        run_id=args.run_id,
        extract_workers=args.workers,
    )
    if args.json:
        report = run_pipeline(settings)
        _print_json(report.to_dict())
    else:
        from pipeline.local.console import print_run_summary, run_progress

        with run_progress([*settings.tables, "transform", "load"]) as progress:
            report = run_pipeline(settings, progress)
        print_run_summary(report)
    return 0 if report.succeeded else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline.local.status import gather_status

    status = gather_status(
        ingest_url=args.ingest_url,
        processed_url=args.processed_url,
        warehouse_dsn=args.warehouse_dsn,
    )
    if args.json:
        _print_json(status)
    else:
        from pipeline.local.console import print_status

        print_status(status)
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from pipeline.extract import extract_table
    from pipeline.local.runner import new_run_id

    result = extract_table(
        args.table,
        args.run_id or new_run_id(),
        lake_url=args.ingest_url,
        source_dsn=args.source_dsn,
        since=args.since,
        until=args.until,
    )
    _print_json(result.to_dict())
    return 0


def _cmd_transform(args: argparse.Namespace) -> int:
    from pipeline.local.runner import new_run_id
    from pipeline.transform import transform

    result = transform(
        args.run_id or new_run_id(), ingest_url=args.ingest_url, processed_url=args.processed_url
    )
    _print_json(result.to_dict())
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    from pipeline.load import load
    from pipeline.local.runner import new_run_id

    result = load(
        args.run_id or new_run_id(),
        processed_url=args.processed_url,
        warehouse_dsn=args.warehouse_dsn,
    )
    _print_json(result.to_dict())
    return 0


def _cmd_init_warehouse(args: argparse.Namespace) -> int:
    from pipeline.load.migrations import migrate

    applied = migrate(args.dsn)
    _print_json({"applied": applied})
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.local.demo import run_demo

    return run_demo(keep=args.keep, days=args.days, scale=args.scale)


def _print_counts(verb: str, counts: dict[str, Any]) -> None:
    width = max((len(k) for k in counts), default=0)
    print(f"{verb}:")
    for key, value in counts.items():
        print(f"  {key:<{width}}  {value}")


def _add_dsn(p: argparse.ArgumentParser, env: str = "TOTESYS_DSN") -> None:
    p.add_argument(
        "--dsn",
        default=_env(env),
        required=_env(env) is None,
        help=f"PostgreSQL DSN of the totesys database (default: ${env})",
    )


def _positive_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--scale must be greater than 0, got {text}")
    return value


def _timestamp(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date or timestamp such as 2022-11-03T14:20:49, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="totesys-etl",
        description="Incremental ETL from totesys to a star-schema warehouse via a Parquet lake.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_: str):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = command("seed", _cmd_seed, "create the totesys schema and fill it with synthetic data")
    _add_dsn(p)
    p.add_argument(
        "--scale", type=_positive_scale, default=1.0, help="1 = the real snapshot's size"
    )
    p.add_argument("--seed", type=int, default=42, help="random seed (same seed, same data)")
    p.add_argument("--force", action="store_true", help="replace an already seeded database")
    p.add_argument(
        "--from-parquet",
        metavar="DIR",
        default=None,
        help="load a real snapshot instead (DIR/<table>.parquet, one file per table)",
    )
    p.add_argument(
        "--start",
        type=_timestamp,
        default=None,
        help="first moment of the history, ISO format (default: 2022-11-03T14:20:49.962)",
    )
    p.add_argument("--json", action="store_true", help="print the row counts as JSON")

    p = command("simulate", _cmd_simulate, "advance totesys business activity by N days")
    _add_dsn(p)
    p.add_argument("--days", type=int, required=True, help="number of days to simulate (>= 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the data)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    def lake_urls(p: argparse.ArgumentParser, ingest: bool = True, processed: bool = True) -> None:
        if ingest:
            p.add_argument(
                "--ingest-url",
                default=_env("INGEST_URL") or DEFAULT_INGEST_URL,
                help="ingestion zone: s3://bucket/prefix or a folder (default: $INGEST_URL "
                f"or {DEFAULT_INGEST_URL})",
            )
        if processed:
            p.add_argument(
                "--processed-url",
                default=_env("PROCESSED_URL") or DEFAULT_PROCESSED_URL,
                help=f"processed zone (default: $PROCESSED_URL or {DEFAULT_PROCESSED_URL})",
            )

    def databases(p: argparse.ArgumentParser, source: bool = True, warehouse: bool = True) -> None:
        if source:
            p.add_argument(
                "--source-dsn",
                default=_env("TOTESYS_DSN"),
                help="totesys DSN (default: $TOTESYS_DSN, else $TOTESYS_SECRET_ARN)",
            )
        if warehouse:
            p.add_argument(
                "--warehouse-dsn",
                default=_env("WAREHOUSE_DSN"),
                help="warehouse DSN (default: $WAREHOUSE_DSN, else $WAREHOUSE_SECRET_ARN)",
            )

    p = command("run", _cmd_run, "extract, transform and load: one full pipeline pass")
    databases(p)
    lake_urls(p)
    p.add_argument("--tables", type=_table_list, default=None, help="a,b,... (default: all)")
    p.add_argument("--run-id", default=None, help="run id (default: a new sortable id)")
    p.add_argument("--workers", type=int, default=4, help="tables extracted at once")
    p.add_argument("--json", action="store_true", help="print one JSON object, no progress")

    p = command("status", _cmd_status, "watermarks, pending batches and recent runs")
    lake_urls(p)
    databases(p, source=False)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("extract", _cmd_extract, "extract one table into the ingestion zone")
    p.add_argument("table", help="totesys table name")
    databases(p, warehouse=False)
    lake_urls(p, processed=False)
    p.add_argument("--run-id", default=None, help="run id (default: a new sortable id)")
    p.add_argument("--since", type=_timestamp, default=None, help="backfill window start")
    p.add_argument("--until", type=_timestamp, default=None, help="backfill window end")

    p = command("transform", _cmd_transform, "transform new raw batches into the star schemas")
    lake_urls(p)
    p.add_argument("--run-id", default=None, help="run id (default: a new sortable id)")

    p = command("load", _cmd_load, "load processed batches into the warehouse")
    lake_urls(p, ingest=False)
    databases(p, source=False)
    p.add_argument("--run-id", default=None, help="run id (default: a new sortable id)")

    p = command("init-warehouse", _cmd_init_warehouse, "create or upgrade the warehouse schema")
    p.add_argument(
        "--dsn",
        default=_env("WAREHOUSE_DSN"),
        help="warehouse DSN (default: $WAREHOUSE_DSN, else $WAREHOUSE_SECRET_ARN)",
    )

    p = command("demo", _cmd_demo, "end-to-end demo on a throwaway PostgreSQL (nothing to set up)")
    p.add_argument("--keep", action="store_true", help="keep the databases and lake afterwards")
    p.add_argument("--days", type=int, default=5, help="days of business to simulate (5)")
    p.add_argument("--scale", type=_positive_scale, default=1.0, help="size of the seeded data")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline import logs

    quiet = getattr(args, "json", False) or args.command == "demo"
    logs.configure(logging.WARNING if quiet else logging.INFO)
    try:
        return args.func(args)
    except PipelineError as exc:
        print(f"totesys-etl {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
