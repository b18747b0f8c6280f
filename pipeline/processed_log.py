"""The processed zone's batch log: every committed transform batch, in commit order.

Transforms are serialized (their lease), so each batch knows its number before it commits:
one more than the batch it builds on (`StatePointers.log_seq`). The manifest records it,
the entry is written right after the manifest, and the next transform first re-creates
its predecessor's entry if a crash lost it (`repair`). The load finds the batches it lacks
by reading this log backwards from the newest until it meets one its ledger has: a cost
of what is new, whatever the history. A batch's entry holds what the load applies, so the
load never opens manifests, which expire after the retention period (`housekeeping`), and
the report still finds the quarantine files of batches that old.
"""

from __future__ import annotations

from typing import Any

from pipeline import layout
from pipeline.commitlog import CommitLog
from pipeline.lake import Lake
from pipeline.layout import ProcessedManifest


def batch_log(lake: Lake) -> CommitLog:
    return CommitLog(lake, layout.BATCH_LOG)


def read_head(lake: Lake) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`_state/head.json` as (the committed state's pointers, the pointers of a run that
    crashed before its manifest, or None): the head is trusted only if its manifest exists,
    or its batch log entry (written after the manifest: the manifest was lost later).
    Plain JSON, so the load reads it without the transform's code."""
    head = lake.read_json_or_none(layout.STATE_HEAD)
    if head is None:
        return {}, None
    current = head.get("current") or {}
    run_id = current.get("run_id")
    if run_id and lake.exists(layout.processed_manifest(run_id)):
        return current, None
    seq = current.get("log_seq")
    if run_id and seq is not None:  # its entry exists: committed, only the manifest was lost
        entry = batch_log(lake).get(int(seq))
        if entry is not None and entry.get("run_id") == run_id:
            return current, None
    return head.get("previous") or {}, current


def entry_for(key: str, manifest: ProcessedManifest) -> dict[str, Any]:
    return {
        "run_id": manifest["run_id"],
        "manifest": key,
        "committed_at": manifest["committed_at"],
        "outputs": manifest["outputs"],
        "quarantined": dict(manifest.get("quarantined", {})),
        "quarantine_files": dict(manifest.get("quarantine_files", {})),
        "previous": manifest.get("previous"),
        "released": list(manifest.get("released", [])),
        "deletes": dict(manifest.get("deletes", {})),
    }


def log_commit(lake: Lake, key: str, manifest: ProcessedManifest) -> None:
    """Write the entry of a committed batch at its number (a no-op if it is there)."""
    batch_log(lake).create(int(manifest["seq"]), entry_for(key, manifest))


def committed_batches(lake: Lake) -> dict[str, dict[str, Any]]:
    """Run id -> log entry of every batch in the log (reads the whole log: for tools that
    read all of history anyway, not for a run)."""
    return {str(e["run_id"]): e for e in batch_log(lake).entries()}


def repair(lake: Lake, run_id: str | None, seq: int | None) -> None:
    """Re-create the entry of the committed batch `run_id` (number `seq`) if it is missing."""
    if run_id is None or seq is None:
        return
    log = batch_log(lake)
    if log.get(seq) is None:
        key = layout.processed_manifest(run_id)
        log_commit(lake, key, lake.read_json(key))
