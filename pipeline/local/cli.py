"""`totesys-etl` command line: a thin adapter that parses options and calls the step modules.

Every command builds one `Settings` (the environment, then the options given on top) and
calls one function of the package with it; no pipeline logic lives here.

Exit codes: 0 done, 1 a run finished with failed steps, 2 the input was rejected or a step
raised a typed error (one line on stderr, never a traceback), 130 interrupted. Everything
printed passes through `pipeline.redaction`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from pipeline.errors import ConfigurationError, PipelineError
from pipeline.layout import RUN_ID_MAX, check_run_id
from pipeline.redaction import redact, scrub
from pipeline.settings import Settings, knobs


def _print_json(obj: Any) -> None:
    print(json.dumps(scrub(json.loads(json.dumps(obj, default=str))), indent=2, sort_keys=True))


def _print_counts(verb: str, counts: dict[str, Any]) -> None:
    width = max((len(k) for k in counts), default=0)
    print(f"{verb}:")
    for key, value in counts.items():
        print(f"  {key:<{width}}  {value}")


def _settings(args: argparse.Namespace) -> Settings:
    """The environment's settings with the options given on the command line on top."""
    given = {
        f.name: getattr(args, f.name)
        for f in knobs()
        if f.metadata["flag"] and hasattr(args, f.name)
    }
    if given.get("extract_lag") is not None:
        given["extract_lag"] = timedelta(seconds=given["extract_lag"])
    settings = Settings.from_env().with_flags(**given)
    from pipeline.credentials import check_dsns

    check_dsns(settings)  # a malformed DSN is rejected (exit 2) before anything is written
    return settings


def _source_dsn(args: argparse.Namespace) -> str:
    """The totesys DSN the simulator writes to: `--dsn`, else `TOTESYS_DSN`."""
    dsn = args.dsn or Settings.from_env().source_dsn
    if not dsn:
        raise ConfigurationError("no totesys database given: pass --dsn or set TOTESYS_DSN")
    return dsn


# -- commands ----------------------------------------------------------------------------
def _cmd_seed(args: argparse.Namespace) -> int:
    if args.from_parquet:
        from pipeline.local.simulator.snapshot import load_snapshot

        counts = load_snapshot(
            _source_dsn(args),
            args.from_parquet,
            force=args.force,
            cursor_indexes=args.cursor_indexes,
            into_existing=args.into_existing,
        )
    else:
        from pipeline.local.simulator.seed import seed

        counts = seed(
            _source_dsn(args),
            scale=args.scale,
            seed=args.seed,
            force=args.force,
            start=args.start,
            cursor_indexes=args.cursor_indexes,
            into_existing=args.into_existing,
        )
    _print_json(counts) if args.json else _print_counts("seeded", counts)
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pipeline.local.simulator.simulate import simulate

    summary = simulate(
        _source_dsn(args),
        days=args.days,
        hours=args.hours,
        minutes=args.minutes,
        seed=args.seed,
        allow_future=args.allow_future,
    )
    _print_json(summary) if args.json else _print_counts("simulated", summary)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.catalog import TABLE_NAMES
    from pipeline.local.runner import run_pipeline

    settings = _settings(args)
    tables = args.tables or TABLE_NAMES
    window: dict[str, Any] = {
        "since": args.since,
        "until": args.until,
        "allow_mass_delete": args.allow_mass_delete,
        "repair": args.repair,
    }
    if args.json:
        report = run_pipeline(settings, tables=tables, run_id=args.run_id, **window)
        _print_json(report.to_dict())
    else:
        from pipeline.local.console import print_run_summary, run_progress

        with run_progress([*tables, "transform", "load"]) as progress:
            report = run_pipeline(
                settings, tables=tables, run_id=args.run_id, progress=progress, **window
            )
        print_run_summary(report)
    if report.report_error:
        print(f"totesys-etl run: run report not written: {report.report_error}", file=sys.stderr)
    return 0 if report.succeeded and not report.report_error else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline.local.status import gather_status

    status = gather_status(_settings(args), runs=args.history, page=args.page)
    if args.json:
        _print_json(status)
    else:
        from pipeline.local.console import print_status

        print_status(status)
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from pipeline.extract import extract_table
    from pipeline.local.runner import new_run_id

    run_id = args.run_id or new_run_id()
    result = extract_table(args.table, run_id, _settings(args), since=args.since, until=args.until)
    _print_json(result.to_dict())
    return 0


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.catalog import TABLE_NAMES
    from pipeline.extract.reconcile import reconcile_table
    from pipeline.local.runner import new_run_id

    settings = _settings(args)
    run_id = args.run_id or new_run_id()

    def one(table: str) -> tuple[str, dict[str, Any]]:
        try:
            result = reconcile_table(
                table,
                run_id,
                settings,
                allow_mass_delete=args.allow_mass_delete,
                repair_all=args.repair,
            )
            return table, result.to_dict()
        except PipelineError as exc:
            return table, {"status": "failed", "error": redact(f"{type(exc).__name__}: {exc}")}

    with ThreadPoolExecutor(max_workers=max(1, settings.extract_workers)) as pool:
        tables = dict(pool.map(one, args.tables or TABLE_NAMES))
    failed = [t for t, r in tables.items() if r["status"] == "failed"]
    if args.json:
        _print_json({"run_id": run_id, "status": "failed" if failed else "succeeded",
                     "tables": tables})  # fmt: skip
    else:
        from pipeline.local.console import print_reconcile

        print_reconcile(run_id, tables)
    return 1 if failed else 0


def _cmd_transform(args: argparse.Namespace) -> int:
    from pipeline.local.runner import new_run_id
    from pipeline.transform import transform

    if args.rederive:
        from pipeline.transform.rederive import rederive

        _print_json(rederive(args.rederive, _settings(args)).to_dict())
        return 0
    _print_json(transform(args.run_id or new_run_id(), _settings(args)).to_dict())
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    from pipeline.load import load
    from pipeline.local.runner import new_run_id

    _print_json(load(args.run_id or new_run_id(), _settings(args)).to_dict())
    return 0


def _cmd_clear_lease(args: argparse.Namespace) -> int:
    from pipeline.transform.lease import clear

    outcome = clear(_settings(args).processed_lake(), force=args.force)
    _print_json(outcome)
    return 1 if outcome["status"] == "held" else 0


def _cmd_init_warehouse(args: argparse.Namespace) -> int:
    from pipeline.credentials import WAREHOUSE, connect, resolve
    from pipeline.load import privileges
    from pipeline.load.migrations import migrate, migration_script

    if args.print_sql:  # for a DBA: nothing is connected to
        if args.grant_to and not args.database:
            raise ConfigurationError(
                "--print-sql --grant-to needs --database NAME (its GRANT names the database)"
            )
        print(migration_script(), end="")
        if args.grant_to:
            print(f"-- what the load needs, for {args.grant_to}")
            print(privileges.grant_script(args.grant_to, args.database, args.schema), end="")
        return 0
    owner = resolve(WAREHOUSE, _settings(args))
    out: dict[str, Any] = {"applied": migrate(owner)}
    if args.grant_to:
        with connect(owner, autocommit=True) as conn:
            out["granted"] = {args.grant_to: privileges.grant_loader(conn, args.grant_to)}
    _print_json(out)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import build_report, write_report

    report = build_report(
        _settings(args), since=args.since, until=args.until, quarantine=not args.no_quarantine
    )
    report = write_report(report, args.out)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(
            f"report written to {report.keys[0]} ({len(report.charts)} charts, "
            f"{len(report.html.encode()) / 1e6:.1f} MB, {report.seconds:.1f} s)"
        )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.local.demo import run_demo

    return run_demo(keep=args.keep, days=args.days, scale=args.scale)


# -- option types --------------------------------------------------------------------------
def _table_list(text: str) -> list[str]:
    """`a,b,...`: catalog names; an empty item (`a,,b`, `,`, ``) is a mistake, not "all"."""
    from pipeline.catalog import get_table

    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(
            f"--tables {text!r} has an empty item: name tables as a,b,... or leave --tables out"
        )
    try:
        return [get_table(t).name for t in items]
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_id(text: str) -> str:
    try:
        return check_run_id(text)
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--scale must be greater than 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {value}")
    return value


def _timestamp(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date or timestamp such as 2022-11-03T14:20:49, got {text!r}"
        ) from None


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date such as 2024-11-15, got {text!r}"
        ) from None


def _cadence(text: str) -> Any:
    from pipeline.settings import parse_cadence

    try:
        return parse_cadence(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N, Nh or off, got {text!r} ({exc})") from None


# -- the parser ----------------------------------------------------------------------------
RUN_ID_HELP = f"run id: 1-{RUN_ID_MAX} letters, digits and ._=+- (default: a new sortable id)"


def _reconcile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="accept a reconciliation that tombstones more than RECONCILE_MAX_DELETE_SHARE",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="also check every committed batch's files and re-extract broken ones",
    )


def _setting_option(p: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """An option that overrides setting `name`; its help names the variable and default."""
    spec = Settings.__dataclass_fields__[name].metadata
    default = spec["shown"] or Settings.__dataclass_fields__[name].default
    p.add_argument(
        spec["flag"],
        dest=name,
        default=None,
        help=f"{spec['doc']} (default: ${spec['env'][0]}, else {default})",
        **kwargs,
    )


def _lake_options(p: argparse.ArgumentParser, ingest: bool = True, processed: bool = True) -> None:
    if ingest:
        _setting_option(p, "ingest_url")
    if processed:
        _setting_option(p, "processed_url")


def _database_options(
    p: argparse.ArgumentParser, source: bool = True, warehouse: bool = True
) -> None:
    if source:
        _setting_option(p, "source_dsn")
    if warehouse:
        _setting_option(p, "warehouse_dsn")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="totesys-etl",
        description="Incremental ETL from totesys to a star-schema warehouse via a Parquet lake.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    def source_dsn(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dsn", help="PostgreSQL DSN of the totesys database ($TOTESYS_DSN)")

    p = command(
        "seed", _cmd_seed, "create the production totesys schema and fill it with synthetic data"
    )
    source_dsn(p)
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
    p.add_argument(
        "--cursor-indexes",
        action="store_true",
        help="also create a (last_updated, <key>) index per table, which production lacks: "
        "incremental extractions then read by index instead of scanning each table",
    )
    p.add_argument(
        "--into-existing",
        action="store_true",
        help="load into the empty totesys tables already in the database (for example one "
        "made from the production DDL) instead of creating the schema",
    )
    p.add_argument("--json", action="store_true", help="print the row counts as JSON")

    p = command(
        "simulate", _cmd_simulate, "advance totesys business activity by some simulated time"
    )
    source_dsn(p)
    span = p.add_mutually_exclusive_group(required=True)
    span.add_argument("--days", type=int, help="days of simulated time (>= 1)")
    span.add_argument("--hours", type=int, help="hours of simulated time (>= 1)")
    span.add_argument(
        "--minutes", type=int, help="minutes of simulated time (>= 1; 15 = one scheduled run)"
    )
    p.add_argument(
        "--allow-future",
        action="store_true",
        help="simulate past the database's real clock (rows stamped later are extracted "
        "only once real time reaches them)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the data)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = command("run", _cmd_run, "extract, transform and load: one full pipeline pass")
    _database_options(p)
    _lake_options(p)
    p.add_argument("--tables", type=_table_list, default=None, help="a,b,... (default: all)")
    p.add_argument("--run-id", type=_run_id, default=None, help=RUN_ID_HELP)
    p.add_argument(
        "--since", type=_timestamp, default=None, help="backfill: last_updated from (inclusive)"
    )
    p.add_argument(
        "--until", type=_timestamp, default=None, help="backfill: last_updated until (exclusive)"
    )
    _reconcile_options(p)
    _setting_option(p, "reconcile_every", type=_cadence)
    _setting_option(p, "extract_workers", type=_positive_int)
    _setting_option(p, "extract_max_rows", type=_positive_int)
    _setting_option(p, "extract_lag", type=_non_negative)
    _setting_option(p, "transform_max_rows", type=_positive_int)
    p.add_argument("--json", action="store_true", help="print one JSON object, no progress")

    p = command("status", _cmd_status, "watermarks, pending batches and recent runs")
    _lake_options(p)
    _database_options(p, source=False)
    p.add_argument(
        "--history", type=_positive_int, default=10, metavar="N", help="show N runs (10)"
    )
    p.add_argument(
        "--page", type=_positive_int, default=1, help="page through older runs: 2 = runs N+1..2N"
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("extract", _cmd_extract, "extract one table into the ingestion zone")
    p.add_argument("table", help="totesys table name")
    _database_options(p, warehouse=False)
    _lake_options(p, processed=False)
    p.add_argument("--run-id", type=_run_id, default=None, help=RUN_ID_HELP)
    p.add_argument("--since", type=_timestamp, default=None, help="backfill window start")
    p.add_argument("--until", type=_timestamp, default=None, help="backfill window end")
    _setting_option(p, "extract_max_rows", type=_positive_int)
    _setting_option(p, "extract_lag", type=_non_negative)

    p = command(
        "reconcile",
        _cmd_reconcile,
        "compare each table with what the lake holds; recover missing rows, record deletes",
    )
    _database_options(p, warehouse=False)
    _lake_options(p, processed=False)
    p.add_argument("--tables", type=_table_list, default=None, help="a,b,... (default: all)")
    p.add_argument("--run-id", type=_run_id, default=None, help=RUN_ID_HELP)
    _reconcile_options(p)
    _setting_option(p, "extract_workers", type=_positive_int)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("transform", _cmd_transform, "transform new raw batches into the star schemas")
    _lake_options(p)
    p.add_argument("--run-id", type=_run_id, default=None, help=RUN_ID_HELP)
    p.add_argument(
        "--rederive",
        metavar="RUN_ID",
        type=_run_id,
        default=None,
        help="write processed batch RUN_ID again from its recorded inputs (a lost file)",
    )
    _setting_option(p, "transform_max_rows", type=_positive_int)

    p = command("load", _cmd_load, "load processed batches into the warehouse")
    _lake_options(p, ingest=False)
    _database_options(p, source=False)
    p.add_argument("--run-id", type=_run_id, default=None, help=RUN_ID_HELP)

    p = command(
        "clear-lease",
        _cmd_clear_lease,
        "remove the processed zone's transform lease if its holder died (it expires by itself)",
    )
    _lake_options(p, ingest=False)
    p.add_argument(
        "--force",
        action="store_true",
        help="remove it even if not expired (a live transform then fails its commit and retries)",
    )

    p = command(
        "init-warehouse",
        _cmd_init_warehouse,
        "create or upgrade the warehouse schema (as its owner); grant a loader role what the "
        "load needs",
    )
    p.add_argument(
        "--owner-dsn",
        "--dsn",
        dest="warehouse_dsn",
        default=None,
        help="DSN of the user that owns (or creates) the warehouse tables "
        "(default: $WAREHOUSE_DSN, else $WAREHOUSE_SECRET_ARN)",
    )
    p.add_argument(
        "--grant-to",
        metavar="ROLE",
        default=None,
        help="then grant this existing role exactly what the load needs (docs/DEPLOY.md)",
    )
    p.add_argument(
        "--print-sql",
        action="store_true",
        help="print the SQL instead of running it (for a DBA; connects to nothing)",
    )
    p.add_argument(
        "--database",
        default=None,
        help="with --print-sql --grant-to: the warehouse database's name (for its GRANT)",
    )
    p.add_argument(
        "--schema",
        default="public",
        help="with --print-sql --grant-to: the schema the tables go to (default: public)",
    )

    p = command(
        "report", _cmd_report, "build a self-contained HTML report of charts from the warehouse"
    )
    _database_options(p, source=False)
    _lake_options(p, ingest=False)
    p.add_argument("--out", default="report.html", help="HTML file to write (report.html)")
    p.add_argument("--since", type=_date, default=None, help="first business date (inclusive)")
    p.add_argument("--until", type=_date, default=None, help="last business date (inclusive)")
    p.add_argument(
        "--no-quarantine",
        action="store_true",
        help="do not read the processed zone (the quarantine chart says so)",
    )
    p.add_argument("--json", action="store_true", help="print what was written as JSON")

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
        code: int = args.func(args)
    except PipelineError as exc:
        message = redact(f"{type(exc).__name__}: {exc}").replace("\n", " ")
        print(f"totesys-etl {args.command}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
