"""The step Lambdas: one container image, one command and one least-privilege role each.

One `DockerImageAsset` is built once (docker/Dockerfile, repository root as context) and
each function points at the same image with its own `CMD`, so the three steps always run
the same code. Sizing (measured locally with benchmarks/, see README.md):

- extract, 1024 MB / 15 min: streams one table in Arrow batches, so memory stays bounded
  whatever the table size; a table too big for 15 minutes continues in a further
  invocation (`more`), so more memory would only buy idle RAM.
- transform, 3008 MB / 15 min: Polars joins a whole batch of new rows across tables in
  memory; Lambda CPU grows with memory (about 2 vCPUs here), and Polars uses them.
- load, 2048 MB / 15 min: binary COPY of the processed Parquet into staging tables, then
  one transaction; the database does the heavy lifting.
- report (only with context `reportEnabled`), 1024 MB / 5 min: the warehouse aggregates,
  the function only draws a few hundred grouped rows into one HTML page.

Concurrency stays unreserved: reserving it fails on new accounts (whose whole limit is
10) and the state machine's Map `maxConcurrency` already bounds the load on the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Duration, IgnoreMode, RemovalPolicy, Size, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from pipeline import layout
from stacks.config import PipelineConfig
from stacks.data_lake import DataLake

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = "docker/Dockerfile"
METRICS_NAMESPACE = "TotesysEtl"
SERVICE_NAME = "totesys-etl"

RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    731: logs.RetentionDays.TWO_YEARS,
}


def retention(days: int) -> logs.RetentionDays:
    try:
        return RETENTION[days]
    except KeyError:
        raise ValueError(f"logRetentionDays={days}: use one of {sorted(RETENTION)}") from None


@dataclass(frozen=True)
class StepSpec:
    """How one step's function is sized and which handler its image CMD runs."""

    name: str
    handler: str
    memory_mb: int
    timeout: Duration
    ephemeral_mb: int = 512


STEPS = (
    StepSpec("extract", "pipeline.handlers.extract_handler", 1024, Duration.minutes(15)),
    StepSpec("transform", "pipeline.handlers.transform_handler", 3008, Duration.minutes(15), 2048),
    StepSpec("load", "pipeline.handlers.load_handler", 2048, Duration.minutes(15)),
)
REPORT_STEP = StepSpec("report", "pipeline.handlers.report_handler", 1024, Duration.minutes(5))
# What the report function may read in the processed bucket (quarantine files and the
# manifests that commit them) and the one prefix it writes (docs/CONTRACTS.md).
REPORT_READS = (layout.QUARANTINE, layout.MANIFESTS)
REPORT_WRITES = layout.REPORTS


def secret_ref(scope: Construct, construct_id: str, value: str) -> secretsmanager.ISecret:
    """An existing secret from a complete ARN (exact grant) or a name (grant `name-??????`)."""
    if PipelineConfig.is_complete_secret_arn(value):
        return secretsmanager.Secret.from_secret_complete_arn(scope, construct_id, value)
    return secretsmanager.Secret.from_secret_name_v2(scope, construct_id, value)


class PipelineFunctions(Construct):
    """The image asset, the extract/transform/load functions and their roles."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: PipelineConfig, lake: DataLake
    ) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        self.source_secret = secret_ref(self, "SourceSecret", config.source_secret)
        self.warehouse_secret = secret_ref(self, "WarehouseSecret", config.warehouse_secret)
        arm = config.architecture == "arm64"
        self.image = ecr_assets.DockerImageAsset(
            self,
            "Image",
            directory=str(REPO_ROOT),
            file=DOCKERFILE,
            platform=ecr_assets.Platform.LINUX_ARM64 if arm else ecr_assets.Platform.LINUX_AMD64,
            build_args={"LOCK_FILE": config.lock_file},
            ignore_mode=IgnoreMode.DOCKER,
        )
        self._architecture = lambda_.Architecture.ARM_64 if arm else lambda_.Architecture.X86_64
        self._network = self._vpc_settings()

        ingest_url = f"s3://{lake.ingestion.bucket_name}"
        processed_url = f"s3://{lake.processed.bucket_name}"
        spec = {s.name: s for s in STEPS}
        self.extract = self._function(
            spec["extract"],
            {
                "INGEST_URL": ingest_url,
                "TOTESYS_SECRET_ARN": config.source_secret,
                "EXTRACT_MAX_ROWS": str(config.extract_max_rows),
                "RETENTION_DAYS": str(config.retention_days),  # (legacy records it meets)
            },
        )
        self.transform = self._function(
            spec["transform"],
            {
                "INGEST_URL": ingest_url,
                "PROCESSED_URL": processed_url,
                "RETENTION_DAYS": str(config.retention_days),  # (its own housekeeping)
            },
        )
        self.load = self._function(
            spec["load"],
            {"PROCESSED_URL": processed_url, "WAREHOUSE_SECRET_ARN": config.warehouse_secret},
        )
        # R19: each role reaches only its own zone(s) and its own secret.
        grant_read(self.extract.role, lake.ingestion)
        grant_write(self.extract.role, lake.ingestion)
        self.source_secret.grant_read(self.extract.role)
        grant_read(self.transform.role, lake.ingestion)
        grant_read(self.transform.role, lake.processed)
        grant_write(self.transform.role, lake.processed)
        grant_read(self.load.role, lake.processed)
        self.warehouse_secret.grant_read(self.load.role)
        self.report: lambda_.DockerImageFunction | None = None
        if config.report_enabled:
            self.report = self._function(
                REPORT_STEP,
                {"PROCESSED_URL": processed_url, "WAREHOUSE_SECRET_ARN": config.warehouse_secret},
            )
            grant_report(self.report.role, lake.processed)
            self.warehouse_secret.grant_read(self.report.role)

    @property
    def all(self) -> tuple[lambda_.DockerImageFunction, ...]:
        """The three pipeline steps (the optional report function is `report`)."""
        return (self.extract, self.transform, self.load)

    def _vpc_settings(self) -> dict:
        cfg = self.config
        if not cfg.vpc_id:
            return {}
        vpc = ec2.Vpc.from_vpc_attributes(
            self,
            "Vpc",
            vpc_id=cfg.vpc_id,
            availability_zones=Stack.of(self).availability_zones,
        )
        subnets = [
            ec2.Subnet.from_subnet_id(self, f"Subnet{i}", sid)
            for i, sid in enumerate(cfg.subnet_ids)
        ]
        groups = [
            ec2.SecurityGroup.from_security_group_id(self, f"SecurityGroup{i}", gid)
            for i, gid in enumerate(cfg.security_group_ids)
        ]
        settings: dict = {"vpc": vpc, "vpc_subnets": ec2.SubnetSelection(subnets=subnets)}
        if groups:
            settings["security_groups"] = groups
        return settings

    def _function(self, step: StepSpec, environment: dict[str, str]) -> lambda_.DockerImageFunction:
        cfg = self.config
        title = step.name.capitalize()
        log_group = logs.LogGroup(
            self,
            f"{title}Logs",
            log_group_name=f"/aws/lambda/{cfg.prefix}-{step.name}",
            retention=retention(cfg.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            f"{title}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{cfg.prefix} {step.name} step: its own lake zone(s) and secret only",
        )
        # Written by hand instead of AWSLambdaBasicExecutionRole: this log group only.
        log_group.grant_write(role)
        if self._network:
            role.add_managed_policy(
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AWSLambdaVPCAccessExecutionRole"
                )
            )
        return lambda_.DockerImageFunction(
            self,
            title,
            function_name=f"{cfg.prefix}-{step.name}",
            description=f"totesys-etl {step.name} step ({step.handler})",
            code=lambda_.DockerImageCode.from_ecr(
                self.image.repository,
                tag_or_digest=self.image.image_tag,
                cmd=[step.handler],
            ),
            architecture=self._architecture,
            memory_size=step.memory_mb,
            timeout=step.timeout,
            ephemeral_storage_size=Size.mebibytes(step.ephemeral_mb),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            role=role,
            # Step Functions owns retries; an async retry here would double them.
            retry_attempts=0,
            environment={
                "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
                **environment,
            },
            **self._network,
        )


def grant_read(role: iam.IRole | None, bucket: s3.IBucket) -> None:
    """List the bucket and read its objects: nothing else (no ACLs, no tagging, no policy)."""
    assert role is not None
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn])
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects("*")])
    )


def grant_write(role: iam.IRole | None, bucket: s3.IBucket) -> None:
    """Create, replace and delete objects (multipart included) in one bucket."""
    assert role is not None
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            resources=[bucket.arn_for_objects("*")],
        )
    )


def grant_report(role: iam.IRole | None, bucket: s3.IBucket) -> None:
    """Read the quarantine and the manifests, write `reports/`: nothing else of the bucket."""
    assert role is not None
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["s3:ListBucket"],
            resources=[bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in REPORT_READS]}},
        )
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["s3:GetObject"],
            resources=[bucket.arn_for_objects(f"{p}*") for p in REPORT_READS],
        )
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["s3:PutObject"], resources=[bucket.arn_for_objects(f"{REPORT_WRITES}*")]
        )
    )
