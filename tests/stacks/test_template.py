"""Assertions on the synthesized template: what each resource must be, not just that it exists."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match

from pipeline.settings import Settings
from tests.stacks.synth import Assembly

HANDLERS = {
    "extract": "pipeline.handlers.extract_handler",
    "transform": "pipeline.handlers.transform_handler",
    "load": "pipeline.handlers.load_handler",
    "alert": "pipeline.handlers.alert_handler",
}


def functions_by_step(assembly: Assembly) -> dict[str, tuple[str, dict[str, Any]]]:
    out = {}
    for logical_id, fn in assembly.resources("AWS::Lambda::Function").items():
        command = fn["Properties"]["ImageConfig"]["Command"]
        step = next(s for s, h in HANDLERS.items() if command == [h])
        out[step] = (logical_id, fn)
    return out


def role_statements(assembly: Assembly, role_logical_id: str) -> list[dict[str, Any]]:
    """Every statement of every inline policy attached to the role."""
    statements = []
    for policy in assembly.resources("AWS::IAM::Policy").values():
        if {"Ref": role_logical_id} in policy["Properties"]["Roles"]:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def grants(statements: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(action, resource) pairs with resources as compact text, for exact comparisons."""
    pairs = set()
    for st in statements:
        assert st["Effect"] == "Allow"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for action in actions:
            for resource in resources:
                pairs.add((action, compact(resource)))
    return pairs


def compact(value: Any) -> str:
    """`{"Fn::GetAtt": ["X", "Arn"]}` -> `X.Arn`, joins concatenated, pseudo refs kept."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"{value['Ref']}"
    if "Fn::GetAtt" in value:
        return ".".join(value["Fn::GetAtt"])
    if "Fn::Join" in value:
        return value["Fn::Join"][0].join(compact(v) for v in value["Fn::Join"][1])
    raise AssertionError(f"unexpected intrinsic {value}")


def logical_id(assembly: Assembly, type_: str, prefix: str) -> str:
    [found] = [k for k in assembly.resources(type_) if k.startswith(prefix)]
    return found


# -- data lake -------------------------------------------------------------------------
@pytest.mark.parametrize("zone", ["LakeIngestion", "LakeProcessed"])
def test_lake_buckets_are_private_encrypted_versioned_logged_and_retained(assembly, zone):
    name = logical_id(assembly, "AWS::S3::Bucket", zone)
    bucket = assembly.template["Resources"][name]
    props = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain"
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    [sse] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    [rule] = [r for r in props["LifecycleConfiguration"]["Rules"] if "Prefix" not in r]
    assert rule["Status"] == "Enabled" and rule["NoncurrentVersionExpiration"]["NoncurrentDays"] > 0
    access_logs = logical_id(assembly, "AWS::S3::Bucket", "LakeAccessLogs")
    assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": access_logs}


def test_only_the_ingestion_zones_run_keyed_records_expire_after_the_retention_period(assembly):
    """Replay manifests, attempt, resume and reconciliation records: the lifecycle rules
    delete them, the same number of days the functions are told (data and batch logs have
    no such rule)."""
    rules = {}
    for zone in ("LakeIngestion", "LakeProcessed"):
        bucket = assembly.template["Resources"][logical_id(assembly, "AWS::S3::Bucket", zone)]
        rules[zone] = {
            r["Prefix"]: r["ExpirationInDays"]
            for r in bucket["Properties"]["LifecycleConfiguration"]["Rules"]
            if "Prefix" in r and r["Status"] == "Enabled"
        }
    days = Settings().retention_days
    assert rules == {
        "LakeIngestion": {
            "_manifests/": days,
            "_attempts/": days,
            "_resume/": days,
            "_reconcile_runs/": days,
        },
        "LakeProcessed": {},
    }
    for step in ("extract", "transform"):
        _, fn = functions_by_step(assembly)[step]
        assert fn["Properties"]["Environment"]["Variables"]["RETENTION_DAYS"] == str(days)
    _, extract = functions_by_step(assembly)["extract"]
    env = extract["Properties"]["Environment"]["Variables"]
    assert env["EXTRACT_MAX_ROWS"] == str(Settings().extract_max_rows)  # as the local runner


def test_every_bucket_denies_requests_without_tls(assembly):
    buckets = set(assembly.resources("AWS::S3::Bucket"))
    enforced = set()
    for policy in assembly.resources("AWS::S3::BucketPolicy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            if st["Effect"] == "Deny" and st.get("Condition") == {
                "Bool": {"aws:SecureTransport": "false"}
            }:
                enforced.add(policy["Properties"]["Bucket"]["Ref"])
    assert enforced == buckets


# -- functions and the image -----------------------------------------------------------
def test_the_image_functions_share_one_image_and_name_real_handlers(assembly):
    fns = functions_by_step(assembly)
    assert set(fns) == set(HANDLERS)
    uris = {json.dumps(fn["Properties"]["Code"]["ImageUri"]) for _, fn in fns.values()}
    assert len(uris) == 1
    for _, fn in fns.values():
        assert fn["Properties"]["PackageType"] == "Image"
        module, _, name = fn["Properties"]["ImageConfig"]["Command"][0].rpartition(".")
        assert callable(getattr(importlib.import_module(module), name))
    manifest = json.loads((assembly.outdir / "TotesysEtl.assets.json").read_text())
    [image] = manifest["dockerImages"].values()
    assert image["source"]["dockerFile"] == "docker/Dockerfile"
    assert image["source"]["platform"] == "linux/arm64"
    assert image["source"]["dockerBuildArgs"] == {"LOCK_FILE": "requirements/lambda-arm64.lock"}


def test_image_asset_holds_only_the_runtime_code_and_locks(assembly):
    manifest = json.loads((assembly.outdir / "TotesysEtl.assets.json").read_text())
    [image] = manifest["dockerImages"].values()
    staged = assembly.outdir / image["source"]["directory"]
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "docker/Dockerfile" in files
    assert "pipeline/handlers.py" in files and "pipeline/catalog.py" in files
    assert {"requirements/lambda-arm64.lock", "requirements/lambda-x86_64.lock"} <= files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    allowed = {"docker", "pipeline", "requirements", ".dockerignore"}
    assert not [f for f in files if f.split("/")[0] not in allowed]
    assert "requirements/dev.lock" not in files


def test_dockerfile_builds_on_the_lambda_python_base_with_the_runtime_lock():
    text = (Path(__file__).parents[2] / "docker" / "Dockerfile").read_text()
    assert "FROM public.ecr.aws/lambda/python:3.12" in text
    assert "ARG LOCK_FILE=requirements/lambda-arm64.lock" in text
    assert "-r /tmp/requirements.lock" in text and "--platform" not in text
    assert "COPY pipeline/ ${LAMBDA_TASK_ROOT}/pipeline/" in text


@pytest.mark.parametrize(
    ("step", "memory", "ephemeral"),
    [("extract", 1024, 512), ("transform", 3008, 2048), ("load", 2048, 512)],
)
def test_function_sizing_tracing_logging(assembly, step, memory, ephemeral):
    _, fn = functions_by_step(assembly)[step]
    props = fn["Properties"]
    assert props["MemorySize"] == memory
    assert props["Timeout"] == 900
    assert props["EphemeralStorage"] == {"Size": ephemeral}
    assert props["Architectures"] == ["arm64"]
    assert props["TracingConfig"] == {"Mode": "Active"}
    group = props["LoggingConfig"]["LogGroup"]["Ref"]
    assert assembly.template["Resources"][group]["Properties"]["RetentionInDays"] == 90


@pytest.mark.parametrize(
    ("step", "present", "absent"),
    [
        (
            "extract",
            {"INGEST_URL", "TOTESYS_SECRET_ARN"},
            {"PROCESSED_URL", "WAREHOUSE_SECRET_ARN"},
        ),
        (
            "transform",
            {"INGEST_URL", "PROCESSED_URL"},
            {"TOTESYS_SECRET_ARN", "WAREHOUSE_SECRET_ARN"},
        ),
        ("load", {"PROCESSED_URL", "WAREHOUSE_SECRET_ARN"}, {"INGEST_URL", "TOTESYS_SECRET_ARN"}),
    ],
)
def test_each_function_gets_only_the_settings_it_needs(assembly, step, present, absent):
    _, fn = functions_by_step(assembly)[step]
    env = fn["Properties"]["Environment"]["Variables"]
    assert present <= set(env) and not absent & set(env)
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "TotesysEtl"


# -- least privilege (R19) ---------------------------------------------------------------
def _expected_function_grants(assembly: Assembly, step: str) -> set[tuple[str, str]]:
    ingest = logical_id(assembly, "AWS::S3::Bucket", "LakeIngestion")
    processed = logical_id(assembly, "AWS::S3::Bucket", "LakeProcessed")
    _, fn = functions_by_step(assembly)[step]
    log_group = fn["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
    secret = (
        "arn:AWS::Partition:secretsmanager:AWS::Region:AWS::AccountId:secret:totesys-etl/{}-??????"
    )

    def read(bucket: str) -> set[tuple[str, str]]:
        return {("s3:ListBucket", f"{bucket}.Arn"), ("s3:GetObject", f"{bucket}.Arn/*")}

    def write(bucket: str) -> set[tuple[str, str]]:
        return {
            (a, f"{bucket}.Arn/*")
            for a in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
        }

    def secret_read(name: str) -> set[tuple[str, str]]:
        return {
            (a, secret.format(name))
            for a in ("secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret")
        }

    common = {
        ("logs:CreateLogStream", f"{log_group}.Arn"),
        ("logs:PutLogEvents", f"{log_group}.Arn"),
        ("xray:PutTraceSegments", "*"),
        ("xray:PutTelemetryRecords", "*"),
    }
    specific = {
        "extract": read(ingest) | write(ingest) | secret_read("totesys"),
        "transform": read(ingest) | read(processed) | write(processed),
        "load": read(processed) | secret_read("warehouse"),
    }[step]
    return common | specific


@pytest.mark.parametrize("step", ["extract", "transform", "load"])
def test_each_function_role_reaches_only_its_zones_and_its_secret(assembly, step):
    _, fn = functions_by_step(assembly)[step]
    role = fn["Properties"]["Role"]["Fn::GetAtt"][0]
    assert grants(role_statements(assembly, role)) == _expected_function_grants(assembly, step)
    assert "ManagedPolicyArns" not in assembly.template["Resources"][role]["Properties"]


def test_state_machine_role_invokes_only_its_functions_and_publishes_only_to_its_topic(assembly):
    _, machine = assembly.one("AWS::StepFunctions::StateMachine")
    role = machine["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    pairs = grants(role_statements(assembly, role))
    fn_ids = {fid for fid, _ in functions_by_step(assembly).values()}
    invoke = {r for a, r in pairs if a == "lambda:InvokeFunction"}
    assert invoke == {f"{f}.Arn" for f in fn_ids if "Alert" not in f} | {
        f"{f}.Arn:*" for f in fn_ids if "Alert" not in f
    }
    services = {a.split(":")[0] for a, _ in pairs}
    assert services == {"lambda", "logs", "xray"}  # alerts are the rule's, not states'
    # Wildcard resources only for the delivery/tracing APIs that have no resource ARNs.
    assert {a.split(":")[0] for a, r in pairs if r == "*"} == {"logs", "xray"}


def test_scheduler_role_can_only_start_this_state_machine(assembly):
    _, schedule = assembly.one("AWS::Scheduler::Schedule")
    role = schedule["Properties"]["Target"]["RoleArn"]["Fn::GetAtt"][0]
    machine_id = assembly.one("AWS::StepFunctions::StateMachine")[0]
    assert grants(role_statements(assembly, role)) == {("states:StartExecution", machine_id)}


# -- state machine -----------------------------------------------------------------------
def test_state_machine_is_standard_logs_everything_without_data_and_traces(template):
    template.has_resource_properties(
        "AWS::StepFunctions::StateMachine",
        {
            "StateMachineType": "STANDARD",
            "LoggingConfiguration": Match.object_like(
                {"Level": "ALL", "IncludeExecutionData": False}
            ),
            "TracingConfiguration": {"Enabled": True},
        },
    )


# -- schedule ----------------------------------------------------------------------------
def test_schedule_starts_a_named_execution_every_30_minutes_without_a_flexible_window(assembly):
    _, schedule = assembly.one("AWS::Scheduler::Schedule")
    props = schedule["Properties"]
    assert props["ScheduleExpression"] == "rate(30 minutes)"
    assert props["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert props["State"] == "ENABLED"
    target = props["Target"]
    assert compact(target["Arn"]).endswith(":scheduler:::aws-sdk:sfn:startExecution")
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    request = json.loads(compact(target["Input"]))
    assert request["StateMachineArn"] == assembly.one("AWS::StepFunctions::StateMachine")[0]
    assert request["Name"] == "<aws.scheduler.execution-id>"
    assert json.loads(request["Input"]) == {
        "trigger": "schedule",
        "scheduled_time": "<aws.scheduler.scheduled-time>",
    }


# -- monitoring --------------------------------------------------------------------------
def _alarms(assembly: Assembly) -> dict[str, dict[str, Any]]:
    return {
        a["Properties"]["AlarmName"].removeprefix("totesys-etl-"): a["Properties"]
        for a in assembly.resources("AWS::CloudWatch::Alarm").values()
    }


def test_alarms_cover_failures_timeouts_errors_throttles_and_freshness(assembly):
    alarms = _alarms(assembly)
    assert set(alarms) == {
        "ExecutionsFailed",
        "ExecutionsTimedOut",
        "DataFreshness",
        *(f"{s}{k}" for s in ("Extract", "Transform", "Load") for k in ("Errors", "Throttles")),
    }
    topic = {"Ref": assembly.one("AWS::SNS::Topic")[0]}
    # One failure, one alert: only DataFreshness notifies (the rule reports failures).
    assert {n for n, a in alarms.items() if a.get("AlarmActions")} == {"DataFreshness"}
    assert alarms["DataFreshness"]["AlarmActions"] == [topic]
    assert alarms["ExecutionsFailed"]["MetricName"] == "ExecutionsFailed"
    assert alarms["ExecutionsTimedOut"]["MetricName"] == "ExecutionsTimedOut"
    fresh = alarms["DataFreshness"]
    assert fresh["MetricName"] == "ExecutionsSucceeded"
    assert fresh["Statistic"] == "Sum" and fresh["Period"] == 6 * 3600
    assert fresh["ComparisonOperator"] == "LessThanThreshold" and fresh["Threshold"] == 1
    assert fresh["TreatMissingData"] == "breaching"


def test_alert_topic_is_encrypted_and_tls_only(assembly):
    _, topic = assembly.one("AWS::SNS::Topic")
    key_id = assembly.one("AWS::KMS::Key")[0]
    assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    [policy] = assembly.resources("AWS::SNS::TopicPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in statements
    )


def test_dashboard_shows_executions_durations_and_rows_per_table(assembly):
    _, dashboard = assembly.one("AWS::CloudWatch::Dashboard")
    body = compact(dashboard["Properties"]["DashboardBody"])
    for needle in (
        "ExecutionsSucceeded",
        "ExecutionsFailed",
        "ExecutionTime",
        "Duration",
        "RowsExtracted",
        "RowsLoaded",
        "RowsQuarantined",
        "TotesysEtl",
    ):
        assert needle in body, needle


# -- redeployable, alerting, least privilege for the alert path ---------------------------
def test_no_retained_resource_has_a_fixed_name(assembly):
    """A retained named resource survives a rolled-back create or `cdk destroy` and makes
    the next deploy fail with "already exists"."""
    name_keys = ("Name", "LogGroupName", "BucketName", "TopicName", "StateMachineName")
    for logical_id, resource in assembly.template["Resources"].items():
        if resource.get("DeletionPolicy") in ("Retain", "RetainExceptOnCreate"):
            named = [k for k in resource.get("Properties", {}) if k in name_keys]
            assert not named, (logical_id, named)
    for group in assembly.resources("AWS::Logs::LogGroup").values():
        assert group["DeletionPolicy"] == "Delete"


def test_a_rule_on_every_unsuccessful_end_invokes_the_alert_function(assembly):
    _, rule = assembly.one("AWS::Events::Rule")
    pattern = rule["Properties"]["EventPattern"]
    machine = assembly.one("AWS::StepFunctions::StateMachine")[0]
    assert pattern == {
        "source": ["aws.states"],
        "detail-type": ["Step Functions Execution Status Change"],
        "detail": {
            "status": ["FAILED", "TIMED_OUT", "ABORTED"],
            "stateMachineArn": [{"Ref": machine}],
        },
    }
    [target] = rule["Properties"]["Targets"]
    alert_id, alert = functions_by_step(assembly)["alert"]
    assert target["Arn"] == {"Fn::GetAtt": [alert_id, "Arn"]}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    topic = assembly.one("AWS::SNS::Topic")[0]
    assert alert["Properties"]["Environment"]["Variables"]["ALERT_TOPIC_ARN"] == {"Ref": topic}
    [invoke_config] = [
        c
        for c in assembly.resources("AWS::Lambda::EventInvokeConfig").values()
        if c["Properties"]["FunctionName"] == {"Ref": alert_id}
    ]
    props = invoke_config["Properties"]
    assert props["MaximumRetryAttempts"] == 2
    assert props["DestinationConfig"]["OnFailure"]["Destination"] == {"Ref": topic}
    role = alert["Properties"]["Role"]["Fn::GetAtt"][0]
    pairs = grants(role_statements(assembly, role))
    assert ("sns:Publish", topic) in pairs
    assert {a for a, _ in pairs if a.startswith("states:")} == {"states:GetExecutionHistory"}
