"""A separate, non-superuser loader role against a real PostgreSQL.

The warehouse database is owned by a non-superuser owner role and PUBLIC's default
database privileges are revoked (as hardened servers do), so every privilege the loader
uses must come from `init-warehouse --grant-to`. Each granted privilege is shown to be
needed: revoked alone (with the load's own check switched off), the load fails.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.errors import InsufficientPrivilegeError
from pipeline.lake import Lake
from pipeline.load import privileges
from pipeline.load.migrations import MIGRATIONS, migrate
from pipeline.load.run import load
from pipeline.local import pgserver
from pipeline.local.cli import main
from pipeline.settings import Settings
from pipeline.warehouse_schema import FACTS
from tests.processed_builders import (
    dimension_rows,
    full_contents,
    history_batch,
    star_batch,
    write_batch,
)

pytestmark = pytest.mark.postgres
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)
T1 = T0 + dt.timedelta(hours=1)
ALL_GRANTS = [g.label(p, "{db}", "public") for g in privileges.LOADER_GRANTS for p in g.privileges]


@dataclass
class Warehouse:
    admin: str  # superuser DSN of the database
    name: str
    owner: str
    loader: str
    owner_dsn: str
    loader_dsn: str

    def labels(self) -> list[str]:
        return [label.replace("{db}", self.name) for label in ALL_GRANTS]

    def admin_sql(self, *statements: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)


@pytest.fixture
def warehouse(pg_server: str) -> Iterator[Warehouse]:
    """A database owned by a fresh non-superuser owner, a fresh loader role with nothing
    granted, and PUBLIC's CONNECT/TEMPORARY on the database revoked."""
    tag = uuid.uuid4().hex[:10]
    owner, loader, name = f"owner_{tag}", f"loader_{tag}", f"t_wh_{tag}"
    password = f"pw-{tag}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        for role in (owner, loader):
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
    admin = pgserver.create_database(pg_server, name, replace=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(*map(sql.Identifier, (name, owner)))
        )
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                *map(sql.Identifier, (name, owner))
            )
        )
    base = conninfo_to_dict(admin)
    dsn = {k: v for k, v in base.items() if k not in ("user", "password")}
    try:
        yield Warehouse(
            admin,
            name,
            owner,
            loader,
            make_conninfo(**dsn, user=owner, password=password),
            make_conninfo(**dsn, user=loader, password=password),
        )
    finally:
        pgserver.drop_database(pg_server, name)
        with psycopg.connect(pg_server, autocommit=True) as conn:
            for role in (loader, owner):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    """Two processed batches: a first load, then changed dimensions and new fact versions
    over a non-empty warehouse (the upsert, overlap and staging paths), each with the
    dimensions' histories: the second one's updates a version, adds one and drops one (a
    corrected earlier version that no longer differs)."""
    processed = Lake(str(tmp_path / "processed"))
    write_batch(processed, "b1", _first_batch(), committed_at=T0)
    second = history_batch((T0, dimension_rows()), (T1, dimension_rows(suffix="-v2")))
    write_batch(
        processed,
        "b2",
        {**star_batch(T1, ids=range(1, 9), suffix="-v2", units=20), **second},
        committed_at=T1,
    )
    return processed


def _first_batch() -> dict:
    earlier = T0 - dt.timedelta(days=1)
    history = history_batch((earlier, dimension_rows(suffix="-v0")), (T0, dimension_rows()))
    return {**star_batch(T0), **history}


def _load(dsn: str, lake: Lake, run_id: str = "load-1") -> dict:
    return load(run_id, Settings(processed_url=lake.url, warehouse_dsn=dsn)).to_dict()


def _init(warehouse: Warehouse, capsys: pytest.CaptureFixture[str]) -> dict:
    args = ["init-warehouse", "--owner-dsn", warehouse.owner_dsn, "--grant-to", warehouse.loader]
    assert main(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_init_warehouse_grants_the_loader_what_the_load_needs(
    warehouse: Warehouse, lake: Lake, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _init(warehouse, capsys)
    assert out["applied"] == [m.version for m in MIGRATIONS]
    assert out["granted"] == {warehouse.loader: warehouse.labels()}

    result = _load(warehouse.loader_dsn, lake)
    assert (result["status"], result["batches"]) == ("loaded", ["b1", "b2"])
    # The same batches loaded by a superuser: the loader's warehouse is the same.
    assert _load(pg_dsn, lake)["batches"] == ["b1", "b2"]
    assert full_contents(warehouse.admin) == full_contents(pg_dsn)
    # Granting again changes nothing and still succeeds (e.g. after a migration).
    assert _init(warehouse, capsys) == {"applied": [], "granted": out["granted"]}


def test_every_granted_privilege_is_used_by_the_load(
    warehouse: Warehouse,
    lake: Lake,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Revoke one privilege at a time, with the load's own check off: the load fails each
    time (the first batch is loaded before, so the second one takes every path)."""
    _init(warehouse, capsys)
    warehouse.admin_sql("REVOKE USAGE ON SCHEMA public FROM PUBLIC")  # only the grant's left
    first_only = Lake(str(tmp_path / "first"))
    write_batch(first_only, "b1", _first_batch(), committed_at=T0)
    assert _load(warehouse.loader_dsn, first_only, "first")["batches"] == ["b1"]
    before = full_contents(warehouse.admin)
    monkeypatch.setattr(privileges, "check_loader", lambda conn: None)

    failures = set()
    for statement, revoke in _single_revokes(warehouse):
        warehouse.admin_sql(revoke)
        try:
            _load(warehouse.loader_dsn, lake, "second")
        except (InsufficientPrivilegeError, psycopg.Error) as exc:
            failures.add(type(exc).__name__)
        else:  # (and the batch is loaded now: later attempts would prove nothing)
            pytest.fail(f"the load succeeded after {revoke!r}: granted but not needed")
        finally:
            warehouse.admin_sql(statement)
    # Unchecked, a missing privilege is a PostgreSQL "permission denied" (wrapped), or for
    # USAGE on the schema a table the load then does not see (it tries to create it).
    assert failures == {"InsufficientPrivilegeError", "InvalidSchemaName"}
    assert full_contents(warehouse.admin) == before  # every failed attempt rolled back
    assert _load(warehouse.loader_dsn, lake, "second")["batches"] == ["b2"]


def _single_revokes(warehouse: Warehouse) -> Iterator[tuple[str, str]]:
    """(GRANT, REVOKE) of each single privilege, run as the superuser."""
    for g in privileges.LOADER_GRANTS:
        for privilege in g.privileges:
            target = {"DATABASE": warehouse.name, "SCHEMA": "public"}.get(
                g.kind, f"public.{g.name}"
            )
            body = f"{privilege} ON {g.kind} {target}"
            yield (
                f"GRANT {body} TO {warehouse.loader}",
                f"REVOKE {body} FROM {warehouse.loader}",
            )


def test_a_missing_privilege_fails_the_load_before_it_writes_naming_it(
    warehouse: Warehouse, lake: Lake, capsys: pytest.CaptureFixture[str]
) -> None:
    _init(warehouse, capsys)
    warehouse.admin_sql(
        f"REVOKE UPDATE ON public.dim_staff FROM {warehouse.loader}",
        f"REVOKE TEMPORARY ON DATABASE {warehouse.name} FROM {warehouse.loader}",
    )
    before = full_contents(warehouse.admin)
    with pytest.raises(InsufficientPrivilegeError) as raised:
        _load(warehouse.loader_dsn, lake)
    message = str(raised.value)
    assert f"warehouse user {warehouse.loader} lacks " in message
    assert f"TEMPORARY on database {warehouse.name}, UPDATE on table public.dim_staff" in message
    assert f"--grant-to {warehouse.loader}" in message
    assert "pw-" not in message
    assert full_contents(warehouse.admin) == before


def test_a_first_load_by_a_user_that_may_not_create_the_schema_says_so(
    warehouse: Warehouse, lake: Lake
) -> None:
    """PostgreSQL 15+: only the database owner may create in `public`."""
    warehouse.admin_sql(
        f"GRANT CONNECT, TEMPORARY ON DATABASE {warehouse.name} TO {warehouse.loader}"
    )
    with pytest.raises(InsufficientPrivilegeError) as raised:
        _load(warehouse.loader_dsn, lake)
    message = str(raised.value)
    assert f"migrations {', '.join(m.version for m in MIGRATIONS)} are not applied" in message
    assert f"user {warehouse.loader} lacks CREATE on schema public" in message
    assert "init-warehouse --owner-dsn" in message


def test_a_loader_without_usage_on_the_schema_is_told_so(warehouse: Warehouse, lake: Lake) -> None:
    assert migrate(warehouse.owner_dsn) == [m.version for m in MIGRATIONS]
    warehouse.admin_sql(
        f"GRANT CONNECT ON DATABASE {warehouse.name} TO {warehouse.loader}",
        "REVOKE USAGE ON SCHEMA public FROM PUBLIC",
    )
    with pytest.raises(InsufficientPrivilegeError, match="lacks USAGE on schema public"):
        _load(warehouse.loader_dsn, lake)


def test_a_user_without_connect_gets_a_permanent_error_naming_it(
    warehouse: Warehouse, lake: Lake
) -> None:
    with pytest.raises(InsufficientPrivilegeError, match="CONNECT"):
        _load(warehouse.loader_dsn, lake)


def test_granting_as_a_user_that_does_not_own_the_database_names_what_did_not_take(
    warehouse: Warehouse, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tables' owner is not the database's: PostgreSQL only warns on its database
    GRANT; init-warehouse checks the result and fails naming what is missing."""
    warehouse.admin_sql(
        f"ALTER DATABASE {warehouse.name} OWNER TO CURRENT_USER",
        f"GRANT CONNECT ON DATABASE {warehouse.name} TO {warehouse.owner}",
        f"GRANT CREATE ON SCHEMA public TO {warehouse.owner}",
    )
    args = ["init-warehouse", "--owner-dsn", warehouse.owner_dsn, "--grant-to", warehouse.loader]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "InsufficientPrivilegeError" in err
    assert (
        f"could not grant {warehouse.loader} CONNECT on database {warehouse.name}, "
        f"TEMPORARY on database {warehouse.name} (" in err
    )


def test_granting_to_a_role_that_does_not_exist_is_refused(
    warehouse: Warehouse, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["init-warehouse", "--owner-dsn", warehouse.owner_dsn, "--grant-to", "no_such_role"]
    assert main(args) == 2
    assert "role 'no_such_role' does not exist" in capsys.readouterr().err


def test_the_printed_script_run_by_psql_sets_up_what_init_warehouse_does(
    warehouse: Warehouse,
    lake: Lake,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    pg_server_info: pgserver.Server,
) -> None:
    """The DBA's way: `--print-sql` (no connection), then psql as the owner (the psql of
    the server under test). The load then finds the schema up to date (same checksums)
    and the loader's grants complete."""
    args = [
        "init-warehouse", "--print-sql", "--grant-to", warehouse.loader,
        "--database", warehouse.name,
    ]  # fmt: skip
    assert main(args) == 0
    script = tmp_path / "warehouse.sql"
    script.write_text(capsys.readouterr().out)
    subprocess.run(
        [
            pg_server_info.psql,
            warehouse.owner_dsn,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-1",
            "-f",
            str(script),
        ],
        check=True,
        capture_output=True,
    )
    assert migrate(warehouse.owner_dsn) == []  # recorded with the checksums migrate computes
    with psycopg.connect(warehouse.owner_dsn) as conn:
        assert privileges.missing_privileges(conn, warehouse.loader, "public") == []
        for migration in MIGRATIONS:
            assert migration.checksum(conn) == migration.checksum()
    assert _load(warehouse.loader_dsn, lake)["batches"] == ["b1", "b2"]


def test_the_sequence_names_are_the_ones_postgresql_gives_the_serial_columns(pg_dsn: str) -> None:
    migrate(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        for g in privileges.LOADER_GRANTS:
            if g.kind == "SEQUENCE":
                table, column = next(
                    (t.name, t.primary_key)
                    for t in FACTS
                    if privileges.serial_sequence(t.name, t.primary_key) == g.name
                )
                (found,) = conn.execute(
                    "SELECT pg_get_serial_sequence(%s, %s)", (table, column)
                ).fetchone()
                assert found == f"public.{g.name}"
