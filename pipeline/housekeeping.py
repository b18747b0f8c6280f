"""Retention: the bookkeeping of past runs is deleted after `Settings.retention_days`.

What is kept, and why (docs/OPERATIONS.md, *Retention*):
- Data batches (ingestion parts, processed parts, quarantine files) are never deleted
  here: the lake's own lifecycle rules decide.
- Batch logs are never deleted: they are compacted (`pipeline.commitlog`), so a reader
  that is far behind still finds every batch.
- Run-keyed records only matter for a while: an extract manifest makes a replay of its run
  id return the recorded result, an attempt record keeps a re-run's keys, a resume record
  carries a continuation. After the retention period they expire: in AWS by S3 lifecycle
  rules on their prefixes (`layout.INGEST_EXPIRING`, stacks/data_lake.py), locally by
  `expire_ingestion`, which the local runner calls at most once a day. A replay of a run
  older than that re-runs it as a new run (its rows are delivered again and dropped
  downstream as re-deliveries).
- The processed zone is cleaned by the transform itself as it commits (it knows which
  state snapshots it superseded and which manifest is the head): `expire_processed`.
- Local run reports (the run log) are kept for the retention period.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pipeline import layout
from pipeline.commitlog import SEGMENT, CommitLog
from pipeline.lake import Lake
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.transform.state import StatePointers

log = logging.getLogger(__name__)

INTERVAL = dt.timedelta(days=1)  # local ingestion housekeeping runs at most this often
_SEGMENT_NUMBER = re.compile(r"segment-(\d{8})\.jsonl$")


def _older(listed: Iterable[tuple[str, dt.datetime]], cutoff: dt.datetime) -> list[str]:
    return [key for key, modified in listed if modified < cutoff]


def expire_legacy_records(
    lake: Lake, settings: Settings, table: str, listed: list[tuple[str, dt.datetime]]
) -> None:
    """Attempt and resume records a table kept under `_state/<table>/` before their own
    prefixes existed: the one listing of that prefix (a table's first extract with this
    version) removes those past the retention period."""
    cutoff = dt.datetime.now(dt.UTC) - settings.retention
    legacy = layout.legacy_state_records(table)
    old = _older(((k, m) for k, m in listed if k.startswith(legacy)), cutoff)
    if old:
        lake.delete_many(old)
        log.info("expired %d legacy attempt/resume records", len(old))


def expire_ingestion(lake: Lake, settings: Settings, *, now: dt.datetime | None = None) -> int:
    """Delete the ingestion zone's expired records (local lakes; S3 lifecycle rules do it in
    AWS). Runs at most once per `INTERVAL` (its last run is recorded in the zone), so its
    listing, bounded by what the retention period keeps, is not paid by every run."""
    now = now or dt.datetime.now(dt.UTC)
    last = lake.read_json_or_none(layout.HOUSEKEEPING)
    if last and dt.datetime.fromisoformat(last["ingestion_at"]) > now - INTERVAL:
        return 0
    cutoff = now - settings.retention
    doomed: list[str] = []
    for prefix in (*layout.INGEST_EXPIRING, layout.LEGACY_RUN_REPORTS):
        doomed += _older(lake.list_with_times(prefix), cutoff)
    doomed += _expired_segments(lake, layout.RUN_LOG, cutoff)
    lake.delete_many(doomed)
    lake.write_json(layout.HOUSEKEEPING, {"ingestion_at": now.isoformat()})
    if doomed:
        log.info("housekeeping expired %d ingestion records", len(doomed))
    return len(doomed)


def _expired_segments(lake: Lake, name: str, cutoff: dt.datetime) -> list[str]:
    """Compacted segments of a log whose newest entry is older than `cutoff`. Only whole
    segments expire (a log stays dense from its oldest kept entry up), so the newest two
    segments' worth of entries outlive the retention period whatever their age."""
    log_ = CommitLog(lake, name)
    doomed = []
    for key, modified in lake.list_with_times(f"_log/{name}/"):
        match = _SEGMENT_NUMBER.search(key)
        if match is None or modified >= cutoff:
            continue
        last = log_.get((int(match.group(1)) + 1) * SEGMENT - 1)
        if last is not None and dt.datetime.fromisoformat(last["logged_at"]) < cutoff:
            doomed.append(key)
    return doomed


# -- processed zone (the transform, as it commits) ---------------------------------------
PROCESSED_BATCH = 256  # log entries one commit housekeeps at most (the rest: next commits)


def expire_processed(lake: Lake, base: StatePointers, settings: Settings) -> int:
    """Delete what the processed batches older than the retention period left behind: their
    manifests (replay records) and the state snapshots they superseded (`released`). Only
    batches before `base` (the state the committing run builds on) are touched, so the
    committed state and its fallback stay whole. Returns how far the log is housekept.

    Entries are read one chunk at a time from the cursor on, and the first one inside the
    period ends the pass: in the steady state one read per commit."""
    if base.log_seq is None:
        return base.housekept
    from pipeline.processed_log import batch_log

    cutoff = (dt.datetime.now(dt.UTC) - settings.retention).isoformat()
    last = min(base.log_seq - 1, base.housekept + PROCESSED_BATCH)
    log_ = batch_log(lake)
    done, doomed, step = base.housekept, [], 1
    while done < last:
        entries = log_.read_after(done, min(step, last - done))
        if not entries:
            break
        for entry in entries:
            if entry["committed_at"] >= cutoff:
                last = done  # the rest is newer
                break
            doomed += [entry["manifest"], *entry.get("released", [])]
            done = int(entry["seq"])
        step = min(2 * step, 64)
    lake.delete_many(doomed)
    return done


def expire_legacy_state(lake: Lake, settings: Settings, *, keep: set[str]) -> None:
    """State snapshots of a processed zone written before batches recorded what they
    superseded: the one listing when its state is first migrated removes every snapshot
    no pointer refers to that is past the retention period (the `consumed` lists of every
    run among them)."""
    cutoff = dt.datetime.now(dt.UTC) - settings.retention
    referenced = keep | {layout.STATE_HEAD, layout.HOUSEKEEPING}
    listed = lake.list_with_times("_state/")
    old = [k for k in _older(listed, cutoff) if k not in referenced and k.endswith(".parquet")]
    if old:
        lake.delete_many(old)
        log.info("expired %d legacy state snapshots", len(old))
