"""Deployment settings, read from CDK context (`-c key=value` or `cdk.json`).

Every setting has a default so `cdk synth` works offline with no context at all; the
defaults and their meaning are documented in docs/DEPLOY.md. Nothing secret is ever a
setting: databases are reached through existing Secrets Manager secrets, by ARN or name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from constructs import Node

from pipeline.settings import Settings, env_name

_SETTINGS = Settings()
DEFAULTS: dict[str, Any] = {
    "prefix": "totesys-etl",
    "scheduleExpression": "rate(30 minutes)",
    "scheduleEnabled": True,
    "sourceSecret": "totesys-etl/totesys",
    "warehouseSecret": "totesys-etl/warehouse",
    # Connection details a secret may lack (an RDS-managed secret holds only username and
    # password): given directly, or read at run time from the RDS instance or cluster.
    **{
        f"{db}{field}": None
        for db in ("source", "warehouse")
        for field in ("Host", "Port", "Database", "DbInstance", "DbCluster")
    },
    "vpcId": None,
    "subnetIds": [],
    "securityGroupIds": [],
    "alertEmail": None,
    "architecture": "arm64",
    "extractConcurrency": 4,
    "extractMaxRows": _SETTINGS.extract_max_rows,  # the pipeline's own defaults: one value
    "retentionDays": _SETTINGS.retention_days,
    # The runner's bounds are the settings'; the state machine's the same by default.
    "extractMaxInvocations": _SETTINGS.extract_max_calls,
    "transformMaxRuns": _SETTINGS.transform_max_rounds,
    "logRetentionDays": 90,
    "freshnessHours": 6,
    "reportEnabled": False,
    "stackName": "TotesysEtl",
}

ARCHITECTURES = ("arm64", "x86_64")
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:(?P<name>.+)$")
# Secrets Manager appends "-" and 6 random characters to a secret's name in its ARN.
_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@!-]{1,512}$")  # "!": RDS-managed rds!db-...
_DB_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}$")


@dataclass(frozen=True)
class SecretSpec:
    """How the stack refers to an existing secret: by complete ARN, partial ARN or name.

    A complete ARN (name + the 6-character suffix) is granted exactly; a partial ARN or a
    name is granted `<it>-??????` (CDK's `fromSecretPartialArn` / `fromSecretNameV2`),
    which matches the real secret whatever its suffix. An ARN whose name ends in "-" and 6
    letters or digits is taken as complete (as Secrets Manager's own APIs do): avoid such
    names, or give the complete ARN.
    """

    value: str
    form: str  # "complete-arn" | "partial-arn" | "name"

    @classmethod
    def parse(cls, key: str, value: str) -> SecretSpec:
        if value.startswith("arn:"):
            match = _SECRET_ARN.match(value)
            if match is None or not _SECRET_NAME.match(match["name"]):
                raise ValueError(
                    f"context {key}={value!r} is not a Secrets Manager secret ARN "
                    "(arn:aws:secretsmanager:<region>:<12-digit account>:secret:<name>)"
                )
            form = "complete-arn" if _SUFFIX.search(match["name"]) else "partial-arn"
            return cls(value, form)
        if not _SECRET_NAME.match(value):
            raise ValueError(f"context {key}={value!r} is not a secret name or ARN")
        return cls(value, "name")


@dataclass(frozen=True)
class DatabaseSpec:
    """One database: its secret, plus what the secret may lack (see docs/DEPLOY.md)."""

    secret: SecretSpec
    host: str | None = None
    port: int | None = None
    database: str | None = None
    db_instance: str | None = None
    db_cluster: str | None = None

    @classmethod
    def from_context(cls, db: str, get: Any) -> DatabaseSpec:
        key = f"{db}Secret"
        port = get(f"{db}Port")
        spec = cls(
            secret=SecretSpec.parse(key, str(get(key))),
            host=get(f"{db}Host") or None,
            port=int(port) if port else None,
            database=get(f"{db}Database") or None,
            db_instance=get(f"{db}DbInstance") or None,
            db_cluster=get(f"{db}DbCluster") or None,
        )
        if spec.db_instance and spec.db_cluster:
            raise ValueError(f"context {db}DbInstance and {db}DbCluster: give one of them")
        for name, ident in (
            (f"{db}DbInstance", spec.db_instance),
            (f"{db}DbCluster", spec.db_cluster),
        ):
            if ident and not _DB_IDENTIFIER.match(ident):
                raise ValueError(f"context {name}={ident!r} is not an RDS identifier")
        if spec.host and (spec.db_instance or spec.db_cluster):
            raise ValueError(
                f"context {db}Host with {db}DbInstance/{db}DbCluster: the endpoint comes "
                "from one place; give either the host or the identifier"
            )
        if spec.port is not None and not 1 <= spec.port <= 65535:
            raise ValueError(f"context {db}Port must be a TCP port (1-65535)")
        return spec

    def environment(self, role: str) -> dict[str, str]:
        """The variables behind the runtime's `<role>_db_*` settings (pipeline/settings.py),
        for `role` "source" or "warehouse"."""
        values = {
            "host": self.host,
            "port": str(self.port) if self.port else None,
            "name": self.database,
            "instance": self.db_instance,
            "cluster": self.db_cluster,
        }
        return {env_name(f"{role}_db_{k}"): v for k, v in values.items() if v}


def _as_list(value: Any) -> list[str]:
    """Context given on the command line arrives as text: accept JSON lists or commas."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return [str(v) for v in json.loads(text)]
        return [v.strip() for v in text.split(",") if v.strip()]
    return [str(v) for v in value]


def _positive(value: Any, key: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"context {key} must be at least 1, got {number}")
    return number


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the stack needs to know about its environment."""

    prefix: str
    schedule_expression: str
    schedule_enabled: bool
    source: DatabaseSpec
    warehouse: DatabaseSpec
    vpc_id: str | None
    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    alert_email: str | None
    architecture: str
    extract_concurrency: int
    extract_max_rows: int
    retention_days: int
    extract_max_invocations: int
    transform_max_runs: int
    log_retention_days: int
    freshness_hours: int
    report_enabled: bool
    stack_name: str

    @property
    def source_secret(self) -> str:
        return self.source.secret.value

    @property
    def warehouse_secret(self) -> str:
        return self.warehouse.secret.value

    @property
    def lock_file(self) -> str:
        """The runtime lock the image installs: built on, and for, the target architecture."""
        return f"requirements/lambda-{self.architecture}.lock"

    @classmethod
    def from_context(cls, node: Node) -> PipelineConfig:
        def get(key: str) -> Any:
            value = node.try_get_context(key)
            # Unset CI variables arrive as "": they mean "use the default" too.
            return DEFAULTS.get(key) if value is None or value == "" else value

        arch = str(get("architecture"))
        if arch not in ARCHITECTURES:
            raise ValueError(f"context architecture={arch!r}: use one of {ARCHITECTURES}")
        vpc_id = get("vpcId") or None
        subnets = tuple(_as_list(get("subnetIds")))
        groups = tuple(_as_list(get("securityGroupIds")))
        if vpc_id and not subnets:
            raise ValueError("context vpcId needs subnetIds (private subnets with a route out)")
        if (subnets or groups) and not vpc_id:
            raise ValueError("context subnetIds/securityGroupIds need vpcId")
        concurrency = int(get("extractConcurrency"))
        if not 1 <= concurrency <= 40:
            raise ValueError("context extractConcurrency must be between 1 and 40")
        transform_max_runs = int(get("transformMaxRuns"))
        if not 1 <= transform_max_runs <= 100:
            raise ValueError("context transformMaxRuns must be between 1 and 100")
        extract_max_invocations = int(get("extractMaxInvocations"))
        if not 1 <= extract_max_invocations <= 100:
            raise ValueError("context extractMaxInvocations must be between 1 and 100")
        return cls(
            prefix=str(get("prefix")),
            schedule_expression=str(get("scheduleExpression")),
            schedule_enabled=_as_bool(get("scheduleEnabled")),
            source=DatabaseSpec.from_context("source", get),
            warehouse=DatabaseSpec.from_context("warehouse", get),
            vpc_id=vpc_id,
            subnet_ids=subnets,
            security_group_ids=groups,
            alert_email=get("alertEmail") or None,
            architecture=arch,
            extract_concurrency=concurrency,
            extract_max_rows=int(get("extractMaxRows")),
            retention_days=_positive(get("retentionDays"), "retentionDays"),
            extract_max_invocations=extract_max_invocations,
            transform_max_runs=transform_max_runs,
            log_retention_days=int(get("logRetentionDays")),
            freshness_hours=int(get("freshnessHours")),
            report_enabled=_as_bool(get("reportEnabled")),
            stack_name=str(get("stackName")),
        )
