"""The report option (`reportEnabled`): off by default; on, one more least-privilege function
that runs once after an execution's last load; a failed report fails the execution there."""

from __future__ import annotations

import pytest

from tests.stacks.synth import Assembly, report_assembly
from tests.stacks.test_template import grants, logical_id, role_statements
from tests.statemachine.harness import state_machine_definition

REPORT_HANDLER = "pipeline.handlers.report_handler"


@pytest.fixture(scope="module")
def with_report() -> Assembly:
    return report_assembly()


def report_function(assembly: Assembly) -> tuple[str, dict]:
    [(name, fn)] = [
        (k, f)
        for k, f in assembly.resources("AWS::Lambda::Function").items()
        if f["Properties"]["ImageConfig"]["Command"] == [REPORT_HANDLER]
    ]
    return name, fn


def test_off_by_default(assembly):
    commands = [
        f["Properties"]["ImageConfig"]["Command"]
        for f in assembly.resources("AWS::Lambda::Function").values()
    ]
    assert [REPORT_HANDLER] not in commands
    states = state_machine_definition(assembly)["States"]
    assert "Report" not in states and states["Load"]["Next"] == "AnyTableFailed"
    assert states["AnyTableFailed"]["Default"] == "BacklogCleared"


def test_report_runs_once_after_the_last_load_without_a_catch(with_report):
    """After the load that leaves no failed table (AnyTableFailed's default), before the
    backlog check; no Catch, so a failed report is the unsuccessful state a Redrive re-runs."""
    states = state_machine_definition(with_report)["States"]
    assert states["Load"]["Next"] == "AnyTableFailed"
    assert states["AnyTableFailed"]["Default"] == "Report"
    report = states["Report"]
    assert report["Next"] == "BacklogCleared"
    assert report["Parameters"]["Payload"] == {"run_id.$": "$.run_id"}
    assert "Catch" not in report
    assert any("SourceUnavailableError" in r["ErrorEquals"] for r in report["Retry"])
    assert [n for n, st in states.items() if st.get("Next") == "Report"] == []  # only one way in


def test_report_function_settings_and_least_privilege(with_report):
    _, fn = report_function(with_report)
    props = fn["Properties"]
    assert props["MemorySize"] == 1024 and props["Timeout"] == 300
    env = props["Environment"]["Variables"]
    assert set(env) >= {"PROCESSED_URL", "WAREHOUSE_SECRET_ARN"}
    assert "TOTESYS_SECRET_ARN" not in env and "INGEST_URL" not in env
    role = props["Role"]["Fn::GetAtt"][0]
    processed = logical_id(with_report, "AWS::S3::Bucket", "LakeProcessed")
    log_group = logical_id(with_report, "AWS::Logs::LogGroup", "FunctionsReportLogs")
    statements = role_statements(with_report, role)
    [listing] = [s for s in statements if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["_quarantine/*", "_manifests/*"]}}
    pairs = grants(statements)
    s3 = {(a, r) for a, r in pairs if a.startswith("s3:")}
    assert s3 == {
        ("s3:ListBucket", f"{processed}.Arn"),
        ("s3:GetObject", f"{processed}.Arn/_quarantine/*"),
        ("s3:GetObject", f"{processed}.Arn/_manifests/*"),
        ("s3:PutObject", f"{processed}.Arn/reports/*"),
    }
    others = {a for a, _ in pairs - s3}
    assert others == {
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
    }
    assert ("logs:PutLogEvents", f"{log_group}.Arn") in pairs
    assert all("warehouse" in r for a, r in pairs if a.startswith("secretsmanager"))
    assert "ManagedPolicyArns" not in with_report.template["Resources"][role]["Properties"]


def test_report_variant_passes_cdk_nag(with_report):
    reports = with_report.validation_report.get("pluginReports", [])
    assert all(r["conclusion"] == "success" and not r["violations"] for r in reports), reports


def test_the_execution_timeout_also_covers_the_report(assembly, with_report):
    """The report adds one task, every retry spent, to the worst case (rule 7)."""
    plain = state_machine_definition(assembly)["TimeoutSeconds"]
    states = state_machine_definition(with_report)
    function_timeout = max(
        fn["Properties"]["Timeout"] for fn in assembly.resources("AWS::Lambda::Function").values()
    )
    report = function_timeout
    for retry in states["States"]["Report"]["Retry"]:
        for k in range(retry["MaxAttempts"]):
            wait = retry["IntervalSeconds"] * retry["BackoffRate"] ** k
            report += function_timeout + min(wait, retry["MaxDelaySeconds"])
    assert states["TimeoutSeconds"] >= plain + report - 3600  # both rounded up to the hour
    assert states["TimeoutSeconds"] > plain
