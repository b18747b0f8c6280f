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
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from pipeline.errors import MigrationError
from pipeline.load import ddl, summaries

if TYPE_CHECKING:
    from pipeline.credentials import Database

MIGRATIONS_TABLE = "schema_migrations"

MIGRATION_LOCK = 0x70E5_0001  # pg_advisory_xact_lock key, one per database


@dataclass(frozen=True)
class Migration:
    version: str
    description: str
    statements: Callable[[], list[sql.Composed]]

    def rendered(self, conn: psycopg.Connection | None = None) -> list[str]:
        """The statements as SQL text (identifiers are quoted alike with or without a
        connection: tests/integration/load/test_privileges.py checks it)."""
        return [s.as_string(conn) for s in self.statements()]

    def checksum(self, conn: psycopg.Connection | None = None) -> str:
        return hashlib.sha256(";\n".join(self.rendered(conn)).encode()).hexdigest()


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001", "star schema: 8 dimensions, 3 facts", ddl.star_schema_statements),
    Migration("0002", "load ledger", ddl.ledger_statements),
    Migration("0003", "_deleted_at on every dimension and fact", ddl.deleted_column_statements),
    Migration("0004", "dimension history tables", ddl.history_statements),
    Migration("0005", "_superseded_at on every fact", ddl.superseded_column_statements),
    Migration("0006", "report summaries of the facts' current rows", summaries.summary_statements),
)


def migrations_table_statement() -> sql.Composed:
    """The bookkeeping table, created by the first migration run (or the printed script)."""
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (version text PRIMARY KEY, "
        "description text NOT NULL, checksum text NOT NULL, "
        "applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ).format(sql.Identifier(MIGRATIONS_TABLE))


def record_statement(migration: Migration) -> sql.Composed:
    """The bookkeeping row of one applied migration."""
    return sql.SQL("INSERT INTO {} (version, description, checksum) VALUES ({}, {}, {})").format(
        sql.Identifier(MIGRATIONS_TABLE),
        sql.Literal(migration.version),
        sql.Literal(migration.description),
        sql.Literal(migration.checksum()),
    )


def pending_versions(conn: psycopg.Connection[Any]) -> list[str]:
    """Versions not applied yet (all of them in an empty schema)."""
    recorded = _applied(conn)
    return [m.version for m in MIGRATIONS if m.version not in recorded]


def version_of(statements: Callable[[], list[sql.Composed]]) -> Migration:
    """The migration made of `statements`: a reader names the migration it needs by what
    it does, so no caller spells a version number."""
    return next(m for m in MIGRATIONS if m.statements is statements)


def _applied(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """version -> checksum of what is recorded (empty before the first migration)."""
    with conn.cursor(row_factory=tuple_row) as cur:  # whatever the connection's row factory
        exists = cur.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATIONS_TABLE,)).fetchone()
        if not (exists and exists[0]):
            return {}
        query = sql.SQL("SELECT version, checksum FROM {}").format(sql.Identifier(MIGRATIONS_TABLE))
        return {str(v): str(c) for v, c in cur.execute(query).fetchall()}


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
            conn.execute(migrations_table_statement())
            row = conn.execute(
                sql.SQL("SELECT checksum FROM {} WHERE version = %s").format(table),
                (migration.version,),
            ).fetchone()
            if row:
                _check(migration, row[0], conn)
                continue
            for statement in migration.statements():
                conn.execute(statement)
            conn.execute(record_statement(migration))
            applied.append(migration.version)
    return applied


def migration_script() -> str:
    """Every migration as one SQL script, for a DBA who sets the schema up by hand
    (`totesys-etl init-warehouse --print-sql`): the same statements and bookkeeping rows
    `apply_migrations` writes, so the load finds the schema up to date."""
    lines = [
        "-- The totesys-etl warehouse schema: run once, as the owner of the warehouse tables,",
        '-- in one transaction: psql "$OWNER_DSN" -v ON_ERROR_STOP=1 -1 -f warehouse.sql',
        migrations_table_statement().as_string(None) + ";",
    ]
    for migration in MIGRATIONS:
        lines.append(f"-- migration {migration.version}: {migration.description}")
        lines.extend(statement + ";" for statement in migration.rendered())
        lines.append(record_statement(migration).as_string(None) + ";")
    return "\n".join(lines) + "\n"


def migrate(dsn: str | Database) -> list[str]:
    """Bring the warehouse schema at `dsn` up to date; return the versions applied now.

    The user must be allowed to create the tables (checked first, with a message naming
    the privilege it lacks); `pipeline.load.privileges.grant_loader` then grants a
    separate loader role what the load needs."""
    from pipeline.credentials import connect
    from pipeline.load.privileges import check_can_migrate

    with connect(dsn, what="warehouse", autocommit=True) as conn:
        check_can_migrate(conn)
        return apply_migrations(conn)
