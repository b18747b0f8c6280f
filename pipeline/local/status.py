"""What `totesys-etl status` reports, gathered from the lake and the warehouse ledger.

Everything comes from durable records (manifests, watermarks, the load ledger, run
reports), so status is correct whichever process (Lambda or CLI) did the work.
"""

from __future__ import annotations

from typing import Any

from pipeline.catalog import TABLE_NAMES
from pipeline.lake import Lake
from pipeline.local.runner import recent_runs
from pipeline.settings import Settings


def _manifests(lake: Lake, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    return [(k, lake.read_json(k)) for k in lake.list(prefix) if k.endswith(".json")]


def gather_status(settings: Settings) -> dict[str, Any]:
    """Per table watermark and last run, batches waiting for transform/load, recent runs
    (batches waiting for load only when a warehouse is configured)."""
    from pipeline.extract.watermark import read_watermark

    ingest, processed = settings.ingest_lake(), settings.processed_lake()
    processed_manifests = _manifests(processed, "_manifests")
    consumed = {key for _, m in processed_manifests for key in m.get("inputs", [])}

    tables: dict[str, Any] = {}
    waiting_transform: list[str] = []
    for table in TABLE_NAMES:
        batches = _manifests(ingest, f"_manifests/{table}")
        batches.sort(key=lambda km: (km[1].get("committed_at", ""), km[1].get("run_id", "")))
        last = batches[-1][1] if batches else None
        tables[table] = {
            "watermark": read_watermark(ingest, table),
            "last_run": last and last["run_id"],
            "last_rows": last and last["rows"],
            "last_committed_at": last and last.get("committed_at"),
            "batches": len(batches),
        }
        waiting_transform += [k for k, _ in batches if k not in consumed]

    loaded: set[str] | None = None
    if settings.warehouse_dsn or settings.warehouse_secret_arn:
        from pipeline.load.run import loaded_batches

        loaded = loaded_batches(settings)
    waiting_load = (
        None
        if loaded is None
        else sorted(m["run_id"] for _, m in processed_manifests if m["run_id"] not in loaded)
    )
    return {
        "tables": tables,
        "waiting_for_transform": waiting_transform,
        "waiting_for_load": waiting_load,
        "recent_runs": [
            {k: r.get(k) for k in ("run_id", "status", "started_at", "duration_s", "rerun")}
            for r in recent_runs(ingest)
        ],
    }
