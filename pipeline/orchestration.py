"""How one pipeline pass drives the steps: the policy, written once.

The local runner (`pipeline.local.runner`) executes these functions in-process; the state
machine built by `stacks/workflow.py` is the same policy in Step Functions terms, and a
test runs the same scenarios through both and compares what they load and report.

1. Every requested table is extracted to completion. An extract call that stops early
   (`settings.extract_max_rows`, or a Lambda running out of time) returns `more` and the
   run id that continues it; the next call uses that id. A table whose extract fails is
   recorded as failed, and the other tables carry on.
2. The transform runs under the run id, then under `<run_id>.t2`, `.t3`, ... while it
   reports `more` (a backlog over `settings.transform_max_rows`), at most
   `settings.transform_max_rounds` calls. Each call is idempotent by its own run id. A
   call that finds the lease held (`TransformBusyError`) is retried until the holder's
   lease expires (a holder that died) or for two lease periods (one that is alive).
3. The load runs once after the transform, whatever happened to the tables and to the
   backlog: everything that was transformed is loaded.
4. Then the pass fails if any table failed (the re-run input names them), or if the
   transform still had a backlog after its last round. A failing transform or load fails
   the pass at that step; nothing after it runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.errors import TransformBusyError
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.transform.result import TransformResult

log = logging.getLogger(__name__)

TRANSFORM_ROUND_FORMAT = "{}.t{}"  # `<run_id>.t<n>`, also a Step Functions States.Format


def transform_round_id(run_id: str, n: int) -> str:
    """The run id of the n-th transform call of a pass (the first uses the run id itself)."""
    return run_id if n == 1 else TRANSFORM_ROUND_FORMAT.format(run_id, n)


@dataclass
class TableOutcome:
    """One table's extraction over all the calls it took."""

    status: str  # the last call's status ("ok", "replayed"), or "failed"
    rows: int = 0
    files: int = 0
    calls: int = 0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "rows": self.rows,
            "files": self.files,
            "calls": self.calls,
            "warnings": list(self.warnings),
        }
        if self.error is not None:
            out["error"] = self.error
        return out


def extract_to_completion(table: str, run_id: str, settings: Settings) -> TableOutcome:
    """Rule 1: call the extract step until it no longer reports `more`."""
    from pipeline.extract import extract_table

    outcome = TableOutcome(status="ok")
    call_run_id: str | None = run_id
    while call_run_id is not None:
        result = extract_table(table, call_run_id, settings)
        outcome.status = result.status
        outcome.rows += result.rows
        outcome.files += len(result.files)
        outcome.calls += 1
        outcome.warnings.extend(w for w in result.warnings if w not in outcome.warnings)
        call_run_id = result.next_run_id if result.more else None
    return outcome


@dataclass
class TransformOutcome:
    """The transform calls of one pass, their summed counts, and whether a backlog is left."""

    run_ids: list[str] = field(default_factory=list)
    status: str = "nothing_to_do"  # the last call's status
    rows_in: dict[str, int] = field(default_factory=dict)
    rows_out: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    backlog_left: bool = False  # still `more` after the last allowed round

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_ids": list(self.run_ids),
            "status": self.status,
            "rows_in": dict(self.rows_in),
            "rows_out": dict(self.rows_out),
            "quarantined": dict(self.quarantined),
            "rows": sum(self.rows_out.values()),
            "backlog_left": self.backlog_left,
        }


def transform_when_free(run_id: str, settings: Settings) -> TransformResult:
    """One transform call; while another transform holds the lease, wait for it (the state
    machine retries `TransformBusyError` likewise). A holder that died frees the lease
    within `transform_lease_seconds`; one still renewing it after two lease periods is
    alive and busy: its error is raised."""
    from pipeline.transform import transform
    from pipeline.transform.lease import lease_expiry

    deadline = time.monotonic() + 2 * settings.transform_lease_seconds + 5
    while True:
        try:
            return transform(run_id, settings)
        except TransformBusyError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            expires = lease_expiry(settings.processed_lake())
            wait = (expires - datetime.now(UTC)).total_seconds() + 0.5 if expires else 0.5
            log.info("transform lease busy; waiting", extra={"run_id": run_id, "wait_s": wait})
            time.sleep(min(max(wait, 0.5), left))


def transform_rounds(run_id: str, settings: Settings) -> TransformOutcome:
    """Rule 2: transform under `<run_id>`, `.t2`, ... while `more`, at most the bound."""
    outcome = TransformOutcome()
    for n in range(1, settings.transform_max_rounds + 1):
        round_id = transform_round_id(run_id, n)
        result = transform_when_free(round_id, settings)
        outcome.run_ids.append(round_id)
        outcome.status = result.status
        for total, counts in (
            (outcome.rows_in, result.rows_in),
            (outcome.rows_out, result.rows_out),
            (outcome.quarantined, result.quarantined),
        ):
            for table, rows in counts.items():
                total[table] = total.get(table, 0) + rows
        if not result.more:
            return outcome
    outcome.backlog_left = True
    return outcome


def backlog_message(run_id: str, outcome: TransformOutcome, settings: Settings) -> str:
    """Rule 4's failure for a backlog left at the bound (what was transformed is loaded)."""
    return (
        f"TransformBacklogLimit: run {run_id}: the transform still reported more batches "
        f"after {settings.transform_max_rounds} calls (last run id {outcome.run_ids[-1]}); "
        "what they transformed was loaded and the rest waits for the next run (or raise "
        "TRANSFORM_MAX_ROWS / TRANSFORM_MAX_ROUNDS)"
    )


def rerun_tables(failed: list[str]) -> dict[str, list[str]]:
    """Rule 4's re-run input: the same for the CLI (`--tables`) and the state machine."""
    return {"tables": list(failed)}
