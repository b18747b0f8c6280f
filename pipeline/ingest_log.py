"""The ingestion zone's batch log: every committed batch with rows, in commit order.

The extract commits a batch with its manifest (`_manifests/<table>/<run_id>.json`, the
run-keyed record a replay finds), then appends a log entry (`pipeline.commitlog`) that
carries everything a reader needs: the transform finds new batches by reading the log
forward from its cursor instead of listing every manifest ever written. A batch of no
rows is not logged: nothing downstream would read it.

The order matters for crash safety: the watermark moves only after the entry exists, so a
crash between manifest and entry leaves the rows below the watermark, and the next run
reads them again (or a replay of the same run id appends the entry). A replay looks for
its entry near where the log's head was at commit (`log_from`) before appending, so it
does not log a batch twice; if it ever did (a writer stalled for longer than the
`REPLAY_WINDOW` entries after it), the transform reads the same rows twice and drops them
as re-deliveries.

Other kinds of batches fit the same log: an entry's `kind` says what it holds (the
reconciliation's recovered rows and repairs are `rows`, its deleted keys `tombstones`).
"""

from __future__ import annotations

from typing import Any

from pipeline import layout
from pipeline.commitlog import CommitLog
from pipeline.lake import Lake
from pipeline.layout import BatchLogEntry, IngestionManifest

REPLAY_WINDOW = 256  # log entries after `log_from` a replay searches for its own entry


def batch_log(lake: Lake) -> CommitLog:
    return CommitLog(lake, layout.BATCH_LOG)


def entry_for(
    key: str, manifest: IngestionManifest, kind: str = layout.BATCH_ROWS
) -> dict[str, Any]:
    """The log entry of a committed batch (without `seq`, `logged_at`: the log sets them)."""
    return {
        "kind": kind,
        "table": manifest["table"],
        "run_id": manifest["run_id"],
        "manifest": key,
        "committed_at": manifest["committed_at"],
        "files": list(manifest["files"]),
        "rows": int(manifest["rows"]),
        "mode": manifest["mode"],
        "snapshot": manifest.get("snapshot"),
    }


def log_batch(
    lake: Lake,
    key: str,
    manifest: IngestionManifest,
    *,
    replayed: bool,
    kind: str = layout.BATCH_ROWS,
) -> BatchLogEntry | None:
    """Append the committed batch at `key` to the log, once; None for a batch of no rows.

    `replayed`: this call did not create the manifest (a re-run or a lost race), so the
    entry may exist already: it is searched for first.
    """
    if not manifest["rows"]:
        return None
    log = batch_log(lake)
    start = manifest.get("log_from")
    if replayed and start is not None:
        found = log.read_after(int(start), REPLAY_WINDOW)
        for entry in found:
            if entry.get("manifest") == key:
                return entry  # type: ignore[return-value]
    return log.append(entry_for(key, manifest, kind))  # type: ignore[return-value]


def head(lake: Lake) -> int:
    """The newest entry number of the log (a hint: entries may exist past it)."""
    return batch_log(lake).head()
