"""Source sessions: kept per process, reused only when clean, replaced when dead (R13)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
import pytest

from pipeline.errors import SchemaDriftError
from pipeline.extract import extract_table
from pipeline.extract.source import _POOL
from pipeline.settings import Settings
from tests.integration.extract.helpers import add_currencies, lake_url, source

__all__ = ["lake_url", "source"]  # fixtures

APP = "totesys-etl extract"


def run(source: str, lake_url: str, run_id: str, table: str = "currency"):
    return extract_table(table, run_id, Settings(ingest_url=lake_url, source_dsn=source))


def sessions(dsn: str) -> list[int]:
    """Backend pids of this database's extract sessions (idle ones included)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database() ORDER BY pid",
            (APP,),
        ).fetchall()
    return [r[0] for r in rows]


def settled_sessions(dsn: str, expected_count: int) -> list[int]:
    """`sessions`, after waiting (up to 5 s) for closed ones to leave pg_stat_activity."""
    deadline = time.monotonic() + 5
    while len(found := sessions(dsn)) != expected_count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@pytest.fixture(autouse=True)
def _empty_pool():
    _POOL.clear()
    yield
    _POOL.clear()


def test_consecutive_extractions_reuse_one_session(source: str, lake_url: str) -> None:
    add_currencies(source, ["2024-11-04 09:00:00.000"])
    run(source, lake_url, "r1")
    first = sessions(source)
    assert len(first) == 1
    for i, table in enumerate(("currency", "department", "design", "staff")):
        run(source, lake_url, f"r2-{i}", table=table)
    assert sessions(source) == first


def test_a_long_idle_session_is_closed_not_reused(
    source: str, lake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(source, lake_url, "r1")
    first = sessions(source)
    monkeypatch.setattr(_POOL, "max_idle", 0.0)
    run(source, lake_url, "r2", table="department")
    now = settled_sessions(source, 1)
    assert len(now) == 1 and now != first


def test_a_kept_session_the_server_closed_is_replaced(source: str, lake_url: str) -> None:
    run(source, lake_url, "r1")
    with psycopg.connect(source, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (APP,),
        )
    add_currencies(source, ["2024-11-04 10:00:00.000"])
    result = run(source, lake_url, "r2")
    assert result.status == "ok" and result.rows >= 1


def test_a_failed_extraction_does_not_keep_its_session(source: str, lake_url: str) -> None:
    run(source, lake_url, "r1")
    before = sessions(source)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE currency DROP COLUMN currency_code")
    with pytest.raises(SchemaDriftError):
        run(source, lake_url, "r2")
    assert settled_sessions(source, 0) == []  # the session that saw the error is closed
    assert run(source, lake_url, "r3", table="department").status == "ok"
    assert sessions(source) != before


def test_extract_loads_neither_pandas_nor_polars(source: str, lake_url: str) -> None:
    """Cold start: `adbc_driver_manager.dbapi` and `pa.array` would import pandas (~1 s)."""
    add_currencies(source, ["2024-11-04 09:00:00.000"])
    code = (
        "import json, sys\n"
        "from pipeline.extract import extract_table\n"
        "from pipeline.settings import Settings\n"
        "s = Settings(ingest_url=sys.argv[1], source_dsn=sys.stdin.read())\n"
        "r = extract_table('currency', 'r1', s)\n"
        "print(json.dumps([r.rows] + [m for m in ('pandas', 'polars', 'pyarrow.dataset') "
        "if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, lake_url],
        input=source,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [2]
