"""What `totesys-etl status` reports, gathered from the lake and the warehouse ledger.

Everything comes from durable records (manifests, watermarks, the load ledger, run
reports), so status is correct whichever process (Lambda or CLI) did the work.
"""

from __future__ import annotations

from typing import Any

from pipeline.catalog import TABLE_NAMES
from pipeline.local.runner import recent_runs
from pipeline.settings import Settings


def gather_status(settings: Settings) -> dict[str, Any]:
    """Per table watermark and last run, batches waiting for transform/load, recent runs
    (batches waiting for load only when a warehouse is configured).

    "Waiting" is what the steps themselves would pick up next: the transform's own pending
    batches (its committed state) and the processed batches the load's ledger lacks.
    """
    from pipeline.extract.watermark import read_watermark
    from pipeline.load import batches as processed_batches
    from pipeline.transform import state
    from pipeline.transform.inputs import list_manifest_keys, read_batches
    from pipeline.transform.run import pending_batches

    ingest, processed = settings.ingest_lake(), settings.processed_lake()
    committed = read_batches(ingest, list_manifest_keys(ingest))
    tables: dict[str, Any] = {}
    for table in TABLE_NAMES:
        mine = [b for b in committed if b.table == table]
        last = mine[-1] if mine else None
        tables[table] = {
            "watermark": read_watermark(ingest, table),
            "last_run": last and last.run_id,
            "last_rows": last and last.rows,
            "last_committed_at": last and last.committed_at,
            "batches": len(mine),
        }
    waiting = pending_batches(ingest, processed, state.committed_state(processed))

    waiting_load: list[str] | None = None
    if settings.warehouse_dsn or settings.warehouse_secret_arn:
        from pipeline.load.run import loaded_batches

        loaded = loaded_batches(settings)
        waiting_load = [b.run_id for b in processed_batches.pending_batches(processed, loaded)]
    return {
        "tables": tables,
        "waiting_for_transform": [b.key for b in waiting],
        "waiting_for_load": waiting_load,
        "recent_runs": [
            {k: r.get(k) for k in ("run_id", "status", "started_at", "duration_s", "rerun")}
            for r in recent_runs(ingest)
        ],
    }
