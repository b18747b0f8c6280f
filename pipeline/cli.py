"""`totesys-etl` command line: a thin adapter that parses options and calls the step modules.

Every command maps its options (with environment fallbacks) onto one function of the
package and prints the result; no pipeline logic lives here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.errors import PipelineError


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _cmd_seed(args: argparse.Namespace) -> int:
    from pipeline.simulator.seed import seed

    counts = seed(args.dsn, scale=args.scale, seed=args.seed, force=args.force)
    _print_json(counts) if args.json else _print_counts("seeded", counts)
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pipeline.simulator.simulate import simulate

    summary = simulate(args.dsn, days=args.days, seed=args.seed)
    _print_json(summary) if args.json else _print_counts("simulated", summary)
    return 0


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
    p.add_argument("--json", action="store_true", help="print the row counts as JSON")

    p = command("simulate", _cmd_simulate, "advance totesys business activity by N days")
    _add_dsn(p)
    p.add_argument("--days", type=int, required=True, help="number of days to simulate (>= 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the data)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
