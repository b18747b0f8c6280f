"""How one pipeline pass drives the steps: the policy, written once.

The local runner (`pipeline.local.runner`) executes these functions in-process; the state
machine built by `stacks/workflow.py` states the same rules, numbered the same, in Step
Functions terms, and tests/statemachine/test_policy.py runs the same scenarios through
both and compares the step calls they make and how the pass ends.

1. **Every requested table is extracted to completion, within a bound.** An extract call
   that stops early (`settings.extract_max_rows`, or a Lambda running out of time) returns
   `more` and the run id that continues it; the next call uses that id. After
   `settings.extract_max_calls` calls the table stops for this pass: what was read is
   committed and watermarked, the next pass reads the rest.
2. **A table whose extract fails is recorded, and the other tables carry on.** The record
   keeps the error and the run id the table had reached.
3. **Transform while it reports `more`, then load once.** The transform runs under the
   run id, then `<run_id>.t2`, `.t3`, ... (a backlog over `settings.transform_max_rows`),
   at most `settings.transform_max_rounds` calls, each idempotent by its own run id; then
   the load loads everything that was transformed. A call that finds the lease held
   (`TransformBusyError`) is retried until the holder's lease expires (a holder that died)
   or for two lease periods (one that is alive). A failing transform or load fails the
   pass at that step; nothing after it runs.
4. **Failed tables are extracted once more, then transformed and loaded.** Each from the
   run id it had reached (its calls still count towards rule 1's bound). If one fails
   again, the pass fails there, naming the failed tables and the re-run input
   (`rerun_tables`). If all succeed: transform again (the next `.t<n>`, at least one
   call, then as in rule 3) and load again.
5. **A backlog left at the bound fails the pass after its load.** If the last transform
   call still reported `more` (`TransformBacklogLimit`), what was transformed is loaded
   and the next pass takes the rest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError, TransformBusyError
from pipeline.redaction import redact
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.transform.result import TransformResult

log = logging.getLogger(__name__)

TRANSFORM_ROUND_FORMAT = "{}.t{}"  # `<run_id>.t<n>`, also a Step Functions States.Format
BACKLOG_ERROR = "TransformBacklogLimit"  # rule 5's error name (the state machine's Fail too)
# Rule 5's cause: the number of transform calls and the last one's run id (a plain `{}`
# template with no quotes or backslashes, so it is also a valid States.Format template).
BACKLOG_CAUSE = (
    "the transform still reported more batches after {} calls (last run id {}); what they "
    "transformed was loaded and the rest waits for the next run (or raise "
    "transform_max_rows or transform_max_rounds, docs/SETTINGS.md)"
)


def transform_round_id(run_id: str, n: int) -> str:
    """The run id of the n-th transform call of a pass (the first uses the run id itself)."""
    return run_id if n == 1 else TRANSFORM_ROUND_FORMAT.format(run_id, n)


@dataclass
class TableOutcome:
    """One table's extraction over all the calls it took, and where it stopped."""

    run_id: str  # the run id of the next call to make (rule 2: where a retry resumes)
    status: str = "ok"  # the last call's status ("ok", "replayed"), or "failed"
    rows: int = 0
    files: int = 0
    calls: int = 0  # calls that returned (rule 1's bound counts these)
    more_left: bool = False  # rule 1's bound stopped the table with rows still to read
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    reconcile: dict[str, Any] | None = None  # the reconciliation of its last call, if any

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "rows": self.rows,
            "files": self.files,
            "calls": self.calls,
            "more_left": self.more_left,
            "warnings": list(self.warnings),
        }
        if self.reconcile is not None:
            out["reconcile"] = {k: self.reconcile.get(k) for k in RECONCILE_SUMMARY}
        if self.error is not None:
            out["error"] = self.error
        return out


# What a run summary shows of a table's reconciliation (pipeline.extract.reconcile).
RECONCILE_SUMMARY = (
    "status",
    "buckets_compared",
    "buckets_differed",
    "rows_recovered",
    "keys_deleted",
    "future_rows",
    "reconciled_at",
)


def extract_to_completion(
    table: str,
    run_id: str,
    settings: Settings,
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    allow_mass_delete: bool = False,
    repair: bool = False,
) -> TableOutcome:
    """Rules 1 and 2 for one table, from its first call (`since`/`until`: a backfill of
    that window; continuations carry it in their resume record; `allow_mass_delete`,
    `repair`: options of the reconciliation the completing call runs when it is due)."""
    return resume_extract(
        table,
        TableOutcome(run_id),
        settings,
        since=since,
        until=until,
        allow_mass_delete=allow_mass_delete,
        repair=repair,
    )


def resume_extract(
    table: str,
    outcome: TableOutcome,
    settings: Settings,
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    allow_mass_delete: bool = False,
    repair: bool = False,
) -> TableOutcome:
    """Rule 1 from `outcome.run_id` on: call the extract step until it no longer reports
    `more`, or the bound is reached. Rule 2: a failure is recorded in the outcome, which
    stays at the call that failed, so rule 4 resumes right there. The backfill window goes
    to the first call only (continuations carry it)."""
    from pipeline.extract import extract_table

    try:
        while True:
            first = outcome.calls == 0
            result = extract_table(
                table,
                outcome.run_id,
                settings,
                since=since if first else None,
                until=until if first else None,
                allow_mass_delete=allow_mass_delete,
                repair=repair,
            )
            outcome.status, outcome.error = result.status, None
            outcome.rows += result.rows
            outcome.files += len(result.files)
            outcome.calls += 1
            outcome.warnings.extend(w for w in result.warnings if w not in outcome.warnings)
            if result.reconcile is not None:
                outcome.reconcile = result.reconcile
                outcome.warnings.extend(
                    w for w in result.reconcile["warnings"] if w not in outcome.warnings
                )
            if not result.more or result.next_run_id is None:
                return outcome
            outcome.run_id = result.next_run_id
            if outcome.calls >= settings.extract_max_calls:
                outcome.more_left = True
                return outcome
    except Exception as exc:
        where = {"table": table, "run_id": outcome.run_id}
        if isinstance(exc, PipelineError):
            log.error("extract failed", extra={**where, "error": str(exc)})
        else:  # an unexpected bug: recorded like any failure, the traceback in the log
            log.exception("extract crashed", extra=where)
        outcome.status, outcome.error = "failed", redact(f"{type(exc).__name__}: {exc}")
        return outcome


@dataclass
class TransformOutcome:
    """The transform calls of one pass, their summed counts, and whether a backlog is left."""

    run_ids: list[str] = field(default_factory=list)
    status: str = "nothing_to_do"  # the last call's status
    rows_in: dict[str, int] = field(default_factory=dict)
    rows_out: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    corrected: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, dict[str, int]] = field(default_factory=dict)  # "deleted", "restored"
    backlog_left: bool = False  # still `more` after the last allowed round

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_ids": list(self.run_ids),
            "status": self.status,
            "rows_in": dict(self.rows_in),
            "rows_out": dict(self.rows_out),
            "quarantined": dict(self.quarantined),
            "corrected": dict(self.corrected),
            "deleted": {t: dict(c) for t, c in self.deleted.items()},
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


def transform_rounds(
    run_id: str, settings: Settings, outcome: TransformOutcome | None = None
) -> TransformOutcome:
    """Rule 3: transform under `<run_id>`, `.t2`, ... while `more`, at most the bound.

    Given the `outcome` of earlier calls (rule 4), it goes on with the next round: at
    least one call, then more while `more` and under the bound.
    """
    outcome = outcome or TransformOutcome()
    n = len(outcome.run_ids)
    while True:
        n += 1
        round_id = transform_round_id(run_id, n)
        result = transform_when_free(round_id, settings)
        outcome.run_ids.append(round_id)
        outcome.status = result.status
        for total, counts in (
            (outcome.rows_in, result.rows_in),
            (outcome.rows_out, result.rows_out),
            (outcome.quarantined, result.quarantined),
            (outcome.corrected, result.corrected),
        ):
            for table, rows in counts.items():
                total[table] = total.get(table, 0) + rows
        for table, changes in result.deleted.items():
            into = outcome.deleted.setdefault(table, {"deleted": 0, "restored": 0})
            for kind, count in changes.items():
                into[kind] = into.get(kind, 0) + count
        outcome.backlog_left = result.more
        if not result.more or n >= settings.transform_max_rounds:
            return outcome


def backlog_message(run_id: str, outcome: TransformOutcome) -> str:
    """Rule 5's failure for a backlog left at the bound (what was transformed is loaded)."""
    cause = BACKLOG_CAUSE.format(len(outcome.run_ids), outcome.run_ids[-1])
    return f"{BACKLOG_ERROR}: run {run_id}: {cause}"


def rerun_tables(failed: list[str]) -> dict[str, list[str]]:
    """Rule 4's re-run input: the same for the CLI (`--tables`) and the state machine."""
    return {"tables": list(failed)}
