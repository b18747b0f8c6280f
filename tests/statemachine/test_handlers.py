"""The Lambda adapters on their own: settings, event validation and what they return."""

from __future__ import annotations

import json
import sys
import threading

import pytest

from pipeline import handlers
from pipeline.errors import ConfigurationError
from tests.statemachine.fakes import FakeSteps
from tests.statemachine.harness import FakeContext


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> FakeSteps:
    fake = FakeSteps(files_per_call=3)
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("INGEST_URL", "s3://ingest")
    monkeypatch.setenv("PROCESSED_URL", "s3://processed")
    monkeypatch.delenv("EXTRACT_MAX_ROWS", raising=False)
    return fake


def context(name: str) -> FakeContext:
    return FakeContext(name, f"arn:aws:lambda:eu-west-2:111122223333:function:{name}")


def test_extract_maps_the_event_onto_the_step_and_returns_a_pointer(steps, monkeypatch):
    monkeypatch.setenv("EXTRACT_MAX_ROWS", "5000")
    out = handlers.extract_handler(
        {"table": "staff", "run_id": "r1", "since": "", "until": None}, context("extract")
    )
    [(_, call)] = steps.calls
    settings = call.pop("settings")
    stop = call.pop("stop")
    assert call == {
        "table": "staff", "run_id": "r1", "since": None, "until": None,
        "allow_mass_delete": False, "repair": False,
    }  # fmt: skip
    assert (settings.ingest_url, settings.extract_max_rows) == ("s3://ingest", 5000)
    assert stop() is False  # a fresh invocation has 15 minutes
    assert out["files_count"] == 3 and "files" not in out
    assert out["more"] is False and out["next_run_id"] is None
    assert out["manifest"] == "_manifests/staff/r1.json"


def test_extract_emits_the_reconciliation_s_counts_as_metrics(steps, capsys):
    steps.reconcile = {
        "status": "ok", "buckets_compared": 40, "buckets_differed": 2, "rows_recovered": 7,
        "keys_deleted": 1, "future_rows": 3, "reconciled_at": "2026-11-26T09:30:00.000000",
        "warnings": ["w"] * 500, "manifests": ["m"] * 500,
    }  # fmt: skip
    out = handlers.extract_handler(
        {"table": "payment", "run_id": "r1", "allow_mass_delete": True, "repair": "true"},
        context("extract"),
    )
    [(_, call)] = steps.calls
    assert call["allow_mass_delete"] is True and call["repair"] is True
    metrics = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{") and "_aws" in line:
            doc = json.loads(line)
            for name in ("RowsRecovered", "KeysDeleted", "FutureRows", "BucketsDiffered"):
                if name in doc:
                    metrics[name] = (doc[name], doc["table"])
    assert metrics == {
        "RowsRecovered": ([7.0], "payment"), "KeysDeleted": ([1.0], "payment"),
        "FutureRows": ([3.0], "payment"), "BucketsDiffered": ([2.0], "payment"),
    }  # fmt: skip
    assert out["reconcile"]["rows_recovered"] == 7 and "warnings" not in out["reconcile"]
    assert len(json.dumps(out)) < 2048  # the long lists stay out of the state machine


@pytest.mark.parametrize("missing", ["table", "run_id"])
def test_extract_rejects_an_event_without_table_or_run_id(steps, missing):
    event = {"table": "staff", "run_id": "r1"}
    del event[missing]
    with pytest.raises(ConfigurationError, match=missing):
        handlers.extract_handler(event, context("extract"))
    assert steps.calls == []


def test_a_missing_lake_setting_is_a_configuration_error_naming_it(steps, monkeypatch):
    monkeypatch.delenv("PROCESSED_URL")
    with pytest.raises(ConfigurationError, match="PROCESSED_URL"):
        handlers.load_handler({"run_id": "r1"}, context("load"))


def test_step_errors_leave_the_handler_unchanged(steps):
    from pipeline.errors import SchemaDriftError

    steps.fail = {"staff": SchemaDriftError("staff", "email_address", "column was dropped")}
    with pytest.raises(SchemaDriftError):
        handlers.extract_handler({"table": "staff", "run_id": "r1"}, context("extract"))


def test_transform_and_load_return_counts_instead_of_lists(steps):
    transformed = handlers.transform_handler({"run_id": "r1"}, context("transform"))
    loaded = handlers.load_handler({"run_id": "r1"}, context("load"))
    assert transformed["inputs_count"] == 5_500 and "inputs" not in transformed
    assert transformed["more"] is False
    assert loaded["batches_count"] == 500 and "batches" not in loaded
    assert [s for s, _ in steps.calls] == ["transform", "load"]


def test_transform_reports_a_backlog_as_more_for_the_state_machine_loop(steps):
    steps.transform_more = 1
    first = handlers.transform_handler({"run_id": "r1"}, context("transform"))
    again = handlers.transform_handler({"run_id": "r1"}, context("transform"))  # a retry
    second = handlers.transform_handler({"run_id": "r1.t2"}, context("transform"))
    assert (first["more"], again["more"], second["more"]) == (True, True, False)
    assert len(json.dumps(first)) < 2 * 1024


def test_the_steps_ask_the_lambda_context_for_the_time_left(steps):
    """The extract stops streaming below EXTRACT_RESERVE_MS; the transform sizes its run by
    the seconds left (both asked when the step wants to know, not at the start)."""
    ctx = context("extract")
    handlers.extract_handler({"table": "staff", "run_id": "r1"}, ctx)
    handlers.transform_handler({"run_id": "r1"}, ctx)
    (_, extract_call), (_, transform_call) = steps.calls
    ctx.remaining_ms = handlers.EXTRACT_RESERVE_MS + 1
    assert extract_call["stop"]() is False and transform_call["time_left"]() == 120.001
    ctx.remaining_ms = handlers.EXTRACT_RESERVE_MS - 1
    assert extract_call["stop"]() is True


def test_metric_lines_stay_whole_when_invocations_emit_side_by_side(capfd):
    """A Map runs extractions side by side; each EMF document must be its own line."""
    from aws_lambda_powertools.metrics import MetricUnit

    def emit_many() -> None:
        for i in range(200):
            handlers._emit("RowsExtracted", MetricUnit.Count, i, table="staff")

    threads = [threading.Thread(target=emit_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert len(lines) == 1600
    assert {line["table"] for line in lines} == {"staff"}
