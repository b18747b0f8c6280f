"""Run the report's queries against the warehouse: concurrently, on one snapshot.

The three fact queries and the dimension lineage each take one connection, so the server
works on them in parallel; every connection imports the snapshot the first one exported
(`pg_export_snapshot`), so all charts describe the same instant even while a load commits.
Only the grouped results come back (a few hundred rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pipeline.credentials import connect, redact
from pipeline.errors import ConfigurationError, SourceUnavailableError
from pipeline.load import ddl
from pipeline.load.migrations import MIGRATIONS, pending_versions, version_of
from pipeline.load.summaries import summary_statements
from pipeline.report import queries
from pipeline.report.window import ReportWindow

Rows = list[dict[str, Any]]

STAR_SCHEMA = version_of(ddl.star_schema_statements)
SUMMARIES_MIGRATION = version_of(summary_statements)  # optional: without it, the facts

# Per report session: UTC dates; the grouping hashes held in memory (a few hundred MB at
# millions of distinct items, far less usually); no JIT compile (it costs more than it
# saves on these one-pass queries).
SESSION_SETTINGS = (
    "SET LOCAL TIME ZONE 'UTC'",
    "SET LOCAL work_mem = '256MB'",
    "SET LOCAL jit = off",
)

HEAVY_QUERIES = {
    "sales": queries.sales_query,
    "purchases": queries.purchases_query,
    "payments": queries.payments_query,
    "dimension_lineage": queries.dimension_lineage_query,
}


@dataclass(frozen=True)
class WarehouseResults:
    sales: Rows
    purchases: Rows
    payments: Rows
    dimension_lineage: Rows
    ledger: Rows
    ledger_summary: dict[str, Any]

    def part(self, star: str, name: str) -> Rows:
        """The rows of one `part` of a star's result (e.g. `part("sales", "month")`)."""
        return [r for r in getattr(self, star) if r["part"] == name]


def gather(
    dsn: str, window: ReportWindow, today: date, *, summaries: bool = True
) -> WarehouseResults:
    """Every chart's grouped numbers, from one consistent snapshot of the warehouse.

    Over all dates (no window) and with `summaries`, the charts read the summaries the load
    keeps (`pipeline.load.summaries`: thousands of rows); a window needs the facts' own
    dates, so it reads the facts, as does a warehouse not migrated to the summaries yet.
    Both give the same numbers (tests/integration/report/test_report_numbers.py).
    """
    params = {**window.params(), "today": today}
    try:
        with _session(dsn) as leader:
            absent = _check_schema(leader)
            summarized = summaries and window.since is None and window.until is None
            summarized = summarized and not absent
            exported = leader.execute("SELECT pg_export_snapshot() AS id").fetchone()
            snapshot = str(exported["id"]) if exported else ""
            with ThreadPoolExecutor(max_workers=len(HEAVY_QUERIES)) as pool:
                futures = {
                    name: pool.submit(_run_in_snapshot, dsn, snapshot, build(summarized), params)
                    for name, build in HEAVY_QUERIES.items()
                }
                ledger = leader.execute(queries.ledger_query(), params).fetchall()
                summary = leader.execute(queries.ledger_summary_query()).fetchone() or {}
                results = {name: future.result() for name, future in futures.items()}
    except psycopg.OperationalError as exc:
        raise SourceUnavailableError(
            f"warehouse connection failed while building the report: {redact(str(exc))}"
        ) from None
    return WarehouseResults(ledger=ledger, ledger_summary=summary, **results)


@contextmanager
def _session(dsn: str, snapshot: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A read-only REPEATABLE READ transaction (on `snapshot` when given)."""
    with connect(dsn, what="warehouse", row_factory=dict_row) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            if snapshot is not None:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            for setting in SESSION_SETTINGS:
                conn.execute(sql.SQL(setting))
            yield conn


def _run_in_snapshot(dsn: str, snapshot: str, query: sql.Composed, params: dict[str, Any]) -> Rows:
    with _session(dsn, snapshot) as conn:
        rows: Rows = conn.execute(query, params).fetchall()
        return rows


def _check_schema(conn: psycopg.Connection[Any]) -> bool:
    """Every migration the report reads must be applied (the migration ledger says which
    are): a clear error naming them instead of a SQL one, or numbers counted without the
    version marks. The summaries may be missing (a warehouse a load has not migrated yet):
    True then, and the report reads the facts."""
    pending = pending_versions(conn)
    if STAR_SCHEMA.version in pending:
        raise ConfigurationError(
            "the warehouse has no star schema: create it with `totesys-etl init-warehouse` "
            "(or run a load) before building the report"
        )
    needed = [m for m in MIGRATIONS if m.version in pending and m is not SUMMARIES_MIGRATION]
    if needed:
        names = ", ".join(f"{m.version} ({m.description})" for m in needed)
        raise ConfigurationError(
            f"the warehouse schema predates this report: migration {names} is not applied: "
            "bring it up to date with `totesys-etl init-warehouse` (or run a load)"
        )
    return SUMMARIES_MIGRATION.version in pending
