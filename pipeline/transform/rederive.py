"""Re-derive a processed batch from its recorded inputs: the recovery for a lost processed file.

A processed batch is a deterministic function of the ingestion batch slices it consumed,
the transform state it was built on and the moment it ran. All three are in its manifest:
the slices (`slices`: manifest key, log number, rows taken before, rows taken; `inputs`
for batches from before slices were recorded, taken whole), the state it was built on
(`previous`, whose manifest holds those state pointers; the state files are immutable and
keyed by the run that wrote them) and the moment (`transform_at`). `rederive(run_id, ...)`
runs the transform for exactly that again and writes the same keys: data parts, deletion
marks, quarantine and state files, with the bookkeeping the manifest recorded (cursor, log
number, commit time). It never moves `_state/head.json`, never writes the batch log and
never expires anything: later runs stay as they are.

What it recovers (each error names `totesys-etl transform --rederive <run id>`):
- a missing or truncated processed part of a batch not loaded yet (the load's check);
- a missing or unreadable transform state file (`_state/<kind>/.../run=<id>.parquet`):
  the run that wrote it writes it again.

A lost processed manifest needs no re-deriving: the batch log entry holds what the load
applies, and a lost newest manifest is recognised by its entry (`processed_log.read_head`).
The manifests a re-derivation reads (the batch's and its base's, and the ingestion
manifests of legacy inputs) expire after the retention period: a batch older than that
cannot be re-derived (rebuild the processed zone instead, docs/OPERATIONS.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from typing import Any

from pipeline import layout
from pipeline.errors import CorruptBatchError
from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.transform import state as st
from pipeline.transform.inputs import Batch, IngestCursor, read_batches
from pipeline.transform.result import TransformResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """What a processed batch was made from."""

    run_id: str
    slices: list[list[Any]]  # [manifest key, log number, offset, rows taken]
    base: st.StatePointers
    transform_at: dt.datetime
    more: bool
    manifest: dict[str, Any]


def _manifest(processed: Lake, run_id: str, role: str) -> dict[str, Any]:
    doc = processed.read_json_or_none(layout.processed_manifest(run_id))
    if doc is None:
        raise CorruptBatchError(
            f"processed batch {run_id} ({role}) has no manifest (lost, or expired after the "
            "retention period), so nothing records what to re-derive; a lost manifest alone "
            "needs no recovery (the batch log holds what the load applies)"
        )
    return dict(doc)


def recorded(processed: Lake, run_id: str) -> Recorded:
    """The recorded input slices, base state and time of processed batch `run_id`."""
    manifest = _manifest(processed, run_id, "the batch to re-derive")
    base_run_id = manifest.get("previous", manifest.get("base_run_id"))
    base = (
        st.StatePointers()
        if not base_run_id
        else st.StatePointers.from_json(
            _manifest(processed, str(base_run_id), "the state it was built on")["state"]
        )
    )
    slices = manifest.get("slices")
    if slices is None:  # from before slices were recorded: whole batches
        slices = [[key, None, 0, None] for key in manifest["inputs"]]
    at = manifest.get("transform_at") or manifest["committed_at"]
    return Recorded(
        run_id,
        [list(s) for s in slices],
        base,
        dt.datetime.fromisoformat(str(at)),
        bool(manifest.get("more", False)),
        manifest,
    )


def _batches(ingest: Lake, slices: list[list[Any]]) -> list[Batch]:
    """The recorded slices as batches, in the recorded order."""
    keys = [str(s[0]) for s in slices]
    found = {b.key: b for b in read_batches(ingest, keys, logged=True)}
    out = []
    for key, seq, offset, take in slices:
        if key not in found:
            raise CorruptBatchError(f"ingestion manifest {key} is missing (or its table unknown)")
        batch = found[key]
        out.append(
            replace(
                batch,
                seq=None if seq is None else int(seq),
                offset=int(offset or 0),
                take=None if take is None else int(take),
            )
        )
    return out


def rederive(run_id: str, settings: Settings) -> TransformResult:
    """Write processed batch `run_id` again (see the module docstring)."""
    from pipeline.transform.lease import leased
    from pipeline.transform.run import Rederiving, Round, execute_round

    layout.check_run_id(run_id)
    ingest, processed = settings.ingest_lake(), settings.processed_lake()
    with leased(processed, f"rederive-{run_id}", settings.transform_lease_seconds) as lease:
        record = recorded(processed, run_id)
        try:
            batches = _batches(ingest, record.slices)
        except CorruptBatchError as exc:
            raise CorruptBatchError(
                f"processed batch {run_id} cannot be re-derived: an ingestion batch it "
                f"consumed is damaged or expired: {exc}"
            ) from None
        again = Round(
            run_id,
            st.Head(record.base),
            record.base.ingest or IngestCursor(),
            batches,
            record.more,
            migrated=False,
            rederiving=Rederiving(record.transform_at, record.manifest),
        )
        result = execute_round(ingest, processed, again, lease, settings)
    log.info("processed batch re-derived", extra={"run_id": run_id, "inputs": len(batches)})
    return result
