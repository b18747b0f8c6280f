"""Versioned, idempotent warehouse migrations.

Each migration runs once, in order, in its own transaction, under a transaction-level
advisory lock, and is recorded in `schema_migrations` with a checksum of its SQL. The
first migration is generated from `pipeline.warehouse_schema`; if that definition later
changes, the recorded checksum no longer matches and `migrate` refuses with
`MigrationError` instead of silently leaving an old schema in place: schema changes
ship as a new migration.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from pipeline.errors import MigrationError
from pipeline.load import ddl

if TYPE_CHECKING:
    from pipeline.credentials import Database

MIGRATIONS_TABLE = "schema_migrations"
MIGRATION_LOCK = 0x70E5_0001  # pg_advisory_xact_lock key, one per database


@dataclass(frozen=True)
class Migration:
    version: str
    description: str
    statements: Callable[[], list[sql.Composed]]

    def rendered(self, conn: psycopg.Connection) -> list[str]:
        return [s.as_string(conn) for s in self.statements()]

    def checksum(self, conn: psycopg.Connection) -> str:
        return hashlib.sha256(";\n".join(self.rendered(conn)).encode()).hexdigest()


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001", "star schema: 8 dimensions, 3 facts", ddl.star_schema_statements),
    Migration("0002", "load ledger", ddl.ledger_statements),
)


def _applied(conn: psycopg.Connection) -> dict[str, str]:
    """version -> checksum of what is recorded (empty before the first migration)."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATIONS_TABLE,)).fetchone()
    if not (exists and exists[0]):
        return {}
    query = sql.SQL("SELECT version, checksum FROM {}").format(sql.Identifier(MIGRATIONS_TABLE))
    return dict(conn.execute(query).fetchall())


def _check(migration: Migration, recorded: str, conn: psycopg.Connection) -> None:
    if recorded != migration.checksum(conn):
        raise MigrationError(
            f"warehouse migration {migration.version} ({migration.description}) was applied "
            "with different SQL than this code generates: the schema definition changed. "
            "Add a new migration for the change instead of editing an applied one."
        )


def apply_migrations(conn: psycopg.Connection) -> list[str]:
    """Apply pending migrations on an autocommit connection; return the versions applied."""
    recorded = _applied(conn)
    if all(m.version in recorded for m in MIGRATIONS):  # fast path: no lock needed
        for m in MIGRATIONS:
            _check(m, recorded[m.version], conn)
        return []
    applied = []
    table = sql.Identifier(MIGRATIONS_TABLE)
    for migration in MIGRATIONS:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (version text PRIMARY KEY, "
                    "description text NOT NULL, checksum text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
                ).format(table)
            )
            row = conn.execute(
                sql.SQL("SELECT checksum FROM {} WHERE version = %s").format(table),
                (migration.version,),
            ).fetchone()
            if row:
                _check(migration, row[0], conn)
                continue
            for statement in migration.statements():
                conn.execute(statement)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (version, description, checksum) VALUES (%s, %s, %s)"
                ).format(table),
                (migration.version, migration.description, migration.checksum(conn)),
            )
            applied.append(migration.version)
    return applied


def migrate(dsn: str | Database) -> list[str]:
    """Bring the warehouse schema at `dsn` up to date; return the versions applied now."""
    from pipeline.credentials import connect

    with connect(dsn, what="warehouse", autocommit=True) as conn:
        return apply_migrations(conn)
