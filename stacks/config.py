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

from pipeline.settings import Settings

_SETTINGS = Settings()
DEFAULTS: dict[str, Any] = {
    "prefix": "totesys-etl",
    "scheduleExpression": "rate(30 minutes)",
    "scheduleEnabled": True,
    "sourceSecret": "totesys-etl/totesys",
    "warehouseSecret": "totesys-etl/warehouse",
    "vpcId": None,
    "subnetIds": [],
    "securityGroupIds": [],
    "alertEmail": None,
    "architecture": "arm64",
    "extractConcurrency": 4,
    "extractMaxRows": _SETTINGS.extract_max_rows,  # the pipeline's own defaults: one value
    "retentionDays": _SETTINGS.retention_days,
    "transformMaxRuns": 20,
    "logRetentionDays": 90,
    "freshnessHours": 6,
    "reportEnabled": False,
    "stackName": "TotesysEtl",
}

ARCHITECTURES = ("arm64", "x86_64")
_COMPLETE_SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:secretsmanager:[^:]+:\d{12}:secret:.+-[A-Za-z0-9]{6}$"
)


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
    source_secret: str
    warehouse_secret: str
    vpc_id: str | None
    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    alert_email: str | None
    architecture: str
    extract_concurrency: int
    extract_max_rows: int
    retention_days: int
    transform_max_runs: int
    log_retention_days: int
    freshness_hours: int
    report_enabled: bool
    stack_name: str

    @staticmethod
    def is_complete_secret_arn(value: str) -> bool:
        """A full ARN (with the 6-character suffix) can be granted exactly; a name cannot."""
        return bool(_COMPLETE_SECRET_ARN.match(value))

    @property
    def lock_file(self) -> str:
        """The runtime lock the image installs: built on, and for, the target architecture."""
        return f"requirements/lambda-{self.architecture}.lock"

    @classmethod
    def from_context(cls, node: Node) -> PipelineConfig:
        def get(key: str) -> Any:
            value = node.try_get_context(key)
            # Unset CI variables arrive as "": they mean "use the default" too.
            return DEFAULTS[key] if value is None or value == "" else value

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
        return cls(
            prefix=str(get("prefix")),
            schedule_expression=str(get("scheduleExpression")),
            schedule_enabled=_as_bool(get("scheduleEnabled")),
            source_secret=str(get("sourceSecret")),
            warehouse_secret=str(get("warehouseSecret")),
            vpc_id=vpc_id,
            subnet_ids=subnets,
            security_group_ids=groups,
            alert_email=get("alertEmail") or None,
            architecture=arch,
            extract_concurrency=concurrency,
            extract_max_rows=int(get("extractMaxRows")),
            retention_days=_positive(get("retentionDays"), "retentionDays"),
            transform_max_runs=transform_max_runs,
            log_retention_days=int(get("logRetentionDays")),
            freshness_hours=int(get("freshnessHours")),
            report_enabled=_as_bool(get("reportEnabled")),
            stack_name=str(get("stackName")),
        )
