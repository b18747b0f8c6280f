import psycopg
import pytest

from pipeline.credentials import connect
from pipeline.errors import AuthenticationError, SourceUnavailableError
from pipeline.local.pgserver import docker_engine_available, with_dbname
from pipeline.local.simulator.schema import create_source_schema


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
