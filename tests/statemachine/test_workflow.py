"""The synthesized state machine, run in moto with the real handlers over fake steps.

These tests pin the workflow's behaviour (fan-out, continuation, retries, catch-up,
alerts through the EventBridge rule's function, payload budget) independently of the step
implementations; test_scenarios.py and test_redrive.py run the same machine over the real
steps and PostgreSQL.
"""

from __future__ import annotations

import json
import math
import sys

import pytest

from pipeline.catalog import TABLE_NAMES
from pipeline.errors import (
    CorruptBatchError,
    SchemaDriftError,
    SourceUnavailableError,
    TransformBusyError,
)
from pipeline.orchestration import BACKLOG_CAUSE
from pipeline.settings import Settings
from tests.statemachine.fakes import FakeSteps

KIB = 1024


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> FakeSteps:
    fake = FakeSteps()
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake


def test_every_table_is_extracted_then_transformed_and_loaded_under_the_execution_name(
    pipeline_aws, steps
):
    execution = pipeline_aws.run({}, name="scheduled-abc123")

    assert execution.status == "SUCCEEDED", execution.cause
    assert sorted(c["table"] for c in steps.extracts()) == sorted(TABLE_NAMES)
    assert {c["run_id"] for c in steps.extracts()} == {"scheduled-abc123"}
    assert [(s, a["run_id"]) for s, a in steps.calls if s != "extract"] == [
        ("transform", "scheduled-abc123"),
        ("load", "scheduled-abc123"),
    ]
    assert execution.output["succeeded"] == list(TABLE_NAMES)
    assert execution.output["failures"]["tables"] == []
    assert pipeline_aws.notifications() == []


def test_largest_realistic_run_keeps_every_state_payload_under_10_kib(pipeline_aws, steps):
    """R15: 2,000 part files per extract, 5,500 consumed manifests, 500 loaded batches,
    a transform backlog looped three times."""
    steps.chunks = {"sales_order": 3, "payment": 2}
    steps.transform_more = 2
    execution = pipeline_aws.run({})

    assert execution.status == "SUCCEEDED", execution.cause
    sizes = execution.payload_sizes()
    assert len(sizes) > 50
    assert max(sizes) < 10 * KIB
    # The handlers return counts instead of the long lists.
    extract_result = pipeline_aws.router.calls("extract_handler")[0].result
    assert extract_result["files_count"] == steps.files_per_call
    assert "files" not in extract_result
    transforms = pipeline_aws.router.calls("transform_handler")
    assert len(transforms) == 3
    assert all(c.result["inputs_count"] == 5_500 for c in transforms)


def test_a_table_needing_more_invocations_continues_under_the_next_run_id(pipeline_aws, steps):
    steps.chunks = {"sales_order": 3}
    execution = pipeline_aws.run({"tables": ["sales_order"]}, name="big-run")

    assert execution.status == "SUCCEEDED", execution.cause
    assert [c["run_id"] for c in steps.extracts("sales_order")] == [
        "big-run",
        "big-run+1",
        "big-run+2",
    ]
    map_exit = [
        e
        for e in execution.history
        if e.get("stateExitedEventDetails", {}).get("name") == "ExtractTables"
    ]
    extracted = json.loads(map_exit[0]["stateExitedEventDetails"]["output"])["extracted"]
    assert extracted == [
        {
            "table": "sales_order",
            "status": "ok",
            "rows": 3000,
            "more_left": False,
            "extracted_table": "sales_order",
        }
    ]


def test_a_table_stops_at_the_invocation_bound_and_the_run_still_succeeds(pipeline_aws, steps):
    """extractMaxInvocations (10): the rest is the next execution's (its watermark says so)."""
    steps.chunks = {"sales_order": 12}
    execution = pipeline_aws.run({"tables": ["sales_order"]}, name="huge")

    assert execution.status == "SUCCEEDED", execution.cause
    assert [c["run_id"] for c in steps.extracts("sales_order")] == ["huge"] + [
        f"huge+{n}" for n in range(1, 10)
    ]
    [extracted] = [
        json.loads(e["stateExitedEventDetails"]["output"])["extracted"]
        for e in execution.history
        if e.get("stateExitedEventDetails", {}).get("name") == "ExtractTables"
    ]
    assert extracted[0]["more_left"] is True and extracted[0]["rows"] == 10_000


def test_input_tables_choose_what_is_extracted(pipeline_aws, steps):
    execution = pipeline_aws.run({"tables": ["staff", "currency"]})

    assert execution.status == "SUCCEEDED", execution.cause
    assert sorted(c["table"] for c in steps.extracts()) == ["currency", "staff"]


def test_an_empty_table_list_runs_transform_and_load_only(pipeline_aws, steps):
    execution = pipeline_aws.run({"tables": []})

    assert execution.status == "SUCCEEDED", execution.cause
    assert steps.extracts() == []
    assert [s for s, _ in steps.calls] == ["transform", "load"]


def test_backfill_window_reaches_extract_and_empty_means_incremental(pipeline_aws, steps):
    window = {"since": "2026-11-01T00:00:00", "until": "2026-11-02T00:00:00"}
    pipeline_aws.run({"tables": ["design"], **window})
    pipeline_aws.run({"tables": ["design"]})

    backfill, incremental = steps.extracts("design")
    assert (backfill["since"], backfill["until"]) == (window["since"], window["until"])
    assert (incremental["since"], incremental["until"]) == (None, None)


def test_reconciliation_options_reach_every_extract_call_and_default_to_off(pipeline_aws, steps):
    steps.chunks = {"design": 2}  # the continuation reconciles: it must get the options too
    pipeline_aws.run({"tables": ["design"], "allow_mass_delete": True, "repair": True})
    pipeline_aws.run({"tables": ["design"]})

    accepted = steps.extracts("design")
    assert [(c["allow_mass_delete"], c["repair"]) for c in accepted] == [
        (True, True), (True, True), (False, False), (False, False)
    ]  # fmt: skip


def test_a_permanent_table_failure_loads_the_rest_then_fails_at_the_catch_up_with_one_alert(
    pipeline_aws, steps
):
    steps.fail = {"staff": SchemaDriftError("staff", "email_address", "column was dropped")}
    execution = pipeline_aws.run({}, name="run-with-drift")

    assert execution.status == "FAILED"
    assert execution.error == "SchemaDriftError"  # the catch-up's own failure, uncaught
    assert "email_address" in execution.cause
    # Permanent: never retried; tried once in the first pass and once in the catch-up.
    assert [c["run_id"] for c in steps.extracts("staff")] == ["run-with-drift"] * 2
    assert [(s, a["run_id"]) for s, a in steps.calls if s != "extract"] == [
        ("transform", "run-with-drift"),
        ("load", "run-with-drift"),
    ]

    [alert] = pipeline_aws.notifications()
    assert alert["subject"] == "totesys-etl: execution failed at ExtractFailedTables"
    message = alert["message"]
    assert message["status"] == "FAILED" and message["error"] == "SchemaDriftError"
    assert message["stopped_at"] == ["ExtractFailedTables", "ExtractAgain"]
    assert message["failed_tables"] == ["staff"]
    assert message["rerun_input"] == {"tables": ["staff"]}
    assert message["run_id"] == "run-with-drift"
    assert message["execution_arn"].endswith(":run-with-drift")
    assert "Redrive" in message["how_to_recover"]
    [failure] = message["failures"]
    assert failure["table"] == "staff" and failure["error"] == "SchemaDriftError"
    assert "email_address" in failure["cause"]


def test_a_table_that_recovers_by_the_catch_up_is_transformed_and_loaded_and_the_run_succeeds(
    pipeline_aws, steps
):
    """A source that was down for the first pass's whole retry budget is back after the
    load: the catch-up extracts the table, one more transform pass and load take it."""
    attempts: dict[str, int] = {}

    def down_for_the_first_pass(table: str, run_id: str) -> None:
        attempts[table] = attempts.get(table, 0) + 1
        if table == "payment" and attempts[table] <= 5:
            raise SourceUnavailableError("source db:5432 is unreachable: connection refused")

    steps.before_extract = down_for_the_first_pass
    execution = pipeline_aws.run({"tables": ["payment", "design"]}, name="comeback")

    assert execution.status == "SUCCEEDED", execution.cause
    assert attempts == {"payment": 6, "design": 1}
    assert [(s, a["run_id"]) for s, a in steps.calls if s != "extract"] == [
        ("transform", "comeback"),
        ("load", "comeback"),
        ("transform", "comeback.t2"),
        ("load", "comeback"),
    ]
    assert execution.output["failures"] == {"tables": [], "errors": [], "resume": []}
    assert [t["extracted_table"] for t in execution.output["caught_up"]] == ["payment"]
    assert pipeline_aws.notifications() == []


def test_transient_errors_are_retried_with_exponential_backoff_and_full_jitter(pipeline_aws, steps):
    attempts: dict[str, int] = {}

    def flaky(table: str, run_id: str) -> None:
        attempts[table] = attempts.get(table, 0) + 1
        if table == "currency" and attempts[table] <= 2:
            raise SourceUnavailableError("source db:5432 is unreachable: connection refused")

    steps.before_extract = flaky
    execution = pipeline_aws.run({"tables": ["currency"]})

    assert execution.status == "SUCCEEDED", execution.cause
    assert attempts["currency"] == 3
    assert [c.error for c in pipeline_aws.router.calls("extract_handler")] == [
        "SourceUnavailableError",
        "SourceUnavailableError",
        None,
    ]
    # 10 s, then 10 s x 2; each drawn with full jitter from [0, delay] (recorder takes the max).
    assert pipeline_aws.recorder.jitter_bounds == [10, 20]
    assert pipeline_aws.recorder.delays == [10, 20]


def test_transient_errors_that_persist_fail_only_that_table_after_the_retry_budget(
    pipeline_aws, steps
):
    steps.fail = {"payment": SourceUnavailableError("source unreachable")}
    execution = pipeline_aws.run({"tables": ["payment", "design"]})

    assert execution.status == "FAILED"
    # First attempt + 4 retries, in the first pass and again in the catch-up.
    assert len(steps.extracts("payment")) == 10
    assert pipeline_aws.recorder.delays == [10, 20, 40, 80] * 2
    [alert] = pipeline_aws.notifications()
    assert alert["message"]["rerun_input"] == {"tables": ["payment"]}
    assert alert["message"]["error"] == "SourceUnavailableError"


def test_a_transform_failure_fails_at_the_transform_and_nothing_is_loaded(
    pipeline_aws, steps, monkeypatch
):
    def broken(run_id: str, settings, **kwargs):
        raise CorruptBatchError("lake file s3://ingest/x.parquet does not exist")

    monkeypatch.setattr(sys.modules["pipeline.transform"], "transform", broken)
    execution = pipeline_aws.run({"tables": ["design"]}, name="run-transform-broken")

    assert execution.status == "FAILED"
    assert execution.error == "CorruptBatchError"
    assert [s for s, _ in steps.calls] == ["extract"]
    [alert] = pipeline_aws.notifications()
    assert alert["subject"] == "totesys-etl: execution failed at Transform"
    assert alert["message"]["error"] == "CorruptBatchError"
    assert alert["message"]["stopped_at"] == ["Transform"]
    assert alert["message"]["transform_run_id"] == "run-transform-broken"
    assert alert["message"]["rerun_input"] == {"tables": []}


def test_a_transform_backlog_loops_under_derived_run_ids_then_loads_once(pipeline_aws, steps):
    """`more: true` twice: transform again as <name>.t2, <name>.t3, then one load."""
    steps.transform_more = 2
    execution = pipeline_aws.run({"tables": ["design"]}, name="backlog-run")

    assert execution.status == "SUCCEEDED", execution.cause
    assert [(s, a["run_id"]) for s, a in steps.calls if s != "extract"] == [
        ("transform", "backlog-run"),
        ("transform", "backlog-run.t2"),
        ("transform", "backlog-run.t3"),
        ("load", "backlog-run"),
    ]
    assert [c.result["more"] for c in pipeline_aws.router.calls("transform_handler")] == [
        True,
        True,
        False,
    ]
    assert execution.output["transform_call"] == {"n": 3, "run_id": "backlog-run.t3"}
    assert execution.output["transform"]["more"] is False
    assert pipeline_aws.notifications() == []
    assert max(execution.payload_sizes()) < 10 * KIB


def test_a_looping_transform_is_retried_under_the_same_derived_run_id(
    pipeline_aws, steps, monkeypatch
):
    """Retry/Catch are the same on every pass: a busy lease on .t2 retries .t2 (a replay)."""
    steps.transform_more = 1
    real = steps.transform
    busy = ["backlog-retry.t2"]

    def flaky(run_id: str, settings, **kwargs):
        if run_id in busy:
            busy.remove(run_id)
            steps.calls.append(("transform", {"run_id": run_id, "settings": settings}))
            raise TransformBusyError("other-run", "2026-11-26T10:15:00Z")
        return real(run_id, settings, **kwargs)

    monkeypatch.setattr(sys.modules["pipeline.transform"], "transform", flaky)
    execution = pipeline_aws.run({"tables": []}, name="backlog-retry")

    assert execution.status == "SUCCEEDED", execution.cause
    assert [
        (c.event["run_id"], c.error) for c in pipeline_aws.router.calls("transform_handler")
    ] == [
        ("backlog-retry", None),
        ("backlog-retry.t2", "TransformBusyError"),
        ("backlog-retry.t2", None),
    ]
    assert pipeline_aws.recorder.delays == [10]
    assert [a["run_id"] for s, a in steps.calls if s == "load"] == ["backlog-retry"]


def test_a_transform_that_never_stops_reporting_more_fails_after_the_bound_with_an_alert(
    pipeline_aws, steps
):
    steps.transform_more = math.inf
    execution = pipeline_aws.run({"tables": ["design"]}, name="runaway")

    assert execution.status == "FAILED"
    assert execution.error == "TransformBacklogLimit"
    bound = Settings.__dataclass_fields__["transform_max_rounds"].default  # the stack's too
    assert [a["run_id"] for a in steps.transforms()] == ["runaway"] + [
        f"runaway.t{n}" for n in range(2, bound + 1)
    ]
    # What the runs up to the bound transformed is loaded once before the run fails.
    assert [s for s, _ in steps.calls if s != "extract"] == ["transform"] * bound + ["load"]
    assert execution.cause == BACKLOG_CAUSE.format(bound, f"runaway.t{bound}")
    [alert] = pipeline_aws.notifications()
    assert alert["subject"] == "totesys-etl: execution failed at TransformBacklogLimit"
    message = alert["message"]
    assert message["run_id"] == "runaway"
    assert message["execution_arn"].endswith(":runaway")
    assert message["error"] == "TransformBacklogLimit"
    assert message["transform_run_id"] == f"runaway.t{bound}"
    assert message["rerun_input"] == {"tables": []}
    assert "Redrive would only fail again" in message["how_to_recover"]
    assert max(execution.payload_sizes()) < 10 * KIB


def test_handlers_emit_rows_and_durations_per_table_in_the_dashboard_namespace(
    pipeline_aws, steps, capfd
):
    execution = pipeline_aws.run({"tables": ["staff", "design"]})
    assert execution.status == "SUCCEEDED", execution.cause

    metrics: dict[tuple[str, str | None], float] = {}
    for line in capfd.readouterr().out.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        emf = json.loads(line)
        [directive] = emf["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "TotesysEtl"
        for metric in directive["Metrics"]:
            metrics[(metric["Name"], emf.get("table"))] = emf[metric["Name"]][0]
    assert metrics[("RowsExtracted", "staff")] == 1000
    assert metrics[("RowsExtracted", "design")] == 1000
    assert ("ExtractDuration", "staff") in metrics
    assert metrics[("RowsQuarantined", "payment")] == 3
    assert metrics[("RowsLoaded", "fact_sales_order")] == 1000
    assert ("TransformDuration", None) in metrics and ("LoadDuration", None) in metrics
