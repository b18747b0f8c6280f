"""The lake's layout: every key the steps write, and the manifest shapes, defined once.

Writers and readers both import this module, so a key or a manifest field cannot mean two
things (docs/CONTRACTS.md describes each one).

Ingestion zone (`Settings.ingest_url`): written by extract, read by transform and status.

    <table>/date=<YYYY-MM-DD>/<run_id>/part-<NNNNN>.parquet   data parts of one batch
    _manifests/<table>/<run_id>.json                          a batch's commit record
    _log/batches/<seq>.json, head.json, segment-<n>.jsonl     the batch log (commit order)
    _state/<table>/watermark.json                             the current watermark
    _state/<table>/watermark-<seq>.json                       watermark versions (CAS)
    _state/<table>/summary.json                               the table's last batch (status)
    _resume/<table>/<run_id>.json                             where a continuation resumes
    _attempts/<table>/<run_id>.json                           a run's first attempt (its day)
    _reconcile/<table>/heads/head-<seq>.json, keys/, summary/, folded/   what the lake holds
    _reconcile_runs/<table>/<run_id>.json                     a reconciliation's result
    _retracted/<table>/<run_id>.json                          broken batches taken back
    _log/runs/<seq>.json, ...                                 local run reports (a log too)
    _state/housekeeping.json                                  when housekeeping last ran

Every batch of a table, whatever wrote it, is committed by a manifest under
`_manifests/<table>/`; its `mode` says what its files hold: source rows in the catalog
schema (`full`, `incremental`, `backfill`, `reconcile`, `repair`) or deleted keys
(`tombstone`, `tombstone_schema`).

Processed zone (`Settings.processed_url`): written by transform, read by load and status.

    <warehouse_table>/run=<run_id>/part-<NNNNN>.parquet       a batch's rows per table
    _quarantine/<source_table>/run=<run_id>.parquet           rejected rows with reasons
    reports/latest.html, reports/daily/<YYYY-MM-DD>.html      the HTML report (report step)
    _deletes/<warehouse_table>/run=<run_id>.parquet           rows to mark (un)deleted
    _manifests/<run_id>.json                                  a batch's commit record
    _log/batches/<seq>.json, segment-<n>.jsonl                the batch log (commit order)
    _state/head.json, _state/<kind>/run=<run_id>.parquet      the transform's own state
    _locks/transform.json                                     one transform at a time

Lookups never list a prefix whose size grows with history: logs are read forward from a
remembered position (`pipeline.commitlog`), everything else by its exact key.
"""

from __future__ import annotations

import re
from typing import Any, NotRequired, TypedDict

import pyarrow as pa

from pipeline.errors import InvalidInputError

MANIFESTS = "_manifests/"  # the commit records of both zones live under this prefix
STATE_HEAD = "_state/head.json"
TRANSFORM_LEASE = "_locks/transform.json"
HOUSEKEEPING = "_state/housekeeping.json"

# Logs (pipeline.commitlog): the same layout in either zone, by log name.
BATCH_LOG = "batches"  # ingestion: committed extract batches; processed: transform batches
RUN_LOG = "runs"  # ingestion zone: the local runner's run reports
ATTEMPTS = "_attempts/"
RESUMES = "_resume/"
LEGACY_RUN_REPORTS = "_runs/"  # run reports before the run log (read by nothing, expired)
# Ingestion-zone prefixes whose objects only matter for a while (replays, continuations):
# expired after `Settings.retention_days` (S3 lifecycle rules in AWS, housekeeping locally).
RECONCILE_RUNS = "_reconcile_runs/"  # a reconciliation's recorded result, per table and run
INGEST_EXPIRING: tuple[str, ...] = (MANIFESTS, ATTEMPTS, RESUMES, RECONCILE_RUNS)


def log_entry(log: str, seq: int) -> str:
    return f"_log/{log}/{seq:012d}.json"


def log_head(log: str) -> str:
    """A hint of the log's newest entry number (may lag; never ahead)."""
    return f"_log/{log}/head.json"


def log_segment(log: str, segment: int) -> str:
    """Entries `segment * n .. (segment + 1) * n - 1`, compacted into one JSON-lines object."""
    return f"_log/{log}/segment-{segment:08d}.jsonl"


# -- run ids: key parts of both zones ---------------------------------------------------------
# Letters, digits and `._=+-`, starting with a letter or digit, at most RUN_ID_MAX
# characters, no `..`: safe as an S3 key part, a file name on any local file system and a
# Step Functions execution name. Every entry point (each step, the runner, the handlers)
# checks its id with `check_run_id` before it reads or writes anything.
RUN_ID_MAX = 128
RUN_ID_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._=+-]{{0,{RUN_ID_MAX - 1}}}"
_RUN_ID = re.compile(RUN_ID_PATTERN)


def check_run_id(run_id: object) -> str:
    """`run_id` if it is usable in lake keys, else `InvalidInputError` (nothing written)."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        shown = repr(run_id) if len(repr(run_id)) <= 60 else f"{repr(run_id)[:57]}..."
        length = f" ({len(run_id)} characters)" if isinstance(run_id, str) else ""
        raise InvalidInputError(
            f"run id {shown}{length} is not usable in lake keys: use 1-{RUN_ID_MAX} letters, "
            "digits and ._=+- starting with a letter or digit, without '..'"
        )
    return run_id


# -- ingestion zone ----------------------------------------------------------------------
def ingestion_part(table: str, day: str, run_id: str, index: int) -> str:
    return f"{table}/date={day}/{run_id}/part-{index:05d}.parquet"


def ingestion_manifest(table: str, run_id: str) -> str:
    return f"{MANIFESTS}{table}/{run_id}.json"


def ingestion_manifests(table: str | None = None) -> str:
    """The prefix of every ingestion manifest, or of one table's."""
    return MANIFESTS if table is None else f"{MANIFESTS}{table}/"


def watermark(table: str, seq: int) -> str:
    return f"_state/{table}/watermark-{seq:010d}.json"


def watermark_pointer(table: str) -> str:
    """The newest watermark version's content (rewritten after each new version)."""
    return f"_state/{table}/watermark.json"


def table_state(table: str) -> str:
    """The prefix of a table's extract state (watermarks; before the batch log, also the
    resume and attempt records: `legacy_state_records`)."""
    return f"_state/{table}/"


def table_summary(table: str) -> str:
    return f"_state/{table}/summary.json"


def legacy_state_records(table: str) -> tuple[str, str]:
    """Where attempt and resume records lived before `_attempts/` and `_resume/`."""
    return f"_state/{table}/runs/", f"_state/{table}/resume/"


def resume_record(table: str, run_id: str) -> str:
    return f"{RESUMES}{table}/{run_id}.json"


def attempt_record(table: str, run_id: str) -> str:
    return f"{ATTEMPTS}{table}/{run_id}.json"


class SchemaColumn(TypedDict):
    """One column of an ingestion batch's files (`IngestionManifest.schema`)."""

    name: str
    type: str  # the Arrow type in the files
    nullable: bool
    source_type: str  # the live source type it was read from, as format_type() spells it
    in_catalog: bool  # False: a column the source added (docs/CONTRACTS.md, schema drift)


# Batch modes (manifest `mode`). Row batches hold source rows in the catalog schema.
FULL_MODE, INCREMENTAL_MODE, BACKFILL_MODE = "full", "incremental", "backfill"
RECONCILE_MODE = "reconcile"  # rows the lake lacked, found by reconciliation (any last_updated)
REPAIR_MODE = "repair"  # a broken batch's window, extracted again
TOMBSTONE_MODE = "tombstone"  # keys the source no longer has (tombstone_schema)
DELETED_AT = "deleted_at"


def tombstone_schema(table: str) -> pa.Schema:
    """The files of a tombstone batch (a contract for every reader of deletions): the
    deleted row's primary key, the newest `last_updated` the lake held for it, and when the
    deletion was detected (the source's clock at the reconciling snapshot), both
    millisecond timestamps like the source's."""
    from pipeline.catalog import TABLES

    spec = TABLES[table]
    return pa.schema(
        [
            pa.field(spec.primary_key, pa.int32(), nullable=False),
            pa.field(spec.cursor, pa.timestamp("ms"), nullable=False),
            pa.field(DELETED_AT, pa.timestamp("ms"), nullable=False),
        ]
    )


def snapshot_bounds(manifest: dict[str, Any]) -> tuple[str, str]:
    """The source-clock interval in which an ingestion batch's snapshot was taken
    (`snapshot`, ISO microseconds). Batches from before it was recorded fall back on the
    window's end, which is the snapshot's start."""
    snap = manifest.get("snapshot") or {}
    start = snap.get("from") or (manifest.get("window") or {}).get("until") or ""
    return str(start), str(snap.get("to") or start)


def reconcile_run_id(run_id: str) -> str:
    """The batch of rows a reconciliation under `run_id` recovered."""
    return f"{run_id}.reconcile"


def tombstone_run_id(run_id: str) -> str:
    """The batch of keys a reconciliation under `run_id` found deleted."""
    return f"{run_id}.tombstones"


def repair_run_id(run_id: str, broken_run_id: str) -> str:
    """The batch that re-extracts the window of the broken batch `broken_run_id`."""
    return f"{run_id}.repair-{broken_run_id}"[:128]


def reconcile_files(table: str, kind: str = "") -> str:
    """The prefix of a table's held state (`kind`: keys, summary, folded or runs)."""
    return f"_reconcile/{table}/{kind + '/' if kind else ''}"


def reconcile_heads(table: str) -> str:
    """The prefix of a table's held-state heads (at most a few: older ones are pruned)."""
    return f"_reconcile/{table}/heads/"


def reconcile_pointer(table: str) -> str:
    """A copy of the newest held-state head (status reads it: one read, no listing)."""
    return f"_reconcile/{table}/head.json"


def reconcile_head(table: str, seq: int) -> str:
    return f"{reconcile_heads(table)}head-{seq:010d}.json"


def reconcile_keys(table: str, bucket: int, token: str) -> str:
    return f"_reconcile/{table}/keys/b{bucket}/{token}.parquet"


def reconcile_summary(table: str, token: str) -> str:
    return f"_reconcile/{table}/summary/{token}.parquet"


def reconcile_folded(table: str, token: str) -> str:
    return f"_reconcile/{table}/folded/{token}.json"


def reconcile_record(table: str, run_id: str) -> str:
    """A reconciliation's recorded result: a repeated call with the run id replays it."""
    return f"{RECONCILE_RUNS}{table}/{run_id}.json"


def retraction(table: str, run_id: str) -> str:
    """Where a broken batch's manifest goes (with the reason) when it is taken back."""
    return f"_retracted/{table}/{run_id}.json"


class IngestionManifest(TypedDict):
    """`_manifests/<table>/<run_id>.json`: the commit record of one ingestion batch."""

    table: str
    run_id: str
    files: list[str]
    rows: int
    cursor: dict[str, Any]  # {"from", "to"}: ISO ms or None; "to_key": int or None
    window: dict[str, Any]  # {"since", "until", "after_key"}
    mode: str  # one of the modes above
    # Source clock (ISO, naive like the source's timestamps) bracketing the instant the
    # batch's snapshot was taken: the transaction's start and a moment after the snapshot.
    snapshot: NotRequired[dict[str, str]]  # {"from", "to"}
    segment: int
    schema_fingerprint: str
    schema: list[SchemaColumn]  # every column of the files, in file order
    added_columns: list[str]  # the source columns the catalog lacks, in source order
    warnings: list[str]
    more: bool
    next_run_id: str | None
    resume: dict[str, Any] | None
    watermark: dict[str, Any] | None
    committed_at: str  # ISO UTC, microseconds
    log_from: int  # the batch log's head hint when committing: where a replay looks for it


BATCH_ROWS = "rows"  # the kind of a row batch's log entry (extract, reconcile, repair)
BATCH_TOMBSTONES = "tombstones"  # the kind of a tombstone batch's entry (reconcile)
RETRACTED_MODE = "retracted"  # (readers only) a logged batch taken back: nothing to read


class BatchLogEntry(TypedDict):
    """`_log/batches/<seq>.json` in the ingestion zone: one committed batch, in log order.

    Everything the transform needs to read the batch, so it never opens the manifest.
    `kind` says what the batch holds (`BATCH_ROWS`: new and changed rows of `table`;
    `BATCH_TOMBSTONES`: keys of `table` the source no longer has); a reader skips nothing
    it does not understand: it fails (docs/CONTRACTS.md). `mode` and `snapshot` are the
    manifest's (absent in entries written before they were added).
    """

    seq: int
    kind: str
    table: str
    run_id: str
    manifest: str  # the batch's commit record
    committed_at: str
    files: list[str]
    rows: int
    mode: NotRequired[str]
    snapshot: NotRequired[dict[str, str] | None]
    logged_at: str


# -- processed zone ----------------------------------------------------------------------
def processed_part(table: str, run_id: str, part: int = 0) -> str:
    return f"{table}/run={run_id}/part-{part:05d}.parquet"


QUARANTINE = "_quarantine/"


def quarantine_file(source_table: str, run_id: str) -> str:
    return f"{QUARANTINE}{source_table}/run={run_id}.parquet"


def quarantine_file_of(key: str) -> tuple[str, str] | None:
    """(source table, run id) of a `quarantine_file` key; None for any other key."""
    rest = key.removeprefix(QUARANTINE)
    table, _, name = rest.partition("/")
    if rest == key or not table or not name.startswith("run=") or not name.endswith(".parquet"):
        return None
    run_id = name.removeprefix("run=").removesuffix(".parquet")
    return (table, run_id) if run_id and "/" not in run_id else None


REPORTS = "reports/"


def latest_report() -> str:
    return f"{REPORTS}latest.html"


def daily_report(day: str) -> str:
    """The report of one UTC day (`YYYY-MM-DD`): replaced by each build that day."""
    return f"{REPORTS}daily/{day}.html"


def deletion_marks(table: str, run_id: str) -> str:
    """A batch's deletion marks for one warehouse table (`warehouse_schema.deletion_marks`)."""
    return f"_deletes/{table}/run={run_id}.parquet"


def processed_manifest(run_id: str) -> str:
    return f"{MANIFESTS}{run_id}.json"


def processed_run_id(key: str) -> str | None:
    """The run id of a processed manifest key, or None for any other key."""
    name = key.removeprefix(MANIFESTS)
    if name == key or "/" in name or not name.endswith(".json"):
        return None
    return name.removesuffix(".json")


def state_snapshot(kind: str, run_id: str) -> str:
    return f"_state/{kind}/run={run_id}.parquet"


def lease_takeover(token: str) -> str:
    """Created once per stale lease token: only one taker wins it."""
    return f"_locks/transform.takeover.{token}.json"


class OutputFiles(TypedDict):
    """One warehouse table's entry in a processed manifest's `outputs`."""

    files: list[str]
    rows: int


class ProcessedManifest(TypedDict):
    """`_manifests/<run_id>.json` in the processed zone: the commit record of one batch."""

    run_id: str
    inputs: list[str]  # ingestion manifest keys consumed
    # per input [manifest key, log number or None, rows taken before, rows taken]: what
    # `transform --rederive` reads again
    slices: NotRequired[list[list[Any]]]
    outputs: dict[str, OutputFiles]  # warehouse table -> files and rows
    rows_in: dict[str, int]
    quarantined: dict[str, int]
    quarantine_files: dict[str, str]
    duplicates: dict[str, int]
    corrected: NotRequired[dict[str, int]]  # re-delivered versions whose content changed
    deletes: NotRequired[dict[str, OutputFiles]]  # warehouse table -> its deletion marks
    deleted: NotRequired[dict[str, dict[str, int]]]  # source table -> {"deleted", "restored"}
    pending: dict[str, dict[str, int]]
    more: bool
    state: dict[str, Any]  # the state pointers this batch commits
    base_run_id: NotRequired[str | None]  # the batch whose state this one was built on
    transform_at: NotRequired[str]  # ISO UTC: the moment the transform ran (pending TTLs)
    committed_at: str  # ISO UTC: the load applies batches in (committed_at, run_id) order
    seq: int  # this batch's number in the processed zone's batch log
    previous: str | None  # the run id of the batch committed before this one
    released: list[str]  # state snapshots this batch superseded (deleted after retention)


class ProcessedLogEntry(TypedDict):
    """`_log/batches/<seq>.json` in the processed zone: what the load needs of one batch."""

    seq: int
    run_id: str
    manifest: str
    committed_at: str
    outputs: dict[str, OutputFiles]
    quarantined: dict[str, int]
    quarantine_files: dict[str, str]
    previous: str | None
    released: list[str]
    deletes: NotRequired[dict[str, OutputFiles]]  # the batch's deletion marks
    logged_at: str
