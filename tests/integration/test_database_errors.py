"""Errors name the right database and the right cause, against a real PostgreSQL.

Source vs warehouse (a warehouse outage is `WarehouseUnavailableError`, retried); an
unreachable server is transient; a missing database, a bad port or sslmode and bad
credentials are permanent and fail at once; each message names the setting used.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from pipeline.errors import (
    AuthenticationError,
    ConfigurationError,
    PermanentError,
    SourceUnavailableError,
    WarehouseUnavailableError,
)
from pipeline.settings import Settings
from tests.hostile_pg import closed_port

pytestmark = pytest.mark.postgres


def _steps(tmp_path: Path, dsn: str) -> dict[str, tuple[object, str]]:
    from pipeline.extract import extract_table
    from pipeline.load import load

    lakes = {"ingest_url": str(tmp_path / "in"), "processed_url": str(tmp_path / "out")}
    source = Settings(**lakes).with_flags(source_dsn=dsn)
    warehouse = Settings.from_env({"WAREHOUSE_DSN": dsn}).replace(**lakes)
    return {
        "source": (lambda: extract_table("currency", "r1", source), "--source-dsn"),
        "warehouse": (lambda: load("r1", warehouse), "WAREHOUSE_DSN"),
    }


def test_an_unreachable_database_is_transient_and_names_its_role(tmp_path: Path, pg_dsn):
    dead = make_conninfo(pg_dsn, port=str(closed_port()))
    steps = _steps(tmp_path, dead)
    expected_errors = {"source": SourceUnavailableError, "warehouse": WarehouseUnavailableError}
    for role, expected in expected_errors.items():
        step, setting = steps[role]
        with pytest.raises(expected) as info:
            step()  # type: ignore[operator]
        assert f"{role} database" in str(info.value) and setting in str(info.value)


@pytest.mark.parametrize(
    ("change", "error", "says"),
    [
        ({"dbname": "no_such_database"}, ConfigurationError, "does not exist"),
        ({"password": "Wrong-Pw-314159"}, AuthenticationError, "authentication failed"),
        ({"user": "no_such_role"}, AuthenticationError, "authentication failed"),
        ({"port": "not-a-port"}, ConfigurationError, "not a port number"),
        ({"sslmode": "bogus"}, ConfigurationError, "sslmode"),
        ({"sslmode": "require"}, ConfigurationError, "SSL"),
    ],
)
@pytest.mark.parametrize("role", ["source", "warehouse"])
def test_permanent_causes_fail_fast_and_name_the_setting(
    tmp_path: Path, pg_dsn: str, change: dict, error: type, says: str, role: str
) -> None:
    step, setting = _steps(tmp_path, make_conninfo(pg_dsn, **change))[role]
    started = time.perf_counter()
    with pytest.raises(error) as info:
        step()  # type: ignore[operator]
    assert isinstance(info.value, PermanentError)
    message = str(info.value)
    assert says in message and setting in message and role in message
    assert "Wrong-Pw-314159" not in message
    assert time.perf_counter() - started < 5
