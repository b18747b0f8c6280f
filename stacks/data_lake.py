"""The data lake: an ingestion bucket (raw Parquet) and a processed bucket (star schemas).

Both are private, encrypted, TLS-only and versioned (a bad write can be rolled back;
noncurrent versions expire so versioning does not grow the bill forever), and are
retained when the stack is deleted: the lake is the pipeline's record of what it saw.
A third bucket receives their S3 server access logs.

Retention (docs/CONTRACTS.md, *Retention*): the ingestion zone's run-keyed records (replay
manifests, attempt and resume records) only matter for a while, so lifecycle rules expire
them after the retention period, with no request from the pipeline. Data and the batch log
have no such rule; the processed zone is cleaned by the transform, which knows what is
still referenced.
"""

from __future__ import annotations

from aws_cdk import CfnResource, Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from pipeline.layout import INGEST_EXPIRING

NONCURRENT_VERSION_DAYS = 30
ACCESS_LOG_DAYS = 365


def skip_checkov(construct: Construct, **reasons: str) -> None:
    """Skip checkov findings on this one resource, each with its reason (.checkov.yaml)."""
    cfn = construct.node.default_child
    assert isinstance(cfn, CfnResource)
    cfn.add_metadata(
        "checkov", {"skip": [{"id": check, "comment": why} for check, why in reasons.items()]}
    )


class DataLake(Construct):
    """Ingestion and processed zones plus their access-log bucket."""

    def __init__(self, scope: Construct, construct_id: str, *, retention_days: int) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            # Log delivery only supports SSE-S3 on the target bucket.
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(ACCESS_LOG_DAYS))
            ],
        )
        expiring = [
            s3.LifecycleRule(
                id=f"expire-{prefix.strip('_/')}-after-retention",
                prefix=prefix,
                expiration=Duration.days(retention_days),
            )
            for prefix in INGEST_EXPIRING
        ]
        skip_checkov(
            self.access_logs,
            CKV_AWS_18="the access-log target itself: logging it into itself would loop",
            CKV_AWS_21="only S3 log delivery writes it, expired after a year: nothing to roll back",
        )
        self.ingestion = self._zone("Ingestion", "ingestion/", expiring)
        self.processed = self._zone("Processed", "processed/")

    def _zone(
        self, construct_id: str, log_prefix: str, extra: list[s3.LifecycleRule] | None = None
    ) -> s3.Bucket:
        return s3.Bucket(
            self,
            construct_id,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix=log_prefix,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-noncurrent-versions",
                    noncurrent_version_expiration=Duration.days(NONCURRENT_VERSION_DAYS),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                ),
                *(extra or []),
            ],
        )
