"""cdk-nag AwsSolutions (R19): zero unacknowledged findings, every acknowledgement reasoned."""

from __future__ import annotations

import json

import pytest

from tests.stacks.synth import Assembly, synthesize
from tests.statemachine.harness import state_machine_definition

ACK = "aws:cdk:acknowledged-rules"


def acknowledgements(assembly: Assembly) -> dict[str, dict[str, str]]:
    """Construct path -> {rule id: reason}, from the stack's metadata."""
    metadata = json.loads((assembly.outdir / "TotesysEtl.metadata.json").read_text())
    out: dict[str, dict[str, str]] = {}
    for path, entries in metadata.items():
        for entry in entries:
            if entry["type"] == ACK:
                out.setdefault(path, {}).update(entry["data"])
    return out


def test_synth_passes_aws_solutions_with_no_violation(assembly):
    reports = assembly.validation_report.get("pluginReports", [])
    assert all(r["conclusion"] == "success" and not r["violations"] for r in reports), reports


def test_every_acknowledgement_is_scoped_and_has_a_written_reason(assembly):
    acks = acknowledgements(assembly)
    nag = {
        (path, rule): reason
        for path, rules in acks.items()
        for rule, reason in rules.items()
        if rule.startswith("AwsSolutions::")
    }
    assert nag, "expected the IAM5 wildcard acknowledgements"
    for (path, rule), reason in nag.items():
        assert len(reason) > 40, f"{path} {rule}: reason too thin"
        # Only the documented wildcard findings; a blanket rule id is not acceptable.
        assert rule.startswith("AwsSolutions::AwsSolutions-IAM5[Resource::") or rule == (
            "AwsSolutions::AwsSolutions-IAM5[Action::kms:GenerateDataKey*]"
        ), rule
        assert path.endswith("Role"), path


def test_a_new_unreasoned_finding_fails_the_synth(tmp_path):
    """The checks really run: a bucket without access logs or a TLS-only policy is rejected."""
    from aws_cdk import aws_s3 as s3

    from app import build_app

    app = build_app(outdir=str(tmp_path))
    stack = app.node.find_child("TotesysEtl")
    s3.Bucket(stack, "Careless")
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    rules = {
        v["ruleName"]
        for r in report["pluginReports"]
        for v in r["violations"]
        if any("Careless" in c["constructPath"] for c in v["violatingConstructs"])
    }
    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= rules


def test_vpc_and_x86_variant_synthesizes_clean_with_scoped_network_permissions():
    variant = synthesize(
        {
            "vpcId": "vpc-0123456789abcdef0",
            "subnetIds": "subnet-0aaa1111bbbb2222c,subnet-0ddd3333eeee4444f",
            "securityGroupIds": '["sg-0123456789abcdef0"]',
            "warehouseSecret": "arn:aws:secretsmanager:eu-west-2:111122223333:secret:rds!db-1a2b",
            "warehouseDbCluster": "warehouse-cluster",
            "architecture": "x86_64",
            "alertEmail": "data-team@example.com",
            "sourceSecret": "arn:aws:secretsmanager:eu-west-2:111122223333:secret:totesys-AbCdEf",
            "transformMaxRuns": "5",
        }
    )
    reports = variant.validation_report.get("pluginReports", [])
    assert all(r["conclusion"] == "success" for r in reports), reports
    steps = [
        fn
        for fn in variant.resources("AWS::Lambda::Function").values()
        if "alert_handler" not in fn["Properties"]["ImageConfig"]["Command"][0]
    ]
    assert len(steps) == 3
    for fn in steps:
        props = fn["Properties"]
        assert props["Architectures"] == ["x86_64"]
        assert props["VpcConfig"]["SubnetIds"] == [
            "subnet-0aaa1111bbbb2222c",
            "subnet-0ddd3333eeee4444f",
        ]
        assert props["VpcConfig"]["SecurityGroupIds"] == ["sg-0123456789abcdef0"]
    manifest = json.loads((variant.outdir / "TotesysEtl.assets.json").read_text())
    [image] = manifest["dockerImages"].values()
    assert image["source"]["platform"] == "linux/amd64"
    assert image["source"]["dockerBuildArgs"] == {"LOCK_FILE": "requirements/lambda-x86_64.lock"}
    [subscription] = variant.resources("AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Endpoint"] == "data-team@example.com"
    # A complete secret ARN is granted exactly, without the `-??????` suffix wildcard.
    text = json.dumps(variant.template)
    assert "secret:totesys-AbCdEf" in text and "secret:totesys-AbCdEf-??????" not in text
    # A partial ARN is granted with the suffix wildcard, not as a name that matches nothing.
    assert "secret:rds!db-1a2b-??????" in text
    # The cluster's endpoint is read at run time: describe that one cluster only.
    assert "rds:DescribeDBClusters" in text and "cluster:warehouse-cluster" in text
    # No managed VPC policy: the ENI permissions are inline and scoped.
    assert "AWSLambdaVPCAccessExecutionRole" not in text
    assert "ec2:CreateNetworkInterface" in text and "subnet/subnet-0aaa1111bbbb2222c" in text
    # The transform loop's bound follows the setting.
    [choice] = state_machine_definition(variant)["States"]["MoreToTransform"]["Choices"]
    assert choice["And"][1] == {"Variable": "$.transform_call.n", "NumericLessThan": 5}


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"vpcId": "vpc-1"}, "needs subnetIds"),
        ({"subnetIds": "subnet-1"}, "need vpcId"),
        ({"architecture": "arm"}, "architecture"),
        ({"extractConcurrency": 0}, "extractConcurrency"),
        ({"transformMaxRuns": 0}, "transformMaxRuns"),
    ],
)
def test_inconsistent_context_is_rejected_with_a_clear_message(context, message):
    from aws_cdk import App

    from stacks.config import PipelineConfig

    with pytest.raises(ValueError, match=message):
        PipelineConfig.from_context(App(context=context).node)


def test_without_security_groups_one_is_created_and_exported_for_the_ingress_rules():
    variant = synthesize(
        {"vpcId": "vpc-0123456789abcdef0", "subnetIds": "subnet-0aaa1111bbbb2222c"}
    )
    [(group_id, group)] = variant.resources("AWS::EC2::SecurityGroup").items()
    assert "5432" in group["Properties"]["GroupDescription"]
    output = variant.template["Outputs"]["FunctionsSecurityGroupId"]
    assert output["Value"] == {"Fn::GetAtt": [group_id, "GroupId"]}
    for fn in variant.resources("AWS::Lambda::Function").values():
        groups = fn["Properties"].get("VpcConfig", {}).get("SecurityGroupIds")
        assert groups in (None, [{"Fn::GetAtt": [group_id, "GroupId"]}])


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("arn:aws:secretsmanager:eu-west-2:1111:secret:x", "not a Secrets Manager secret ARN"),
        ("arn:aws:s3:::bucket", "not a Secrets Manager secret ARN"),
        ("name with spaces", "not a secret name or ARN"),
    ],
)
def test_a_malformed_secret_reference_is_a_synth_error(secret, message):
    from aws_cdk import App

    from stacks.config import PipelineConfig

    with pytest.raises(ValueError, match=message):
        PipelineConfig.from_context(App(context={"sourceSecret": secret}).node)


@pytest.mark.parametrize("variant", ["default", "vpc-rds-managed"])
def test_synth_passes_with_the_region_the_cdk_cli_sets(variant, monkeypatch):
    """`cdk synth` sets CDK_DEFAULT_REGION (us-east-1 with no AWS config): CDK then writes
    the partition and region literally, and every finding must still be acknowledged."""
    from stacks.validate import VARIANTS

    monkeypatch.setenv("CDK_DEFAULT_REGION", "us-east-1")
    assembly = synthesize(VARIANTS[variant])
    test_synth_passes_aws_solutions_with_no_violation(assembly)
