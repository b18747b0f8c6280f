"""Terminal presentation for the CLI: progress while a run goes, then a summary table.

A terminal gets rich progress bars (one per table); a pipe or a log collector gets one
plain line per event, so CI logs stay readable.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.local.runner import ProgressCallback, RunReport

console = Console(stderr=False, highlight=False)


@contextmanager
def run_progress(stages: list[str]) -> Iterator[ProgressCallback]:
    """Yield a progress callback for `run_pipeline` suited to where stdout goes."""
    if not sys.stdout.isatty():

        def plain(stage: str, event: str, detail: dict[str, Any]) -> None:
            if event == "started":
                return
            rows = detail.get("rows")
            if isinstance(rows, dict):
                rows = sum(rows.values())
            extra = f" rows={rows}" if rows is not None else ""
            error = f" error={detail['error']}" if detail.get("error") else ""
            print(f"{stage}: {event}{extra}{error}", flush=True)

        yield plain
        return

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[stage]:<16}"),
        BarColumn(bar_width=24),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task_ids = {
        s: progress.add_task("", stage=s, note="waiting", total=1, start=False) for s in stages
    }

    def update(stage: str, event: str, detail: dict[str, Any]) -> None:
        task = task_ids.get(stage)
        if task is None:
            return
        if event == "started":
            progress.start_task(task)
            progress.update(task, note="running")
        elif event == "finished":
            note = f"{detail['rows']:,} rows" if isinstance(detail.get("rows"), int) else "done"
            progress.update(task, completed=1, note=f"[green]{note}")
        else:
            progress.update(task, completed=1, note=f"[red]failed: {detail.get('error', '')[:60]}")

    with progress:
        yield update


def print_run_summary(report: RunReport) -> None:
    """Per-table outcome, rows loaded per warehouse table, and the re-run command if needed."""
    data = report.to_dict()
    tables = Table(title=f"run {report.run_id}: {data['status']}", title_justify="left")
    columns = ("source table", "status", "rows", "seconds", *RECONCILE_COLUMNS)
    for col in columns:
        tables.add_column(col, justify="left" if col in {"source table", "status"} else "right")
    for name, outcome in report.tables.items():
        status = outcome["status"]
        style = "red" if status == "failed" else "green"
        tables.add_row(
            name,
            f"[{style}]{status}",
            f"{outcome.get('rows', 0):,}",
            f"{outcome.get('duration_s', 0):.2f}",
            *_reconcile_cells(outcome.get("reconcile")),
        )
    console.print(tables)
    if data["future_rows"]:
        console.print(
            f"[yellow]rows stamped ahead of the source's clock: {data['future_rows']:,}[/] "
            "(see the warnings)"
        )
    for name, outcome in report.tables.items():
        for warning in outcome.get("warnings", []):
            console.print(f"[yellow]{name}[/]: {warning}", soft_wrap=True)
    if data["loaded"]:
        loaded = Table(title="warehouse rows inserted or updated", title_justify="left")
        loaded.add_column("table")
        loaded.add_column("rows", justify="right")
        for name, rows in sorted(data["loaded"].items()):
            loaded.add_row(name, f"{rows:,}")
        console.print(loaded)
    console.print(f"quarantined rows: {data['quarantined']}")
    for name, warnings in report.warnings.items():
        for warning in warnings:
            console.print(f"[yellow]warning[/] {name}: {warning}", markup=True, soft_wrap=True)
    for name, outcome in report.tables.items():
        if outcome.get("error"):
            console.print(f"[red]{name}[/]: {outcome['error']}", markup=True, soft_wrap=True)
    if report.error:
        console.print(f"[red]error[/]: {report.error}", soft_wrap=True)
    if rerun := report.rerun_command():
        console.print(f"re-run the failed tables with:\n  {rerun}", soft_wrap=True)


# Columns for a table's reconciliation: buckets compared / differed, rows recovered, keys
# deleted, when (the source's clock).
RECONCILE_COLUMNS = ("buckets", "differed", "recovered", "deleted", "reconciled")


def _reconcile_cells(passed: dict[str, Any] | None) -> tuple[str, ...]:
    if not passed or not passed.get("reconciled_at"):
        return ("-",) * len(RECONCILE_COLUMNS)
    return (
        f"{passed.get('buckets_compared', 0):,}",
        f"{passed.get('buckets_differed', 0):,}",
        f"{passed.get('rows_recovered', 0):,}",
        f"{passed.get('keys_deleted', 0):,}",
        str(passed["reconciled_at"])[:19],
    )


def print_reconcile(run_id: str, tables: dict[str, dict[str, Any]]) -> None:
    """`totesys-etl reconcile`: one row per table, then warnings and errors."""
    failed = any(r["status"] == "failed" for r in tables.values())
    table = Table(
        title=f"reconcile {run_id}: {'failed' if failed else 'succeeded'}", title_justify="left"
    )
    for col in ("source table", "status", *RECONCILE_COLUMNS):
        table.add_column(col, justify="left" if col in {"source table", "status"} else "right")
    for name, result in tables.items():
        style = "red" if result["status"] == "failed" else "green"
        table.add_row(name, f"[{style}]{result['status']}", *_reconcile_cells(result))
    console.print(table)
    for name, result in tables.items():
        for warning in result.get("warnings", []):
            console.print(f"[yellow]{name}[/]: {warning}", soft_wrap=True)
        if result.get("error"):
            console.print(f"[red]{name}[/]: {result['error']}", soft_wrap=True)


def print_status(status: dict[str, Any]) -> None:
    """Render `gather_status` output: one row per table, then pending work and recent runs."""
    tables = Table(title="source tables", title_justify="left")
    for col in ("table", "watermark", "last run", "rows", "batches", *RECONCILE_COLUMNS):
        tables.add_column(
            col, justify="left" if col in {"table", "watermark", "last run"} else "right"
        )
    for name, info in status["tables"].items():
        tables.add_row(
            name,
            str(info["watermark"] or "-"),
            str(info["last_run"] or "-"),
            f"{info['last_rows']:,}" if info["last_rows"] is not None else "-",
            str(info["batches"]),
            *_reconcile_cells(info.get("reconcile")),
        )
    console.print(tables)
    more = "+" if status.get("waiting_for_transform_more") else ""
    console.print(f"batches waiting for transform: {len(status['waiting_for_transform'])}{more}")
    waiting_load = status["waiting_for_load"]
    console.print(
        "batches waiting for load: "
        + ("unknown (no warehouse DSN given)" if waiting_load is None else str(len(waiting_load)))
    )
    runs = Table(title="recent runs", title_justify="left")
    for col in ("run id", "status", "started", "seconds"):
        runs.add_column(col)
    for run in status["recent_runs"]:
        style = "green" if run["status"] == "succeeded" else "red"
        runs.add_row(
            run["run_id"], f"[{style}]{run['status']}", run["started_at"], str(run["duration_s"])
        )
    console.print(runs)
