"""AWS Lambda entry points: thin adapters between Step Functions payloads and the steps.

Each handler reads its settings from the environment (set by the CDK stack), calls one
step function from `pipeline` (the same code the local runner and CLI call), records
Powertools metrics and returns a small JSON pointer (docs/CONTRACTS.md). Long lists
(file keys, consumed manifests) are replaced by their counts so a state's payload stays
far below Step Functions' 256 KiB whatever the backlog (docs/RELIABILITY.md, R15).

Events are checked before any step runs (`InvalidInputError`, permanent: the run id's
pattern and length, the table name against the catalog, field types). Errors keep their
class: the Lambda runtime reports the exception class name as the error type, which is the
name Step Functions' Retry/Catch rules match on (`SourceUnavailableError`,
`SchemaDriftError`, ...); their message passes through `pipeline.redaction` first. Nothing
here ever logs a DSN or a secret value: only secret ARNs, table names, run ids and counts.

Events:
    extract   {"table", "run_id", "since"?, "until"?,   ("" or null = incremental)
               "allow_mass_delete"?, "repair"?}          (options of the table's reconciliation)
    transform {"run_id", "tables"?}                      (tables: informative only)
              run_id is the execution name, or `<name>.t<n>` for the n-th pass over a
              backlog: the state machine loops while the result says `more: true`
    load      {"run_id"}
    report    {"run_id"}   (only with context reportEnabled: after the execution's last load)
    alert     an EventBridge "Step Functions Execution Status Change" event (unsuccessful
              ends only): one SNS message with what the execution's history says
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from pipeline import layout
from pipeline.errors import InvalidInputError
from pipeline.orchestration import RECONCILE_SUMMARY
from pipeline.redaction import redact
from pipeline.settings import Settings

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "totesys-etl")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "TotesysEtl")

logger = Logger(service=SERVICE)

# What an extract needs after its stream stops (close the part, commit the manifest and the
# watermark): below this much remaining time it hands over to the next invocation (`more`).
EXTRACT_RESERVE_MS = 120_000

if os.environ.get("AWS_LAMBDA_RUNTIME_API"):  # only inside Lambda: leave test logging alone
    from pipeline.logs import configure

    configure(json_lines=True)


# -- helpers ---------------------------------------------------------------------------
def _settings(*required: str) -> Settings:
    """The function's settings, from the environment the stack gives it (read per call, so
    a test or a configuration change never sees a stale copy)."""
    return Settings.from_env(required=required)


def _optional(event: Mapping[str, Any], key: str) -> str | None:
    """An optional text field: missing, null and "" all mean "not given"."""
    if not isinstance(event, Mapping):
        raise InvalidInputError(f"the event must be a JSON object, got {type(event).__name__}")
    value = event.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"event field {key!r} must be a string, got {value!r:.60}")
    return value


def _required(event: Mapping[str, Any], key: str) -> str:
    value = _optional(event, key)
    if value is None:
        raise InvalidInputError(f"event field {key!r} is required (got keys {sorted(event)})")
    return value


def _run_id(event: Mapping[str, Any]) -> str:
    return layout.check_run_id(_required(event, "run_id"))


def _redacted(handler: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Re-raise any error with its message redacted (the runtime reports `str(exc)`)."""

    @functools.wraps(handler)
    def wrapper(event: dict[str, Any], context: Any) -> dict[str, Any]:
        try:
            return handler(event, context)
        except Exception as exc:
            exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
            raise

    return wrapper


def _seconds_left(context: Any) -> Callable[[], float]:
    """The invocation's remaining time in seconds, asked when the step wants to know."""
    return lambda: context.get_remaining_time_in_millis() / 1000


def _flag(event: Mapping[str, Any], key: str) -> bool:
    """An optional boolean field: true or false (or their text, as the console may send
    it); missing or null is false; anything else is `InvalidInputError`."""
    value = event.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
        return value.strip().lower() == "true"
    raise InvalidInputError(f"event field {key!r} must be true or false, got {value!r:.60}")


# Reconciliation counts emitted per table (docs/OPERATIONS.md explains each).
RECONCILE_METRICS = {
    "RowsRecovered": "rows_recovered",
    "KeysDeleted": "keys_deleted",
    "FutureRows": "future_rows",
    "BucketsDiffered": "buckets_differed",
}


def _emit(name: str, unit: MetricUnit, value: float, **dimensions: str) -> None:
    """One EMF metric line, written by one `write` call: powertools' `single_metric`
    prints the document and its newline as two writes, and invocations running side by
    side in one process (the moto harness's Map) then join documents on one line, which
    CloudWatch cannot parse. No Metrics object is shared between invocations."""
    metrics = EphemeralMetrics(namespace=NAMESPACE)
    metrics.add_metric(name=name, unit=unit, value=value)
    for key, label in {"service": SERVICE, **dimensions}.items():
        metrics.add_dimension(name=key, value=label)
    line = json.dumps(metrics.serialize_metric_set(), separators=(",", ":"))
    sys.stdout.write(line + "\n")


def _counts_only(result: dict[str, Any], *keys: str) -> dict[str, Any]:
    """Replace list fields by `<key>_count`: pointers stay small whatever the backlog."""
    out = dict(result)
    for key in keys:
        if isinstance(out.get(key), list | tuple):
            out[f"{key}_count"] = len(out.pop(key))
    return out


@contextmanager
def _timed(step: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Log start and end (with duration and the counts put in the yielded dict), emit
    `<Step>Duration`; on failure log the error class (messages are password-free by
    contract, but the class name is all an operator needs to find the alert)."""
    started = time.perf_counter()
    summary: dict[str, Any] = {}
    logger.info(f"{step} started", extra=fields)
    try:
        yield summary
    except Exception as exc:
        logger.error(f"{step} failed", extra={**fields, "error": type(exc).__name__})
        raise
    finally:
        seconds = time.perf_counter() - started
        dims = {"table": str(fields["table"])} if "table" in fields else {}
        _emit(f"{step.capitalize()}Duration", MetricUnit.Milliseconds, seconds * 1000, **dims)
    logger.info(f"{step} finished", extra={**fields, **summary, "duration_s": round(seconds, 3)})


# -- handlers --------------------------------------------------------------------------
@logger.inject_lambda_context(clear_state=True)
@_redacted
def extract_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Extract one table (or its next chunk) into the ingestion zone."""
    from pipeline.catalog import get_table
    from pipeline.extract import extract_table

    table = get_table(_required(event, "table")).name
    run_id = _run_id(event)
    logger.append_keys(table=table, run_id=run_id)
    with _timed("extract", table=table, run_id=run_id) as summary:
        result = extract_table(
            table,
            run_id,
            _settings("ingest_url"),
            since=_optional(event, "since"),
            until=_optional(event, "until"),
            stop=lambda: context.get_remaining_time_in_millis() < EXTRACT_RESERVE_MS,
            allow_mass_delete=_flag(event, "allow_mass_delete"),
            repair=_flag(event, "repair"),
        ).to_dict()
        summary.update(rows=result.get("rows"), more=bool(result.get("more")))
    _emit("RowsExtracted", MetricUnit.Count, result.get("rows", 0), table=table)
    passed = result.get("reconcile")
    if passed:  # docs/OPERATIONS.md, Metrics: what a non-zero value means
        for metric, field in RECONCILE_METRICS.items():
            _emit(metric, MetricUnit.Count, int(passed.get(field) or 0), table=table)
        passed = {k: passed.get(k) for k in RECONCILE_SUMMARY}
    out = _counts_only({**result, "reconcile": passed}, "files")
    # The state machine reads these on every path: always present, even when not continuing.
    out["more"] = bool(result.get("more", False))
    out.setdefault("next_run_id", None)
    out.setdefault("manifest", None)
    return out


@logger.inject_lambda_context(clear_state=True)
@_redacted
def transform_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Transform every committed, not yet transformed ingestion batch into the stars."""
    from pipeline.transform import transform

    run_id = _run_id(event)
    logger.append_keys(run_id=run_id)
    with _timed("transform", run_id=run_id) as summary:
        result = transform(
            run_id, _settings("ingest_url", "processed_url"), time_left=_seconds_left(context)
        ).to_dict()
        summary.update(status=result.get("status"), quarantined=result.get("quarantined"))
    for table, rows in (result.get("quarantined") or {}).items():
        _emit("RowsQuarantined", MetricUnit.Count, rows, table=table)
    rows_out = result.get("rows_out")
    if isinstance(rows_out, Mapping):
        for table, rows in rows_out.items():
            _emit("RowsTransformed", MetricUnit.Count, rows, table=table)
    out = _counts_only(result, "inputs")
    out.setdefault("manifest", None)
    out.setdefault("quarantined", {})
    # The state machine's backlog loop reads this on every path: always a boolean.
    out["more"] = bool(result.get("more", False))
    return out


@logger.inject_lambda_context(clear_state=True)
@_redacted
def load_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Apply every processed batch not yet in the warehouse ledger, in order."""
    from pipeline.load import load

    run_id = _run_id(event)
    logger.append_keys(run_id=run_id)
    with _timed("load", run_id=run_id) as summary:
        result = load(run_id, _settings("processed_url")).to_dict()
        summary.update(status=result.get("status"), rows=result.get("rows"))
    rows = result.get("rows")
    if isinstance(rows, Mapping):
        for table, n in rows.items():
            _emit("RowsLoaded", MetricUnit.Count, n, table=table)
    out = _counts_only(result, "batches")
    return out


@logger.inject_lambda_context(clear_state=True)
def report_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Build the HTML report from the warehouse and publish it to the processed bucket."""
    from pipeline.report import build_report, publish_report

    run_id = str(_required(event, "run_id"))
    logger.append_keys(run_id=run_id)
    settings = _settings("processed_url")
    with _timed("report", run_id=run_id) as summary:
        report = publish_report(build_report(settings), settings)
        summary.update(charts=len(report.charts), bytes=len(report.html.encode()))
    result = report.to_dict()
    return {
        "run_id": run_id,
        "keys": result["written"],
        "charts": len(report.charts),
        "bytes": result["bytes"],
    }


@logger.inject_lambda_context(clear_state=True)
def alert_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Publish the one alert for an execution that ended FAILED, TIMED_OUT or ABORTED."""
    from pipeline.alerts import notify

    settings = _settings("alert_topic_arn")
    sent = notify(event, topic_arn=str(settings.alert_topic_arn), pipeline=settings.pipeline_name)
    logger.info("alert published", extra=sent)
    return sent
