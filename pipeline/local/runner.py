"""The local runner: extract (concurrently, bounded) -> transform -> load, in-process.

It calls exactly the step functions the Lambdas call, and mirrors the state machine's
error handling: a table whose extract fails is recorded as failed while the others carry
on to transform and load, and the report names the command that re-runs just the failed
tables. Each run's report is kept in the ingestion lake under `_runs/` for `status`.
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

from pipeline import layout
from pipeline.catalog import TABLE_NAMES, get_table
from pipeline.errors import PipelineError
from pipeline.lake import Lake
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
    def quarantined(self) -> int:
        return sum((self.transform or {}).get("quarantined", {}).values())

    def rerun_command(self) -> str | None:
        if not self.failed_tables:
            return None
        return f"totesys-etl run --tables {','.join(self.failed_tables)}"

    def to_dict(self) -> dict[str, Any]:
        """The `run --json` document (one object, stable keys)."""
        return {
            "run_id": self.run_id,
            "status": "succeeded" if self.succeeded else "failed",
            "tables": self.tables,
            "loaded": dict((self.load or {}).get("rows", {})),
            "quarantined": self.quarantined,
            "error": self.error,
            "rerun": self.rerun_command(),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(self.duration_s, 3),
        }


def extract_table_fully(table: str, settings: Settings, run_id: str) -> dict[str, Any]:
    """Extract one table to completion (following `more` for tables too big for one call)."""
    from pipeline.extract import extract_table

    total_rows, files = 0, 0
    call_run_id = run_id
    while True:
        result = extract_table(table, call_run_id, settings).to_dict()
        total_rows += result["rows"]
        files += len(result.get("files", []))
        if not result.get("more"):
            break
        call_run_id = result["next_run_id"]
    return {
        "status": result["status"],
        "rows": total_rows,
        "files": files,
        "warnings": result.get("warnings", []),
    }


def transform_backlog(run_id: str, settings: Settings) -> dict[str, Any]:
    """Transform until no committed batch is left, as the state machine's loop does.

    One transform call is capped in rows (memory); when it reports `more`, the next call
    uses the derived run id `<run_id>.t<n>`, so each call stays idempotent on its own.
    The returned dict sums the per-table counts of all rounds.
    """
    from pipeline.transform import transform

    total: dict[str, Any] = {"run_ids": [], "rows_in": {}, "rows_out": {}, "quarantined": {}}
    rounds = settings.transform_max_rounds
    for n in range(1, rounds + 1):
        round_id = run_id if n == 1 else f"{run_id}.t{n}"
        result = transform(round_id, settings).to_dict()
        total["run_ids"].append(round_id)
        total["status"] = result["status"]
        for key in ("rows_in", "rows_out", "quarantined"):
            for table, rows in (result.get(key) or {}).items():
                total[key][table] = total[key].get(table, 0) + rows
        if not result.get("more"):
            total["rows"] = sum(total["rows_out"].values())
            return total
    raise PipelineError(
        f"transform still reports a backlog after {rounds} rounds of run "
        f"{run_id}; run `totesys-etl transform` again, or raise TRANSFORM_MAX_ROWS"
    )


def run_pipeline(
    settings: Settings,
    *,
    tables: Sequence[str] = TABLE_NAMES,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> RunReport:
    """Run one pipeline pass and return its report (never raises for a failed table)."""
    tables = [get_table(t).name for t in tables]
    run_id = run_id or new_run_id()
    started = time.perf_counter()
    report = RunReport(run_id=run_id, started_at=datetime.now(UTC).isoformat())
    notify = progress or (lambda table, event, detail: None)

    def extract(table: str) -> tuple[str, dict[str, Any]]:
        notify(table, "started", {})
        t0 = time.perf_counter()
        try:
            outcome = extract_table_fully(table, settings, run_id)
        except PipelineError as exc:
            log.error("extract failed", extra={"table": table, "run_id": run_id, "error": str(exc)})
            outcome = {"status": "failed", "rows": 0, "error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # an unexpected bug: record it, keep the traceback in the log
            log.exception("extract crashed", extra={"table": table, "run_id": run_id})
            outcome = {"status": "failed", "rows": 0, "error": f"{type(exc).__name__}: {exc}"}
        outcome["duration_s"] = round(time.perf_counter() - t0, 3)
        notify(table, "failed" if outcome["status"] == "failed" else "finished", outcome)
        return table, outcome

    with ThreadPoolExecutor(max_workers=max(1, settings.extract_workers)) as pool:
        for table, outcome in pool.map(extract, tables):
            report.tables[table] = outcome

    try:
        from pipeline.load import load

        notify("transform", "started", {})
        report.transform = transform_backlog(run_id, settings)
        notify("transform", "finished", report.transform)
        notify("load", "started", {})
        report.load = load(run_id, settings).to_dict()
        notify("load", "finished", report.load)
    except PipelineError as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        log.error("run failed", extra={"run_id": run_id, "error": report.error})

    report.duration_s = time.perf_counter() - started
    report.finished_at = datetime.now(UTC).isoformat()
    settings.ingest_lake().write_json(layout.run_report(run_id), report.to_dict())
    log.info(
        "run finished",
        extra={
            "run_id": run_id,
            "status": report.to_dict()["status"],
            "duration_s": report.duration_s,
        },
    )
    return report


def recent_runs(lake: Lake, limit: int = 10) -> list[dict[str, Any]]:
    """The newest run reports written by `run_pipeline` in the ingestion lake, newest first."""
    keys = lake.list(layout.RUN_REPORTS)
    reports = [lake.read_json(k) for k in keys]
    reports.sort(key=lambda r: r.get("started_at", ""), reverse=True)
    return reports[:limit]
