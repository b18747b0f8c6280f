"""The load step: apply every processed batch not yet in the warehouse ledger, oldest first.

Contract: docs/CONTRACTS.md. Each batch is ONE transaction: dimensions upserted
(`pipeline.load.apply`), facts appended (`pipeline.load.facts`), the dimension history
of the keys it changed replaced (`pipeline.load.history`), then its ledger
row; all commit together or not at all, so a crash anywhere leaves the warehouse as it
was and the next load picks the batch up again, before any later batch (R7, R9).
Loads are serialized by a session advisory lock taken before the ledger is read, so a
second concurrent load waits and then finds nothing left to do (R8, R10).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline import layout
from pipeline.credentials import WAREHOUSE, connect, redact, resolve
from pipeline.errors import InsufficientPrivilegeError, LoadConflictError, WarehouseUnavailableError
from pipeline.lake import Lake
from pipeline.load import apply, batches, ddl, deletes, facts, history, privileges
from pipeline.load.migrations import apply_migrations
from pipeline.settings import Settings
from pipeline.warehouse_schema import DIMENSIONS, FACTS, HISTORIES, deletion_marks_schema

log = logging.getLogger(__name__)

LOAD_LOCK = 0x70E5_0002  # pg_advisory_lock key shared by every load of this warehouse
LOCK_WAIT_S = 600.0  # how long a load waits for another one before LoadConflictError
# dimensions first: facts' FKs hold; the history tables have no foreign keys
_ORDER = [t.name for t in (*DIMENSIONS, *FACTS, *HISTORIES)]


@dataclass
class LoadResult:
    run_id: str
    status: str  # "loaded" | "nothing_to_do" | "replayed"
    batches: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # rows written per warehouse table

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "batches": list(self.batches),
            "rows": dict(self.rows),
        }


def load(run_id: str, settings: Settings) -> LoadResult:
    """Load every pending processed batch of `settings.processed_url` into the warehouse
    (docs/CONTRACTS.md)."""
    layout.check_run_id(run_id)  # recorded in the ledger: checked before anything is opened
    db = resolve(WAREHOUSE, settings)
    lake = settings.processed_lake()
    with connect(db, autocommit=True) as conn:
        try:
            privileges.check_loader(conn)  # before anything is written: names what is missing
            apply_migrations(conn)
            with _load_lock(conn):
                return _load_pending(conn, lake, run_id)
        except psycopg.errors.InsufficientPrivilege as exc:  # one the check cannot see
            user = conn.info.user
            raise InsufficientPrivilegeError(
                f"warehouse user {user}: {redact(exc.diag.message_primary or str(exc))} "
                f"during load {run_id} (the batch being loaded was rolled back); "
                + privileges.HOW_TO_GRANT.format(role=user)
            ) from None
        except psycopg.OperationalError as exc:  # connection lost mid-load: safe to retry
            detail = redact(str(exc).strip()).splitlines()
            raise WarehouseUnavailableError(
                f"{db.where}: connection failed during load {run_id}: "
                f"{detail[0] if detail else type(exc).__name__}"
            ) from None


@contextlib.contextmanager
def _load_lock(conn: psycopg.Connection) -> Iterator[None]:
    """Hold the warehouse-wide load lock; another holder makes us wait up to LOCK_WAIT_S."""
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(LOCK_WAIT_S * 1000)}")))
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOAD_LOCK,))
    except psycopg.errors.LockNotAvailable:
        raise LoadConflictError(
            f"another load held the warehouse load lock for more than {LOCK_WAIT_S:.0f} s"
        ) from None
    finally:
        conn.execute("RESET lock_timeout")
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOAD_LOCK,))


def waiting_batches(settings: Settings) -> list[str]:
    """Run ids of the processed batches the ledger lacks, oldest first (what the next load
    would apply); all of them before any load."""
    with connect(resolve(WAREHOUSE, settings), autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (ddl.LEDGER_TABLE,)).fetchone()
        lookup = _in_ledger(conn) if exists and exists[0] else (lambda run_ids: set())
        return [b.run_id for b in batches.pending_batches(settings.processed_lake(), lookup)]


def _in_ledger(conn: psycopg.Connection) -> batches.Loaded:
    """Which of some run ids the ledger has (its primary key: a lookup, not a scan)."""

    def lookup(run_ids: list[str]) -> set[str]:
        query = _ledger_query("batch_run_id", "WHERE batch_run_id = ANY(%s)")
        return {r[0] for r in conn.execute(query, (run_ids,))}

    return lookup


def _load_pending(conn: psycopg.Connection, lake: Lake, run_id: str) -> LoadResult:
    pending = batches.pending_batches(lake, _in_ledger(conn))
    if not pending:
        return _recorded(conn, run_id)
    result = LoadResult(run_id, "loaded")
    for batch in pending:
        for table, n in load_batch(conn, lake, batch, run_id).items():
            result.rows[table] = result.rows.get(table, 0) + n
        result.batches.append(batch.run_id)
    return result


def _ledger_query(columns: str, where: str = "") -> sql.Composed:
    return sql.SQL("SELECT {} FROM {} {}").format(
        sql.SQL(columns), sql.Identifier(ddl.LEDGER_TABLE), sql.SQL(where)
    )


def _recorded(conn: psycopg.Connection, run_id: str) -> LoadResult:
    """Nothing pending: what this run id loaded before ("replayed"), or "nothing_to_do"."""
    rows = conn.execute(
        _ledger_query("batch_run_id, rows", "WHERE load_run_id = %s ORDER BY committed_at, 1"),
        (run_id,),
    ).fetchall()
    if not rows:
        return LoadResult(run_id, "nothing_to_do")
    result = LoadResult(run_id, "replayed", [r[0] for r in rows])
    for table in _ORDER:
        if any(table in counts for _, counts in rows):
            result.rows[table] = sum(counts.get(table, 0) for _, counts in rows)
    return result


def load_batch(
    conn: psycopg.Connection, lake: Lake, batch: batches.ProcessedBatch, load_run_id: str
) -> dict[str, int]:
    """Apply one processed batch in one transaction; return rows written per table."""
    started = time.perf_counter()
    outputs = [batch.outputs[name] for name in _ORDER if batch.outputs.get(name)]
    outputs = [out for out in outputs if out.rows]
    marks = [batch.deletes[name] for name in _ORDER if name in batch.deletes]
    marks = [out for out in marks if out.rows]
    for out in outputs:  # footers first: a missing or corrupt file fails before any write
        batches.check_output(lake, batch, out)
    for out in marks:
        batches.check_output(lake, batch, out, deletion_marks_schema(out.table))
    written: dict[str, int] = {}
    rows_in: dict[str, int] = {}
    with conn.transaction():
        for out in outputs:
            table = out.table
            rows_in[table.name] = out.rows
            if table.is_fact:
                written[table.name] = facts.append(conn, lake, out, batch.run_id)
                continue
            if table.is_history:
                written[table.name] = history.apply_history(
                    conn, lake, out, batch.run_id, batch.committed_at
                )
                continue
            written[table.name] = apply.apply_dimension(
                conn, lake, out, batch.run_id, batch.committed_at
            )
        for out in marks:  # after the facts: a version loaded by this batch is marked too
            changed = deletes.apply_marks(conn, lake, out, batch.run_id)
            written[out.table.name] = written.get(out.table.name, 0) + changed
        record_batch(conn, batch, load_run_id, written, rows_in, time.perf_counter() - started)
    duration = time.perf_counter() - started
    log.info(
        "loaded processed batch",
        extra={
            "run_id": load_run_id,
            "batch": batch.run_id,
            "rows": written,
            "rows_in": rows_in,
            "duration_s": round(duration, 3),
        },
    )
    return written


def record_batch(
    conn: psycopg.Connection,
    batch: batches.ProcessedBatch,
    load_run_id: str,
    written: dict[str, int],
    rows_in: dict[str, int],
    duration_s: float,
) -> None:
    """The ledger row: written last, inside the batch's transaction."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (batch_run_id, load_run_id, committed_at, rows, rows_in, duration_s) "
            "VALUES (%s, %s, %s, %s, %s, %s)"
        ).format(sql.Identifier(ddl.LEDGER_TABLE)),
        (
            batch.run_id,
            load_run_id,
            batch.committed_at,
            Jsonb(written),
            Jsonb(rows_in),
            duration_s,
        ),
    )
