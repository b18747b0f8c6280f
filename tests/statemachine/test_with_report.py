"""The report option in "AWS": the synthesized machine with `reportEnabled`, run in moto with
the real handlers. A successful load publishes `reports/latest.html` and the day's copy to
the processed bucket; a report that cannot read the warehouse fails the execution at
`Report` (one alert; the load stood), and a Redrive re-runs only the report."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import boto3
import pytest

from pipeline.errors import ConfigurationError
from pipeline.report.run import LATEST_KEY, daily_key
from tests.stacks.synth import Assembly, report_assembly
from tests.warehouse_compare import warehouse_contents

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def assembly() -> Assembly:  # overrides the default app for pipeline_aws
    return report_assembly()


@pytest.fixture
def databases(pipeline_aws, make_database: Callable[[str], str]) -> dict[str, str]:
    from pipeline.local.simulator.seed import seed

    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.02, seed=5)
    pipeline_aws.put_database_secrets(source, warehouse)
    return {"source": source, "warehouse": warehouse}


def test_a_successful_load_publishes_latest_and_daily_reports(pipeline_aws, databases):
    execution = pipeline_aws.run({}, name="run-report")

    assert execution.status == "SUCCEEDED", execution.cause
    assert pipeline_aws.notifications() == []
    [call] = pipeline_aws.router.calls("report_handler")
    assert call.event == {"run_id": "run-report"}
    bucket = pipeline_aws.lake_url("PROCESSED_URL").removeprefix("s3://")
    s3 = boto3.client("s3")
    today = datetime.now(UTC).date()
    for key in (LATEST_KEY, daily_key(today)):
        obj = s3.get_object(Bucket=bucket, Key=key)
        assert obj["ContentType"] == "text/html; charset=utf-8"
        page = obj["Body"].read().decode()
        assert 'data-chart="sales-by-month"' in page and "Content-Security-Policy" in page
    assert call.result["keys"] == [
        f"s3://{bucket}/{daily_key(today)}",
        f"s3://{bucket}/{LATEST_KEY}",
    ]


def test_a_failing_report_fails_at_report_and_a_redrive_runs_only_the_report(
    pipeline_aws, databases, monkeypatch
):
    import pipeline.report.run as report_run

    real_gather = report_run.gather

    def unreadable(*args, **kwargs):
        raise ConfigurationError("the warehouse has no fact_sales_order: test double")

    monkeypatch.setattr(report_run, "gather", unreadable)
    execution = pipeline_aws.run({}, name="run-report-fails")

    assert execution.status == "FAILED" and execution.error == "ConfigurationError"
    [alert] = pipeline_aws.notifications()
    assert alert["message"]["stopped_at"] == ["Report"]
    assert alert["message"]["error"] == "ConfigurationError"
    loaded = warehouse_contents(databases["warehouse"])
    assert loaded["fact_sales_order"]  # the load stood

    monkeypatch.setattr(report_run, "gather", real_gather)  # the cause fixed
    steps = ("extract_handler", "transform_handler", "load_handler")
    before = {step: len(pipeline_aws.router.calls(step)) for step in steps}
    redriven = pipeline_aws.redrive(execution)

    assert redriven.status == "SUCCEEDED", redriven.cause
    after = {step: len(pipeline_aws.router.calls(step)) for step in steps}
    assert after == before  # only the report ran again
    assert pipeline_aws.router.calls("report_handler")[-1].event == {"run_id": "run-report-fails"}
    bucket = pipeline_aws.lake_url("PROCESSED_URL").removeprefix("s3://")
    assert boto3.client("s3").head_object(Bucket=bucket, Key=LATEST_KEY)
    assert warehouse_contents(databases["warehouse"]) == loaded
