"""Processed batches as the load sees them: found in the batch log, checked, streamed.

A batch exists only through its commit record (docs/CONTRACTS.md); files it does not list
are leftovers of a crashed transform and are never read. The load finds the batches its
ledger lacks by reading the processed zone's batch log (`pipeline.processed_log`) from
the newest entry back to the first one the ledger has, so its cost is what is new; a zone
committed before the log is read by listing its manifests (`legacy_pending_batches`).
Before a batch touches the warehouse every listed file is opened and its footer checked
(schema, row count against the manifest), so a missing or corrupt file fails as
`CorruptBatchError` before any row is applied.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import layout, processed_log
from pipeline.errors import CorruptBatchError, rederive_hint
from pipeline.lake import Lake, lake_error
from pipeline.warehouse_schema import PROCESSED_TABLES, WAREHOUSE_TABLES, WarehouseTable

READ_BATCH_ROWS = 65_536  # rows per record batch streamed to COPY: bounds memory
MAX_STEP = 64  # log entries read back per ledger query, at most
T = TypeVar("T")
Loaded = Callable[[list[str]], set[str]]  # run ids -> those of them in the ledger


@dataclass(frozen=True)
class TableOutput:
    table: WarehouseTable
    files: tuple[str, ...]
    rows: int


@dataclass(frozen=True)
class ProcessedBatch:
    """One committed transform run: what the load applies in a single transaction."""

    run_id: str
    committed_at: datetime
    outputs: dict[str, TableOutput]
    manifest_key: str
    deletes: dict[str, TableOutput] = field(default_factory=dict)  # deletion marks per table
    base_run_id: str | None = None  # the batch whose state this one was built on

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.committed_at, self.run_id)


def pending_batches(lake: Lake, loaded: Loaded) -> list[ProcessedBatch]:
    """Committed batches the ledger lacks (`loaded` asks it), oldest first by
    `(committed_at, run_id)`.

    Every batch before the newest loaded one is loaded (the load applies them in order
    and stops at a failure), so the walk back stops at the first loaded batch.
    """
    committed, _ = processed_log.read_head(lake)
    run_id, newest = committed.get("run_id"), committed.get("log_seq")
    if run_id is None or newest is None:  # nothing committed with the log yet
        return legacy_pending_batches(lake, loaded)
    log = processed_log.batch_log(lake)
    pending: list[ProcessedBatch] = []
    before, step, reached_loaded = int(newest) + 1, 1, False
    first: dict[str, Any] | None = None
    while before > 1 and not reached_loaded:
        entries = log.read_before(before, step)
        if before == int(newest) + 1 and not entries:  # the head's entry was lost in a crash
            entries = [_entry_of(lake, run_id)]
        if not entries:
            raise CorruptBatchError(
                f"processed batch log entry {before - 1} is missing: restore "
                f"{lake.uri(layout.log_entry(layout.BATCH_LOG, before - 1))} from the bucket's "
                "versions (entries are never deleted, only compacted)"
            )
        done = loaded([str(e["run_id"]) for e in entries])
        for entry in entries:
            if entry["run_id"] in done:
                reached_loaded = True
                break
            if all(b.run_id != entry["run_id"] for b in pending):
                pending.append(parse_manifest(entry, str(entry["manifest"])))
            first = entry
        before -= len(entries)
        step = min(2 * step, MAX_STEP)
    if not reached_loaded and first is not None and first.get("previous"):
        # the log's first batch was built on batches committed before the log existed
        logged = {b.run_id for b in pending}
        pending += [b for b in legacy_pending_batches(lake, loaded) if b.run_id not in logged]
    return sorted(pending, key=lambda b: b.order)


def _entry_of(lake: Lake, run_id: str) -> dict[str, Any]:
    key = layout.processed_manifest(run_id)
    return processed_log.entry_for(key, lake.read_json(key))


def legacy_pending_batches(lake: Lake, loaded: Loaded) -> list[ProcessedBatch]:
    """Manifests the ledger lacks, by listing them all (batches committed before the log)."""
    found = {}
    for key in lake.list(layout.MANIFESTS):
        run_id = layout.processed_run_id(key)
        if run_id is not None:
            found[run_id] = key
    done = loaded(list(found))
    batches = []
    for run_id, key in found.items():
        if run_id in done:
            continue
        try:
            doc = lake.read_json(key)
        except CorruptBatchError as exc:
            raise CorruptBatchError(f"{exc}; {rederive_hint(run_id)}") from None
        batches.append(parse_manifest(doc, key))
    ordered = sorted(batches, key=lambda b: b.order)
    pending = {b.run_id for b in ordered}
    for batch in ordered:  # a batch built on one whose manifest is gone: it lost rows
        base = batch.base_run_id
        if base and base not in pending and not loaded([base]):
            raise CorruptBatchError(
                f"processed batch {batch.run_id} was built on batch {base}, "
                f"which is neither loaded nor in the lake (its manifest is missing); "
                f"{rederive_hint(base)}"
            )
    return ordered


def parse_manifest(doc: Any, key: str) -> ProcessedBatch:
    """Validate a processed manifest; anything malformed is a `CorruptBatchError`."""
    run_id = layout.processed_run_id(key) or "?"
    try:
        run_id = doc["run_id"]
        committed_at = datetime.fromisoformat(doc["committed_at"])
        outputs = _outputs(doc["outputs"], PROCESSED_TABLES)
        deletes = _outputs(doc.get("deletes") or {}, WAREHOUSE_TABLES)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptBatchError(
            f"processed manifest {key} is malformed: {exc!r}; {rederive_hint(run_id)}"
        ) from None
    if layout.processed_manifest(run_id) != key:
        raise CorruptBatchError(f"processed manifest {key} names run_id {run_id!r}")
    if committed_at.tzinfo is None:
        committed_at = committed_at.replace(tzinfo=UTC)
    base = doc.get("base_run_id", doc.get("previous"))
    return ProcessedBatch(run_id, committed_at, outputs, key, deletes, str(base) if base else None)


def _outputs(raw: Any, tables: dict[str, WarehouseTable]) -> dict[str, TableOutput]:
    """`{table: {files, rows}}` for tables among `tables` (data: star schemas and
    histories; deletion marks: the star schemas only)."""
    outputs = {}
    for name, out in raw.items():
        if name not in tables:
            raise ValueError(f"unknown warehouse table {name!r}")
        files = tuple(out["files"])
        if not all(isinstance(f, str) and "://" not in f for f in files):
            raise ValueError(f"{name}: files must be keys relative to the processed zone")
        outputs[name] = TableOutput(tables[name], files, int(out["rows"]))
    return outputs


def _run_of(key: str) -> str:
    """The processed batch a processed file belongs to (`.../run=<run_id>/...`)."""
    part = next((p for p in key.split("/") if p.startswith("run=")), "run=?")
    return part.removeprefix("run=").removesuffix(".parquet")


def _rederive(key: str) -> str:
    """The remedy a broken processed file's error names (docs/OPERATIONS.md)."""
    hint = rederive_hint(_run_of(key))
    return hint[0].upper() + hint[1:] + "."


def _open(lake: Lake, key: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(lake.path(key), filesystem=lake.fs)  # closes what it opens
    except (OSError, pa.ArrowException) as exc:  # transient (S3) or a broken file, typed
        raise lake_error(exc, lake.uri(key), "reading", _rederive(key)) from None


def check_output(
    lake: Lake, batch: ProcessedBatch, out: TableOutput, schema: pa.Schema | None = None
) -> None:
    """Footers only: every file exists, has the exact schema (the table's, unless given),
    and the rows add up."""
    expected = [(f.name, f.type) for f in (schema or out.table.arrow_schema)]
    total = 0
    for key in out.files:
        with _open(lake, key) as pf:
            actual = [(f.name, f.type) for f in pf.schema_arrow]
            rows = pf.metadata.num_rows
        if actual != expected:
            raise CorruptBatchError(
                f"processed file {lake.uri(key)} of batch {batch.run_id} does not have the "
                f"{out.table.name} schema: expected {expected}, found {actual}; "
                f"{rederive_hint(batch.run_id)}"
            )
        total += rows
    if total != out.rows:
        raise CorruptBatchError(
            f"batch {batch.run_id}: {out.table.name} files hold {total} rows, "
            f"the manifest says {out.rows}; {rederive_hint(batch.run_id)}"
        )


def stream(lake: Lake, out: TableOutput) -> Iterator[pa.RecordBatch]:
    """The rows of one table's files, in file order, `READ_BATCH_ROWS` at a time."""
    for key in out.files:
        try:
            with _open(lake, key) as pf:
                yield from pf.iter_batches(batch_size=READ_BATCH_ROWS)
        except (OSError, pa.ArrowException) as exc:
            raise lake_error(exc, lake.uri(key), "reading", _rederive(key)) from None


def read_columns(lake: Lake, out: TableOutput, columns: list[str]) -> pa.Table:
    """Only `columns` of all the table's files (Parquet reads just those column chunks)."""
    parts = []
    for key in out.files:
        try:
            with _open(lake, key) as pf:  # not pq.read_table: that imports pandas
                parts.append(pf.read(columns=columns))
        except (OSError, pa.ArrowException) as exc:
            raise lake_error(exc, lake.uri(key), "reading", _rederive(key)) from None
    return pa.concat_tables(parts)


def prefetch(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """Run `items` in a thread, at most `depth` ahead of the consumer.

    Decoding Parquet and encoding COPY data (pyarrow and numpy release the GIL) then
    overlaps with the server ingesting the previous chunk; memory stays bounded. An
    exception in the producer is raised in the consumer; a consumer that stops early
    stops the producer.
    """
    chunks: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                chunks.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put("error", exc)

    worker = threading.Thread(target=produce, name="load-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = chunks.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join()
