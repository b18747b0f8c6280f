"""R16/R17 in "AWS": the synthesized state machine in moto, the real handlers and steps,
a real PostgreSQL source and warehouse (reached through Secrets Manager secrets), and an
S3 lake in moto.

1. A full run loads what a clean local pass loads.
2. One table drifts (a renamed column): the others load, the alert names the table and
   the input that re-runs it, the execution fails; after the fix, that input succeeds and
   the warehouse equals a clean pass.
3. A transient source error twice, then success: retried with the configured backoff.
4. Tables bigger than one invocation's row budget continue until done (R20).
5. An ambiguous invoke (response lost after the step ran) is retried; the step replays.
6. A transform backlog over TRANSFORM_MAX_ROWS loops under derived run ids, then loads once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pipeline.handlers
from pipeline.catalog import TABLE_NAMES
from pipeline.errors import SourceUnavailableError
from tests.warehouse_compare import warehouse_contents

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

KIB = 1024


@pytest.fixture
def databases(pipeline_aws, make_database: Callable[[str], str]) -> dict[str, str]:
    from pipeline.local.simulator.seed import seed

    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.02, seed=5)
    passwords = pipeline_aws.put_database_secrets(source, warehouse)
    return {"source": source, "warehouse": warehouse, "passwords": passwords}


def clean_pass(source: str, make_database: Callable[[str], str], lake: Path) -> dict[str, Any]:
    """The warehouse one uninterrupted local run builds from the same source state."""
    from pipeline.local.runner import run_pipeline
    from pipeline.settings import Settings

    warehouse = make_database("clean")
    report = run_pipeline(Settings.in_folder(lake, source_dsn=source, warehouse_dsn=warehouse))
    assert report.succeeded, report.to_dict()
    return warehouse_contents(warehouse)


def test_full_run_loads_what_a_clean_pass_loads(
    pipeline_aws, databases, make_database, tmp_path, capfd, caplog
):
    execution = pipeline_aws.run({}, name="sched-full-run")

    assert execution.status == "SUCCEEDED", execution.cause
    loaded = warehouse_contents(databases["warehouse"])
    assert loaded["fact_sales_order"] and loaded["dim_staff"] and loaded["fact_payment"]
    assert loaded == clean_pass(databases["source"], make_database, tmp_path)
    assert pipeline_aws.notifications() == []
    assert max(execution.payload_sizes()) < 10 * KIB
    # Every extract ran under the execution name as run id, through the secret's DSN.
    assert {c.event["run_id"] for c in pipeline_aws.router.calls("extract_handler")} == {
        "sched-full-run"
    }
    out = capfd.readouterr()
    # Every log record with all its fields (extras included), plus raw stdout/stderr.
    records = json.dumps([r.__dict__ for r in caplog.records], default=str)
    assert "extract finished" in records and "RowsExtracted" in out.out
    for password in databases["passwords"]:
        assert password not in records + out.out + out.err


def test_a_drifted_table_fails_alone_and_its_rerun_input_repairs_the_warehouse(
    pipeline_aws, databases, make_database, tmp_path
):
    with psycopg.connect(databases["source"], autocommit=True) as conn:
        conn.execute("ALTER TABLE staff RENAME COLUMN email_address TO email")

    first = pipeline_aws.run({}, name="run-drift")

    assert first.status == "FAILED"
    assert first.error == "SchemaDriftError"  # the catch-up pass over staff failed again
    [alert] = pipeline_aws.notifications()
    message = alert["message"]
    assert message["failed_tables"] == ["staff"]
    assert message["failures"][0]["error"] == "SchemaDriftError"
    assert "email_address" in message["failures"][0]["cause"]
    assert message["execution_arn"].endswith(":run-drift")
    rerun_input = message["rerun_input"]
    assert rerun_input == {"tables": ["staff"]}
    for password in databases["passwords"]:
        assert password not in json.dumps(alert) and password not in (first.cause or "")
    partial = warehouse_contents(databases["warehouse"])
    assert partial["dim_location"] and partial["dim_currency"]  # the other tables loaded
    assert not partial["dim_staff"]

    with psycopg.connect(databases["source"], autocommit=True) as conn:
        conn.execute("ALTER TABLE staff RENAME COLUMN email TO email_address")
    rerun = pipeline_aws.run(rerun_input, name="run-drift-rerun")

    assert rerun.status == "SUCCEEDED", rerun.cause
    assert [c.event["table"] for c in pipeline_aws.router.calls("extract_handler")][-1] == "staff"
    assert warehouse_contents(databases["warehouse"]) == clean_pass(
        databases["source"], make_database, tmp_path
    )


def test_a_transient_source_error_is_retried_with_backoff_then_succeeds(
    pipeline_aws, databases, make_database, tmp_path, monkeypatch
):
    real = pipeline.handlers.extract_handler
    failures = {"currency": 2}

    def flaky(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if failures.get(event["table"], 0) > 0:
            failures[event["table"]] -= 1
            raise SourceUnavailableError("source totesys@db:5432/totesys is unreachable")
        return real(event, context)

    monkeypatch.setattr(pipeline.handlers, "extract_handler", flaky)
    execution = pipeline_aws.run({}, name="run-flaky")

    assert execution.status == "SUCCEEDED", execution.cause
    currency = [
        c for c in pipeline_aws.router.calls("extract_handler") if c.event["table"] == "currency"
    ]
    assert [c.error for c in currency] == ["SourceUnavailableError", "SourceUnavailableError", None]
    assert pipeline_aws.recorder.delays == [10, 20]  # interval 10 s, backoff rate 2
    assert pipeline_aws.recorder.jitter_bounds == [10, 20]  # full jitter drawn in [0, delay]
    assert warehouse_contents(databases["warehouse"]) == clean_pass(
        databases["source"], make_database, tmp_path
    )


def test_tables_bigger_than_one_invocation_continue_until_done(
    pipeline_aws, databases, make_database, tmp_path, monkeypatch
):
    """R20 in the state machine: a small per-invocation row budget splits big tables."""
    monkeypatch.setenv("EXTRACT_MAX_ROWS", "100")
    execution = pipeline_aws.run({}, name="run-chunked")

    assert execution.status == "SUCCEEDED", execution.cause
    calls = pipeline_aws.router.calls("extract_handler")
    sales = [c for c in calls if c.event["table"] == "sales_order"]
    assert len(sales) >= 2
    assert sales[0].event["run_id"] == "run-chunked"
    assert [c.event["run_id"] for c in sales[1:]] == [c.result["next_run_id"] for c in sales[:-1]]
    assert all(c.result["rows"] <= 100 for c in calls)
    assert sales[-1].result["more"] is False
    assert warehouse_contents(databases["warehouse"]) == clean_pass(
        databases["source"], make_database, tmp_path
    )


def test_an_ambiguous_invoke_is_retried_and_the_step_replays_without_duplicates(
    pipeline_aws, databases, make_database, tmp_path
):
    """R8 in AWS: the extract ran but its response was lost; Step Functions retries the
    Lambda service error and the second invocation writes nothing new."""
    lost: list[str] = []

    def lose_first_payment_response(call) -> bool:
        if call.event.get("table") == "payment" and not lost:
            lost.append(call.event["run_id"])
            return True
        return False

    pipeline_aws.router.lose_response = lose_first_payment_response
    execution = pipeline_aws.run({}, name="run-ambiguous")

    assert execution.status == "SUCCEEDED", execution.cause
    payment = [
        c for c in pipeline_aws.router.calls("extract_handler") if c.event["table"] == "payment"
    ]
    assert len(payment) == 2
    assert payment[0].event == payment[1].event
    assert payment[0].result["status"] != "replayed" and payment[1].result["status"] == "replayed"
    assert payment[1].result["rows"] == payment[0].result["rows"]
    assert pipeline_aws.recorder.delays == [2]  # the Lambda service-error retrier
    assert warehouse_contents(databases["warehouse"]) == clean_pass(
        databases["source"], make_database, tmp_path
    )


def _source_counts(dsn: str) -> dict[str, int]:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn) as conn:
        return {
            t: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
            ).fetchone()[0]  # type: ignore[index]
            for t in TABLE_NAMES
        }


def test_a_transform_backlog_loops_until_done_and_loads_what_an_uncapped_pass_loads(
    pipeline_aws, databases, make_database, tmp_path, monkeypatch
):
    """A row cap of a tenth of the source: every transform takes at most that many rows
    (a bigger batch in slices; lookups first, so facts seldom come before their
    dimensions) and reports `more` while rows are left; one load at the end takes every
    pass, in order."""
    total = sum(_source_counts(databases["source"]).values())
    cap = -(-total // 10)
    monkeypatch.setenv("TRANSFORM_MAX_ROWS", str(cap))
    execution = pipeline_aws.run({}, name="run-backlog")

    assert execution.status == "SUCCEEDED", execution.cause
    transforms = pipeline_aws.router.calls("transform_handler")
    passes = len(transforms)
    assert 10 <= passes <= 20
    assert [c.event["run_id"] for c in transforms] == ["run-backlog"] + [
        f"run-backlog.t{n}" for n in range(2, passes + 1)
    ]
    assert [c.result["more"] for c in transforms] == [True] * (passes - 1) + [False]
    rows_in = [sum(c.result["rows_in"].values()) for c in transforms]
    assert max(rows_in) <= cap and sum(rows_in) == total
    [load] = pipeline_aws.router.calls("load_handler")
    assert load.event["run_id"] == "run-backlog" and load.result["batches_count"] == passes
    assert pipeline_aws.notifications() == []
    assert max(execution.payload_sizes()) < 10 * KIB

    monkeypatch.delenv("TRANSFORM_MAX_ROWS")
    assert warehouse_contents(databases["warehouse"]) == clean_pass(
        databases["source"], make_database, tmp_path
    )
