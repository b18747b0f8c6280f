"""The local runner's run reports: a log in the ingestion zone (`pipeline.commitlog`).

`status` shows the newest reports and pages through older ones without listing anything:
a report is found by its number in the log. Reports live as long as the retention period
(whole compacted segments expire, `pipeline.housekeeping`).
"""

from __future__ import annotations

from typing import Any

from pipeline import layout
from pipeline.commitlog import CommitLog
from pipeline.lake import Lake


def run_log(lake: Lake) -> CommitLog:
    return CommitLog(lake, layout.RUN_LOG)


def record_run(lake: Lake, report: dict[str, Any]) -> int:
    """Append one run's report; returns its number."""
    return int(run_log(lake).append(report)["seq"])


def recent_runs(lake: Lake, limit: int = 10, *, page: int = 1) -> list[dict[str, Any]]:
    """Run reports, newest first: the `page`-th group of `limit` (page 1 is the newest)."""
    log = run_log(lake)
    newest = log.head()
    # The hint may lag by the runs still finishing: look a little past it.
    while log.get(newest + 1) is not None:
        newest += 1
    return log.read_before(newest + 1 - (page - 1) * limit, limit)
