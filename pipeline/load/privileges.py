"""What the load needs in the warehouse, written once.

Three users of the one list (`LOADER_GRANTS`): `totesys-etl init-warehouse --grant-to ROLE`
grants it (and checks that every grant took: PostgreSQL only warns when the granting user
may not grant something); the load checks it before it writes anything, so a missing
privilege fails the first load with its name instead of a bare "permission denied" half
way; and docs/DEPLOY.md's SQL for a DBA is generated from it (`grant_script`; a test
keeps the two equal).

The load needs: to connect and stage rows in temporary tables (`CONNECT`, `TEMPORARY` on
the database), to find its tables (`USAGE` on their schema), to read the migration
history (`SELECT` on `schema_migrations`), to upsert dimensions (`SELECT, INSERT,
UPDATE`; `UPDATE` also lets it take the `SHARE ROW EXCLUSIVE` lock of the upsert), to
append facts and mark their versions (`SELECT, INSERT, UPDATE`: `_superseded_at` of
replaced versions, `_deleted_at` of deleted source rows, corrected values) and keep their
serial sequences in step (`UPDATE`, for `setval`), to replace a key's versions in the
history tables (`SELECT, INSERT, UPDATE, DELETE`: a late version can merge two into one,
docs/HISTORY.md; their version ids are identity columns, which need no sequence
privilege), to keep the report summaries (`SELECT, INSERT, UPDATE`: each batch adds its
groups, `pipeline.load.summaries`), and to write its ledger (`SELECT, INSERT`). Nothing
else: no `DELETE` elsewhere, no `TRUNCATE`, no `CREATE` (the owner creates and migrates the schema).

All lookups go through the system catalogs by OID, so a user without `USAGE` on the
schema still gets a message naming that privilege rather than an error of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pipeline.errors import ConfigurationError, InsufficientPrivilegeError
from pipeline.load import ddl
from pipeline.load.migrations import MIGRATIONS_TABLE, pending_versions
from pipeline.summary_schema import SUMMARY_TABLES
from pipeline.warehouse_schema import DIMENSIONS, FACTS, HISTORIES

HOW_TO_GRANT = (
    "as the owner, run `totesys-etl init-warehouse --owner-dsn <owner DSN> --grant-to {role}`, "
    "or the GRANTs in docs/DEPLOY.md (Warehouse user)"
)


@dataclass(frozen=True)
class Grant:
    """Privileges on one object. `name` is None for the database and the schema (the
    current ones: where the connection finds the warehouse tables)."""

    kind: str  # "DATABASE" | "SCHEMA" | "TABLE" | "SEQUENCE"
    name: str | None
    privileges: tuple[str, ...]

    def label(self, privilege: str, database: str, schema: str) -> str:
        where = {"DATABASE": database, "SCHEMA": schema}.get(self.kind, f"{schema}.{self.name}")
        return f"{privilege} on {self.kind.lower()} {where}"


def serial_sequence(table_name: str, column: str) -> str:
    """The sequence a `serial` column gets (PostgreSQL's `<table>_<column>_seq`)."""
    return f"{table_name}_{column}_seq"


LOADER_GRANTS: tuple[Grant, ...] = (
    Grant("DATABASE", None, ("CONNECT", "TEMPORARY")),
    Grant("SCHEMA", None, ("USAGE",)),
    Grant("TABLE", MIGRATIONS_TABLE, ("SELECT",)),
    Grant("TABLE", ddl.LEDGER_TABLE, ("SELECT", "INSERT")),
    *(Grant("TABLE", t.name, ("SELECT", "INSERT", "UPDATE")) for t in DIMENSIONS),
    *(Grant("TABLE", t.name, ("SELECT", "INSERT", "UPDATE")) for t in FACTS),
    *(Grant("TABLE", t.name, ("SELECT", "INSERT", "UPDATE", "DELETE")) for t in HISTORIES),
    *(Grant("SEQUENCE", serial_sequence(t.name, t.primary_key), ("UPDATE",)) for t in FACTS),
    *(Grant("TABLE", name, ("SELECT", "INSERT", "UPDATE")) for name in SUMMARY_TABLES),
)


def grant_statements(role: str, database: str, schema: str) -> list[sql.Composed]:
    """One GRANT per object of `LOADER_GRANTS`, for `role`."""
    statements = []
    for g in LOADER_GRANTS:
        target = {
            "DATABASE": sql.Identifier(database),
            "SCHEMA": sql.Identifier(schema),
        }.get(g.kind) or sql.Identifier(schema, str(g.name))
        statements.append(
            sql.SQL("GRANT {} ON {} {} TO {}").format(
                sql.SQL(", ").join(map(sql.SQL, g.privileges)),
                sql.SQL(g.kind),
                target,
                sql.Identifier(role),
            )
        )
    return statements


def grant_script(role: str, database: str, schema: str) -> str:
    """The GRANTs as SQL text (docs/DEPLOY.md, `init-warehouse --print-sql --grant-to`)."""
    return "".join(s.as_string(None) + ";\n" for s in grant_statements(role, database, schema))


# -- checking --------------------------------------------------------------------------
def _one(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def warehouse_schema(conn: psycopg.Connection, user: str) -> str:
    """The schema the connection creates and finds the warehouse tables in.

    PostgreSQL skips search_path entries the user may not use, so without USAGE on the
    intended schema `current_schema()` is empty: then the first existing schema of the
    search path is the intended one, and the missing USAGE is what to report.
    """
    if schema := _one(conn, "SELECT current_schema()"):
        return str(schema)
    path = str(_one(conn, "SELECT current_setting('search_path')"))
    names = [n.strip().strip('"') for n in path.split(",") if n.strip()]
    names = [user if n == "$user" else n for n in names]
    existing = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
    for name in names:
        if name in existing:
            raise InsufficientPrivilegeError(
                f"warehouse user {user} lacks USAGE on schema {name} (the first schema of its "
                f"search_path {path}), which the load needs; {HOW_TO_GRANT.format(role=user)}"
            )
    raise ConfigurationError(
        f"warehouse user {user}: its search_path ({path}) names no existing schema; set it "
        f"to the schema of the warehouse tables (ALTER ROLE {user} SET search_path = public)"
    )


def missing_privileges(conn: psycopg.Connection, role: str, schema: str) -> list[str]:
    """`LOADER_GRANTS` that `role` does not hold, labelled ("INSERT on table public.x").

    An object that does not exist (a migration not applied yet) counts as missing too.
    """
    kinds, names, privileges = [], [], []
    for g in LOADER_GRANTS:
        for privilege in g.privileges:
            kinds.append(g.kind)
            names.append(g.name or "")
            privileges.append(privilege)
    rows = conn.execute(
        """
        SELECT g.ord, CASE g.kind
            WHEN 'DATABASE' THEN has_database_privilege(%(role)s, d.oid, g.priv)
            WHEN 'SCHEMA' THEN has_schema_privilege(%(role)s, n.oid, g.priv)
            WHEN 'TABLE' THEN has_table_privilege(%(role)s, c.oid, g.priv)
            WHEN 'SEQUENCE' THEN has_sequence_privilege(%(role)s, c.oid, g.priv)
          END
        FROM unnest(%(kinds)s::text[], %(names)s::text[], %(privs)s::text[])
               WITH ORDINALITY AS g(kind, name, priv, ord)
        JOIN pg_database d ON d.datname = current_database()
        JOIN pg_namespace n ON n.nspname = %(schema)s
        LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = g.name
        ORDER BY g.ord
        """,
        {"role": role, "kinds": kinds, "names": names, "privs": privileges, "schema": schema},
    ).fetchall()
    held = {int(ordinal) - 1 for ordinal, ok in rows if ok}
    database = str(_one(conn, "SELECT current_database()"))
    labels = []
    i = 0
    for g in LOADER_GRANTS:
        for privilege in g.privileges:
            if i not in held:
                labels.append(g.label(privilege, database, schema))
            i += 1
    return labels


def _may_create(conn: psycopg.Connection, user: str, schema: str) -> bool:
    return bool(
        _one(
            conn,
            "SELECT has_schema_privilege(%s, n.oid, 'CREATE') FROM pg_namespace n "
            "WHERE n.nspname = %s",
            (user, schema),
        )
    )


def _pending(conn: psycopg.Connection, user: str, schema: str) -> list[str]:
    """Migrations not applied yet; reading the history needs SELECT on it first."""
    readable = _one(
        conn,
        "SELECT has_table_privilege(%s, c.oid, 'SELECT') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (user, schema, MIGRATIONS_TABLE),
    )
    if readable is False:
        raise InsufficientPrivilegeError(
            f"warehouse user {user} lacks SELECT on table {schema}.{MIGRATIONS_TABLE}, which "
            f"the load needs; {HOW_TO_GRANT.format(role=user)}"
        )
    return pending_versions(conn)


def _require_create(conn: psycopg.Connection, user: str, schema: str, pending: list[str]) -> None:
    """Pending migrations need CREATE on the schema (PostgreSQL 15+ grants it on `public`
    only to the database owner)."""
    if pending and not _may_create(conn, user, schema):
        database = _one(conn, "SELECT current_database()")
        raise InsufficientPrivilegeError(
            f"warehouse {database}: migrations {', '.join(pending)} are not applied and user "
            f"{user} lacks CREATE on schema {schema} to apply them. Run `totesys-etl "
            f"init-warehouse --owner-dsn <DSN>` as the schema's owner (e.g. the database "
            f"owner) and, for a separate loader, `--grant-to {user}`; or have the owner run "
            f"GRANT CREATE ON SCHEMA {schema} TO {user}"
        )


def check_can_migrate(conn: psycopg.Connection) -> None:
    """Before migrating (`init-warehouse`): the user may apply what is pending."""
    user = str(_one(conn, "SELECT current_user"))
    schema = warehouse_schema(conn, user)
    _require_create(conn, user, schema, _pending(conn, user, schema))


def check_loader(conn: psycopg.Connection) -> None:
    """The load's check before it writes anything: either it may apply the pending
    migrations itself (it then owns what it creates), or it holds every loader grant."""
    user = str(_one(conn, "SELECT current_user"))
    schema = warehouse_schema(conn, user)
    if pending := _pending(conn, user, schema):
        _require_create(conn, user, schema, pending)
        return  # the load creates the tables itself, as their owner
    if missing := missing_privileges(conn, user, schema):
        database = _one(conn, "SELECT current_database()")
        raise InsufficientPrivilegeError(
            f"warehouse user {user} lacks {', '.join(missing)} in database {database}, which "
            f"the load needs; {HOW_TO_GRANT.format(role=user)}"
        )


def grant_loader(conn: psycopg.Connection, role: str) -> list[str]:
    """Grant `role` what the load needs (after the migrations); return what was granted.

    PostgreSQL only warns when the granting user may not grant a privilege (it must own
    the object, or hold the privilege WITH GRANT OPTION), so the role's privileges are
    checked afterwards and any that did not take are an error naming them.
    """
    if not _one(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
        raise ConfigurationError(
            f"role {role!r} does not exist in this PostgreSQL server: create it first "
            f"(CREATE ROLE {role} LOGIN PASSWORD '...', docs/DEPLOY.md), then grant again"
        )
    user = str(_one(conn, "SELECT current_user"))
    schema = warehouse_schema(conn, user)
    database = str(_one(conn, "SELECT current_database()"))
    with conn.transaction():
        for statement in grant_statements(role, database, schema):
            conn.execute(statement)
    if missing := missing_privileges(conn, role, schema):
        raise InsufficientPrivilegeError(
            f"user {user} could not grant {role} {', '.join(missing)} (PostgreSQL granted "
            "nothing there: only an object's owner, or a holder WITH GRANT OPTION, may): "
            f"run init-warehouse as the owner of database {database} and schema {schema}"
        )
    return [
        g.label(privilege, database, schema) for g in LOADER_GRANTS for privilege in g.privileges
    ]
