"""What `totesys-etl status` reports, gathered from the lake and the warehouse ledger.

Everything comes from durable records (table summaries, watermarks, the batch logs, the
load ledger, run reports), so status is correct whichever process (Lambda or CLI) did the
work; nothing it reads grows with the number of past runs.
"""

from __future__ import annotations

from typing import Any

from pipeline import layout
from pipeline.catalog import TABLE_NAMES
from pipeline.local import history
from pipeline.settings import Settings


def gather_status(settings: Settings, *, runs: int = 10, page: int = 1) -> dict[str, Any]:
    """Per table watermark, last batch and last reconciliation (buckets compared and
    differed, rows recovered, keys deleted, when), batches waiting for transform/load,
    recent runs (batches waiting for load only when a warehouse is configured).

    Constant in the history: each table's summary and watermark, the transform's cursor
    and what the ingestion log holds past it, the load's walk back to its ledger, and
    `runs` run reports (the `page`-th group of them, newest first). "Waiting" is what the
    steps themselves would pick up next (at most `inputs.READ_AHEAD` are listed, and
    `waiting_for_transform_more` says whether there are more).
    """
    from pipeline.extract.held import last_pass
    from pipeline.extract.watermark import read_watermark
    from pipeline.transform import state
    from pipeline.transform.inputs import pending_batches
    from pipeline.transform.run import ingest_cursor

    ingest, processed = settings.ingest_lake(), settings.processed_lake()
    tables: dict[str, Any] = {}
    for table in TABLE_NAMES:
        summary = ingest.read_json_or_none(layout.table_summary(table)) or {}
        tables[table] = {
            "watermark": read_watermark(ingest, table),
            "last_run": summary.get("last_run"),
            "last_rows": summary.get("last_rows"),
            "last_committed_at": summary.get("last_committed_at"),
            "batches": int(summary.get("batches", 0)),
            "reconcile": last_pass(ingest, table),
        }
    cursor, _ = ingest_cursor(ingest, processed, state.committed_state(processed))
    waiting, more = pending_batches(ingest, cursor)

    waiting_load: list[str] | None = None
    if settings.warehouse_dsn or settings.warehouse_secret_arn:
        from pipeline.load.run import waiting_batches

        waiting_load = waiting_batches(settings)
    return {
        "tables": tables,
        "waiting_for_transform": [b.key for b in waiting],
        "waiting_for_transform_more": more,
        "waiting_for_load": waiting_load,
        "recent_runs": [
            {k: r.get(k) for k in ("run_id", "status", "started_at", "duration_s", "rerun")}
            for r in history.recent_runs(ingest, runs, page=page)
        ],
    }
