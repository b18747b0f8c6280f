"""The local runner: one pipeline pass in-process, by the policy of `pipeline.orchestration`.

It calls exactly the step functions the Lambdas call, following the same rules as the
state machine: tables extracted concurrently (bounded) to completion, a failed table
recorded while the others carry on, the transform looped over a backlog up to its bound,
the load of whatever was transformed, the failed tables once more (then transformed and
loaded), then the failure. The report names the command that re-runs just the failed
tables; each report is kept in the ingestion lake for `status`.

The run id and the table list are checked before anything is read or written. A step
that fails (typed error or a bug) is recorded in the report, which is written and
returned all the same; if even the report cannot be written, `report_error` says why.
Every error text in the report passes through `pipeline.redaction`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline import housekeeping, layout
from pipeline import orchestration as policy
from pipeline.catalog import TABLE_NAMES, get_table
from pipeline.errors import InvalidInputError, PipelineError
from pipeline.local import history
from pipeline.redaction import redact, scrub
from pipeline.settings import Settings

log = logging.getLogger(__name__)


# Called with (table, event, detail) as tables start and finish: drives progress displays.
ProgressCallback = Callable[[str, str, dict[str, Any]], None]


def new_run_id(now: datetime | None = None) -> str:
    """Sortable, unique, safe as an S3 key part and a Step Functions execution name."""
    now = now or datetime.now(UTC)
    return f"local-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class RunReport:
    run_id: str
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    transform: dict[str, Any] | None = None
    load: dict[str, Any] | None = None
    error: str | None = None
    report_error: str | None = None  # why the report could not be written to the lake
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0

    @property
    def failed_tables(self) -> list[str]:
        return [t for t, r in self.tables.items() if r["status"] == "failed"]

    @property
    def succeeded(self) -> bool:
        return not self.failed_tables and self.error is None

    @property
    def warnings(self) -> dict[str, list[str]]:
        """Per table, what its extraction reported (schema drift, source settings)."""
        return {t: list(r["warnings"]) for t, r in self.tables.items() if r.get("warnings")}

    @property
    def quarantined(self) -> int:
        return sum((self.transform or {}).get("quarantined", {}).values())

    @property
    def future_rows(self) -> int:
        """Source rows stamped more than the overlap window ahead of the source's clock, as
        this run's reconciliations counted them."""
        return sum(
            int((r.get("reconcile") or {}).get("future_rows") or 0) for r in self.tables.values()
        )

    def rerun_command(self) -> str | None:
        if not self.failed_tables:
            return None
        tables = policy.rerun_tables(self.failed_tables)["tables"]
        return f"totesys-etl run --tables {','.join(tables)}"

    def to_dict(self) -> dict[str, Any]:
        """The `run --json` document (one object, stable keys)."""
        return {
            "run_id": self.run_id,
            "status": "succeeded" if self.succeeded else "failed",
            "tables": self.tables,
            "loaded": dict((self.load or {}).get("rows", {})),
            "quarantined": self.quarantined,
            "warnings": self.warnings,
            "future_rows": self.future_rows,
            "error": self.error,
            "rerun": self.rerun_command(),
            "report_error": self.report_error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(self.duration_s, 3),
        }


def run_pipeline(
    settings: Settings,
    *,
    tables: Sequence[str] = TABLE_NAMES,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    allow_mass_delete: bool = False,
    repair: bool = False,
) -> RunReport:
    """Run one pipeline pass and return its report (never raises for a failed step; a bad
    run id or table list raises `InvalidInputError` before anything is touched).

    `since`/`until` make the extraction a backfill of that window (docs/OPERATIONS.md);
    `allow_mass_delete` and `repair` are options of the reconciliation extraction runs."""
    tables = check_tables(tables)
    run_id = layout.check_run_id(new_run_id() if run_id is None else run_id)
    started = time.perf_counter()
    report = RunReport(run_id=run_id, started_at=datetime.now(UTC).isoformat())
    notify = progress or (lambda table, event, detail: None)

    outcomes = {table: policy.TableOutcome(run_id) for table in tables}

    def extract(table: str) -> tuple[str, dict[str, Any]]:
        """Rules 1 and 2 (and rule 4's second try): resumes where the outcome stopped."""
        notify(table, "started", {})
        t0 = time.perf_counter()
        outcome = policy.resume_extract(
            table,
            outcomes[table],
            settings,
            since=since,
            until=until,
            allow_mass_delete=allow_mass_delete,
            repair=repair,
        )
        detail = {**outcome.to_dict(), "duration_s": round(time.perf_counter() - t0, 3)}
        notify(table, "failed" if outcome.status == "failed" else "finished", detail)
        return table, detail

    def extract_all(names: Sequence[str]) -> None:
        with ThreadPoolExecutor(max_workers=max(1, settings.extract_workers)) as pool:
            for table, outcome in pool.map(extract, names):
                report.tables[table] = outcome

    def transform_and_load(earlier: policy.TransformOutcome | None) -> policy.TransformOutcome:
        """Rule 3 (or rule 4's further rounds), then the load of what was transformed."""
        from pipeline.load import load

        notify("transform", "started", {})
        transformed = policy.transform_rounds(run_id, settings, earlier)
        report.transform = transformed.to_dict()
        notify("transform", "finished", report.transform)
        notify("load", "started", {})
        loaded = load(run_id, settings).to_dict()
        report.load = _add_loads(report.load, loaded)
        notify("load", "finished", loaded)
        return transformed

    extract_all(tables)
    try:
        transformed = transform_and_load(None)
        if report.failed_tables:  # rule 4
            extract_all(report.failed_tables)
            if not report.failed_tables:
                transformed = transform_and_load(transformed)
        if transformed.backlog_left and not report.failed_tables:  # rule 5
            report.error = policy.backlog_message(run_id, transformed)
    except PipelineError as exc:
        report.error = _error_text(exc)
    except Exception as exc:  # an unexpected bug: recorded like a typed failure
        report.error = _error_text(exc)
        log.exception("run crashed", extra={"run_id": run_id})
    if report.error:
        log.error("run failed", extra={"run_id": run_id, "error": report.error})

    report.duration_s = time.perf_counter() - started
    report.finished_at = datetime.now(UTC).isoformat()
    try:
        ingest = settings.ingest_lake()
        history.record_run(ingest, scrub(report.to_dict()))
    except PipelineError as exc:
        report.report_error = _error_text(exc)
        log.error("run report not written", extra={"run_id": run_id, "error": report.report_error})
    else:
        housekeeping.expire_ingestion(ingest, settings)  # (at most daily; S3 lifecycle in AWS)
    log.info(
        "run finished",
        extra={
            "run_id": run_id,
            "status": report.to_dict()["status"],
            "duration_s": report.duration_s,
        },
    )
    return report


def check_tables(tables: Sequence[str]) -> list[str]:
    """Catalog names, each once, in the order given; an empty list or item is an error."""
    if isinstance(tables, str):
        raise InvalidInputError(f"tables must be a list of names, got the string {tables!r}")
    names = [get_table(t).name for t in tables]  # UnknownTableError names the valid ones
    if not names:
        raise InvalidInputError("no tables given: name at least one, or leave the list out")
    return list(dict.fromkeys(names))


def _error_text(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")


def _add_loads(first: dict[str, Any] | None, second: dict[str, Any]) -> dict[str, Any]:
    """One pass's two load results as one: batches in order, rows summed per table. A
    second load with nothing new reports what the run id loaded so far ("replayed"):
    that is the sum already."""
    if first is None or second["status"] == "replayed":
        return second
    if second["status"] == "nothing_to_do":
        return first
    rows = dict(first["rows"])
    for table, n in second["rows"].items():
        rows[table] = rows.get(table, 0) + n
    return {**second, "batches": [*first["batches"], *second["batches"]], "rows": rows}
