"""A console Redrive re-runs exactly what failed, and the warehouse ends as a clean pass.

moto has no RedriveExecution, so `PipelineAws.redrive` re-executes the synthesized
definition the way AWS documents redrive (tests/statemachine/harness.py): from the
unsuccessful top-level state with its recorded input, under the same execution name,
re-running only the failed or aborted iterations of an Inline Map, each from its own
unsuccessful state. Real handlers and steps, real PostgreSQL, the S3 lake in moto.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

import pipeline.handlers
from pipeline.errors import AuthenticationError, SourceUnavailableError
from tests.statemachine.test_scenarios import clean_pass, databases
from tests.warehouse_compare import warehouse_contents

__all__ = ["databases"]  # fixture

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def extracts_after(pipeline_aws, count: int) -> list[tuple[str, str]]:
    calls = pipeline_aws.router.calls("extract_handler")[count:]
    return [(c.event["table"], c.event["run_id"]) for c in calls]


def test_a_failed_table_is_redriven_alone_then_transformed_and_loaded(
    pipeline_aws, databases, make_database, tmp_path, monkeypatch
):
    """staff drifts (fails in both passes); currency's source is down for the whole first
    pass but back for the catch-up, whose staff iteration fails only once currency's has
    succeeded. The execution fails in ExtractFailedTables; after the fix, the redrive
    re-runs the staff iteration only, then one transform pass and one load."""
    with psycopg.connect(databases["source"], autocommit=True) as conn:
        conn.execute("ALTER TABLE staff RENAME COLUMN email_address TO email")
    real = pipeline.handlers.extract_handler
    currency_attempts: list[int] = []
    currency_caught_up = threading.Event()

    def extract(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event["table"] == "currency":
            currency_attempts.append(1)
            if len(currency_attempts) <= 5:  # the first pass's attempt and its 4 retries
                raise SourceUnavailableError("source totesys@db:5432/totesys is unreachable")
            result = real(event, context)
            currency_caught_up.set()
            return result
        if event["table"] == "staff" and currency_attempts:
            assert currency_caught_up.wait(60)
            time.sleep(1)  # let currency's iteration record its success first
        return real(event, context)

    monkeypatch.setattr(pipeline.handlers, "extract_handler", extract)
    first = pipeline_aws.run({}, name="run-redrive-table")

    assert first.status == "FAILED"
    assert first.error == "SchemaDriftError"
    [alert] = pipeline_aws.notifications()
    assert alert["message"]["stopped_at"][0] == "ExtractFailedTables"
    assert sorted(alert["message"]["failed_tables"]) == ["currency", "staff"]
    partial = warehouse_contents(databases["warehouse"])
    assert partial["dim_location"] and partial["dim_design"]  # the others were loaded
    assert not partial["dim_staff"] and not partial["dim_currency"]

    with psycopg.connect(databases["source"], autocommit=True) as conn:
        conn.execute("ALTER TABLE staff RENAME COLUMN email TO email_address")
    before = len(pipeline_aws.router.calls("extract_handler"))
    redriven = pipeline_aws.redrive(first)

    assert redriven.status == "SUCCEEDED", redriven.cause
    assert extracts_after(pipeline_aws, before) == [("staff", "run-redrive-table")]
    transforms = pipeline_aws.router.calls("transform_handler")
    assert [c.event["run_id"] for c in transforms] == ["run-redrive-table", "run-redrive-table.t2"]
    assert len(pipeline_aws.router.calls("load_handler")) == 2
    # Both caught-up tables are in the Map's result: currency's recorded, staff's redriven.
    assert sorted(t["extracted_table"] for t in redriven.output["caught_up"]) == [
        "currency",
        "staff",
    ]
    assert len(pipeline_aws.notifications()) == 1  # the redrive succeeded: no new alert
    assert warehouse_contents(databases["warehouse"]) == clean_pass(
        databases["source"], make_database, tmp_path
    )


def test_a_failed_load_is_redriven_alone_and_the_warehouse_equals_a_clean_pass(
    pipeline_aws, databases, make_database, tmp_path, monkeypatch
):
    """The warehouse rejects the load's credentials (permanent: no retry); after the fix
    the redrive runs the load alone, with its recorded input: no extract, no transform."""
    real = pipeline.handlers.load_handler

    def rejected(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise AuthenticationError("warehouse etl@db:5432/warehouse: authentication failed")

    monkeypatch.setattr(pipeline.handlers, "load_handler", rejected)
    first = pipeline_aws.run({}, name="run-redrive-load")

    assert first.status == "FAILED"
    assert first.error == "AuthenticationError"
    [alert] = pipeline_aws.notifications()
    assert alert["message"]["stopped_at"] == ["Load"]
    assert alert["message"]["failed_tables"] == []
    with pytest.raises(psycopg.errors.UndefinedTable):  # not even the schema exists yet
        warehouse_contents(databases["warehouse"])

    monkeypatch.setattr(pipeline.handlers, "load_handler", real)
    calls_before = len(pipeline_aws.router.invocations)
    redriven = pipeline_aws.redrive(first)

    assert redriven.status == "SUCCEEDED", redriven.cause
    rerun = pipeline_aws.router.invocations[calls_before:]
    assert [(c.handler.rsplit(".", 1)[1], c.event) for c in rerun] == [
        ("load_handler", {"run_id": "run-redrive-load"})
    ]
    assert warehouse_contents(databases["warehouse"]) == clean_pass(
        databases["source"], make_database, tmp_path
    )


def test_a_redrive_of_the_backlog_bound_fails_again_as_aws_documents_for_fail_states(
    pipeline_aws, databases, monkeypatch
):
    """Rule 5's Fail state: the docs (and the alert) send you to a new execution instead."""
    monkeypatch.setenv("TRANSFORM_MAX_ROWS", "1")
    import stacks.workflow  # noqa: F401  (the bound is 20 passes; 11 batches fit)

    real = pipeline.handlers.transform_handler

    def never_done(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {**real(event, context), "more": True}

    monkeypatch.setattr(pipeline.handlers, "transform_handler", never_done)
    first = pipeline_aws.run({"tables": ["currency"]}, name="run-bound")
    assert (first.status, first.error) == ("FAILED", "TransformBacklogLimit")
    redriven = pipeline_aws.redrive(first)
    assert (redriven.status, redriven.error) == ("FAILED", "TransformBacklogLimit")
