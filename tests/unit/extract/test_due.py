"""When extraction reconciles a table: every run by default, every N runs, every N hours,
never; the first pass of a table is always due."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipeline import ingest_log, layout
from pipeline.catalog import TABLES
from pipeline.extract.held import HeldState
from pipeline.extract.reconcile import due
from pipeline.lake import Lake
from pipeline.settings import Settings, parse_cadence

SPEC = TABLES["currency"]
NOW = dt.datetime(2024, 11, 5, 12)


def _reconciled(lake: Lake, at: dt.datetime) -> None:
    state = HeldState.open(lake, SPEC)
    assert state.save({"run_id": "r0", "reconciled_at": at.isoformat()})


def _commit(lake: Lake, run_id: str) -> None:
    """An extraction's commit as readers find it: its manifest and batch log entry."""
    key = layout.ingestion_manifest("currency", run_id)
    at = f"2024-11-05T12:00:00.00000{len(run_id)}+00:00"
    manifest = {"table": "currency", "run_id": run_id, "mode": "incremental", "files": [],
                "rows": 1, "committed_at": at}  # fmt: skip
    lake.write_json(key, manifest)
    ingest_log.log_batch(lake, key, manifest, replayed=False)  # type: ignore[arg-type]


def test_cadences(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    every = {
        text: Settings(reconcile_every=parse_cadence(text)) for text in ("1", "3", "2h", "off")
    }
    assert due(every["1"], lake, SPEC, NOW) and due(every["3"], lake, SPEC, NOW)  # first pass
    assert not due(every["off"], lake, SPEC, NOW)
    _reconciled(lake, NOW - dt.timedelta(hours=1))
    assert due(every["1"], lake, SPEC, NOW)
    assert not due(every["2h"], lake, SPEC, NOW)
    assert due(every["2h"], lake, SPEC, NOW + dt.timedelta(hours=1))
    _commit(lake, "a")
    _commit(lake, "b")
    assert not due(every["3"], lake, SPEC, NOW)  # two extractions since the last pass
    _commit(lake, "c")
    assert due(every["3"], lake, SPEC, NOW)
