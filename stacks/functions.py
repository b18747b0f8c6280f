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
from typing import Any

from aws_cdk import (
    Annotations,
    ArnFormat,
    CfnOutput,
    Duration,
    IgnoreMode,
    RemovalPolicy,
    Size,
    Stack,
)
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from pipeline import layout
from stacks.alerting import Alerts
from stacks.config import DatabaseSpec, PipelineConfig, SecretSpec
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
# Not a step: composes and publishes the alert for an unsuccessful execution.
ALERT = StepSpec("alert", "pipeline.handlers.alert_handler", 256, Duration.minutes(2))


def secret_ref(scope: Construct, construct_id: str, spec: SecretSpec) -> secretsmanager.ISecret:
    """An existing secret: a complete ARN is granted exactly, a partial ARN or a name as
    `<it>-??????` (the suffix Secrets Manager adds), never as a bare name that matches
    nothing (which would deploy and then fail every run with AccessDenied)."""
    secret = secretsmanager.Secret
    if spec.form == "complete-arn":
        return secret.from_secret_complete_arn(scope, construct_id, spec.value)
    if spec.form == "partial-arn":
        return secret.from_secret_partial_arn(scope, construct_id, spec.value)
    return secret.from_secret_name_v2(scope, construct_id, spec.value)


# Lambda creates and removes its network interfaces with the execution role; the AWS
# managed AWSLambdaVPCAccessExecutionRole also grants logs on every group, so the role
# gets only these (Describe* have no resource-level permissions).
ENI_DESCRIBE = ("ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets")
ENI_MANAGE = (
    "ec2:CreateNetworkInterface",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)


class PipelineFunctions(Construct):
    """The image asset, the extract/transform/load functions and their roles."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PipelineConfig,
        lake: DataLake,
        alerts: Alerts,
    ) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        self.source_secret = secret_ref(self, "SourceSecret", config.source.secret)
        self.warehouse_secret = secret_ref(self, "WarehouseSecret", config.warehouse.secret)
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
                **config.source.environment("source"),
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
            {
                "PROCESSED_URL": processed_url,
                "WAREHOUSE_SECRET_ARN": config.warehouse_secret,
                **config.warehouse.environment("warehouse"),
            },
        )
        # R19: each role reaches only its own zone(s) and its own secret.
        grant_read(self.extract.role, lake.ingestion)
        grant_write(self.extract.role, lake.ingestion)
        self.source_secret.grant_read(self.extract)
        grant_read(self.transform.role, lake.ingestion)
        grant_read(self.transform.role, lake.processed)
        grant_write(self.transform.role, lake.processed)
        grant_read(self.load.role, lake.processed)
        self.warehouse_secret.grant_read(self.load)
        self.report: lambda_.DockerImageFunction | None = None
        if config.report_enabled:
            self.report = self._function(
                REPORT_STEP,
                {
                    "PROCESSED_URL": processed_url,
                    "WAREHOUSE_SECRET_ARN": config.warehouse_secret,
                    **config.warehouse.environment("warehouse"),
                },
            )
            grant_report(self.report.role, lake.processed)
            self.warehouse_secret.grant_read(self.report)
            grant_endpoint_lookup(self.report.role, config.warehouse)
        self.alert = self._function(
            ALERT,
            {"ALERT_TOPIC_ARN": alerts.topic.topic_arn, "PIPELINE_NAME": config.prefix},
            network=False,  # reaches only Step Functions and SNS: no VPC needed
            # Lambda retries an event twice; then the on-failure destination publishes
            # the raw event (naming the execution) to the topic: no failure goes unreported.
            asynchronous={
                "retry_attempts": 2,
                "max_event_age": Duration.hours(6),
                "on_failure": destinations.SnsDestination(alerts.topic),
            },
        )
        self._alert_permissions(alerts)
        grant_endpoint_lookup(self.extract.role, config.source)
        grant_endpoint_lookup(self.load.role, config.warehouse)

    @property
    def all(self) -> tuple[lambda_.DockerImageFunction, ...]:
        """The three pipeline steps (the optional report function is `report`; the alert
        function is not a step)."""
        return (self.extract, self.transform, self.load)

    @property
    def executions_arn(self) -> str:
        """Any execution of this pipeline's state machine (the alert function reads one)."""
        return Stack.of(self).format_arn(
            service="states",
            resource="execution",
            resource_name=f"{self.config.prefix}:*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    @property
    def network_interfaces_arn(self) -> str:
        """Any network interface in this account and region (ids are not known in advance)."""
        return Stack.of(self).format_arn(
            service="ec2",
            resource="network-interface",
            resource_name="*",
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )

    def _alert_permissions(self, alerts: Alerts) -> None:
        """Read this state machine's execution histories; publish to the alert topic."""
        role = self.alert.role
        assert role is not None
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["states:GetExecutionHistory"], resources=[self.executions_arn]
            )
        )
        alerts.topic.grant_publish(role)  # with the topic key's GenerateDataKey*/Decrypt

    def _vpc_settings(self) -> dict[str, Any]:
        """Subnets and security groups; without `securityGroupIds`, one shared group is
        created (all outbound, no inbound) and exported, for the databases' ingress rules."""
        cfg = self.config
        if not cfg.vpc_id:
            return {}
        vpc = ec2.Vpc.from_vpc_attributes(
            self,
            "Vpc",
            vpc_id=cfg.vpc_id,
            availability_zones=Stack.of(self).availability_zones,
        )
        self.subnets = [
            ec2.Subnet.from_subnet_id(self, f"Subnet{i}", sid)
            for i, sid in enumerate(cfg.subnet_ids)
        ]
        for subnet in self.subnets:
            # The functions only attach interfaces to these subnets; nothing here adds routes,
            # so the subnet's route table is never needed.
            Annotations.of(subnet).acknowledge_warning(
                "@aws-cdk/aws-ec2:noSubnetRouteTableId",
                "imported subnets only host the functions' network interfaces; no route is added",
            )
        groups: list[ec2.ISecurityGroup] = [
            ec2.SecurityGroup.from_security_group_id(self, f"SecurityGroup{i}", gid)
            for i, gid in enumerate(cfg.security_group_ids)
        ]
        if not groups:
            created = ec2.SecurityGroup(
                self,
                "FunctionsSecurityGroup",
                vpc=vpc,
                description=(
                    f"{cfg.prefix} Lambda functions - allow TCP 5432 from this group in the "
                    "database security groups"
                ),
                allow_all_outbound=True,
            )
            CfnOutput(
                Stack.of(self),
                "FunctionsSecurityGroupId",
                value=created.security_group_id,
                description="Allow TCP 5432 from this group in both databases' security groups",
            )
            groups = [created]
        self.security_groups = groups
        return {
            "vpc": vpc,
            "vpc_subnets": ec2.SubnetSelection(subnets=self.subnets),
            "security_groups": groups,
        }

    def _function(
        self,
        step: StepSpec,
        environment: dict[str, str],
        *,
        network: bool = True,
        asynchronous: dict[str, Any] | None = None,
    ) -> lambda_.DockerImageFunction:
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
        if network and self._network:
            self._grant_network_interfaces(role)
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
            # Step Functions owns the steps' retries; an async retry would double them.
            **(asynchronous or {"retry_attempts": 0}),
            environment={
                "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
                **environment,
            },
            **(self._network if network else {}),
        )

    def _grant_network_interfaces(self, role: iam.Role) -> None:
        """An inline ENI policy: create interfaces only in the given subnets and groups."""
        stack = Stack.of(self)

        def ec2_arn(resource: str, name: str) -> str:
            return stack.format_arn(
                service="ec2", resource=resource, resource_name=name,
                arn_format=ArnFormat.SLASH_RESOURCE_NAME,
            )  # fmt: skip

        interfaces = self.network_interfaces_arn
        role.add_to_policy(iam.PolicyStatement(actions=list(ENI_DESCRIBE), resources=["*"]))
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["ec2:CreateNetworkInterface"],
                resources=[
                    interfaces,
                    *(ec2_arn("subnet", s.subnet_id) for s in self.subnets),
                    *(ec2_arn("security-group", g.security_group_id) for g in self.security_groups),
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=list(ENI_MANAGE[1:]), resources=[interfaces])
        )


def grant_endpoint_lookup(role: iam.IRole | None, database: DatabaseSpec) -> None:
    """Describe the one RDS instance or cluster whose endpoint the function reads."""
    assert role is not None
    if not (database.db_instance or database.db_cluster):
        return
    stack = Stack.of(role)
    kind, action, name = (
        ("db", "rds:DescribeDBInstances", database.db_instance)
        if database.db_instance
        else ("cluster", "rds:DescribeDBClusters", database.db_cluster)
    )
    arn = stack.format_arn(
        service="rds", resource=kind, resource_name=name, arn_format=ArnFormat.COLON_RESOURCE_NAME
    )
    role.add_to_principal_policy(iam.PolicyStatement(actions=[action], resources=[arn]))


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
