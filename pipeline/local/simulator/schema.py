"""DDL of the totesys source database, generated from the catalog so the two cannot disagree.

The result is the production schema (`pipeline.catalog`): Prisma's quoted CamelCase enum
types, `_prisma_migrations`, each table's column order, `serial` keys (sequences owned by
their columns), `created_at DEFAULT CURRENT_TIMESTAMP`, foreign keys `ON UPDATE CASCADE`
with the catalog's ON DELETE rule, and unique *indexes* (not constraints) named
`<table>_<column>_key`. Constraint names are PostgreSQL's defaults (`<table>_pkey`,
`<table>_<column>_fkey`), as in production.

Production has no index on the cursor column. `cursor_indexes=True` adds the one we would
recommend to its DBA, `(last_updated, <key>)` per table: an incremental extraction then
reads its window by an index range scan, already in the order it writes, instead of
scanning the table (docs/OPERATIONS.md has the measured difference).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pipeline.catalog import ENUMS, SCHEMA_TABLES, TABLES, Column, Relation, Table

# Enum type names of simulator versions before the catalog followed production: dropped
# too when a database is re-seeded with `force`, so no stray type stays behind.
_LEGACY_TYPES = ("payment_type_name", "transaction_type")


def _type_sql(column: Column) -> sql.Composable:
    if column.enum_labels is not None:
        return sql.Identifier(column.pg_type)
    return sql.SQL(column.pg_type)  # a type name spelled out in the catalog


def _column_sql(table: Relation, column: Column) -> sql.Composable:
    parts: list[sql.Composable] = [sql.Identifier(column.name)]
    if column.name == table.primary_key:
        parts.append(sql.SQL("serial") if table.serial_key else _type_sql(column))
        parts.append(sql.SQL("PRIMARY KEY"))
        return sql.SQL(" ").join(parts)
    parts.append(_type_sql(column))
    if not column.nullable:
        parts.append(sql.SQL("NOT NULL"))
    if column.default is not None:
        parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(column.default)))
    if column.references:
        parts.append(
            sql.SQL("REFERENCES {} ({}) ON UPDATE {} ON DELETE {}").format(
                sql.Identifier(column.references),
                sql.Identifier(TABLES[column.references].primary_key),
                sql.SQL(column.on_update),
                sql.SQL(column.on_delete),
            )
        )
    return sql.SQL(" ").join(parts)


def unique_index_name(table: Relation, column: Column) -> str:
    return f"{table.name}_{column.name}_key"


def cursor_index_name(table: Table) -> str:
    """PostgreSQL's default name for an index on (cursor, key)."""
    return f"{table.name}_{table.cursor}_{table.primary_key}_idx"


def create_statements() -> list[sql.Composed]:
    """CREATE TYPE / CREATE TABLE / CREATE UNIQUE INDEX statements in dependency order."""
    statements: list[sql.Composed] = [
        sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.Literal(v) for v in values)
        )
        for name, values in ENUMS.items()
    ]
    for table in SCHEMA_TABLES:
        statements.append(
            sql.SQL("CREATE TABLE {} (\n  {}\n)").format(
                sql.Identifier(table.name),
                sql.SQL(",\n  ").join(_column_sql(table, c) for c in table.columns),
            )
        )
    for table in SCHEMA_TABLES:
        for column in table.columns:
            if column.unique:
                statements.append(
                    sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})").format(
                        sql.Identifier(unique_index_name(table, column)),
                        sql.Identifier(table.name),
                        sql.Identifier(column.name),
                    )
                )
    return statements


def cursor_index_statements(*, if_not_exists: bool = False) -> list[sql.Composed]:
    """The opt-in `(last_updated, <key>)` index of every business table."""
    create = sql.SQL("CREATE INDEX IF NOT EXISTS" if if_not_exists else "CREATE INDEX")
    return [
        sql.SQL("{} {} ON {} ({}, {})").format(
            create,
            sql.Identifier(cursor_index_name(table)),
            sql.Identifier(table.name),
            sql.Identifier(table.cursor),
            sql.Identifier(table.primary_key),
        )
        for table in TABLES.values()
    ]


def drop_statements() -> list[sql.Composed]:
    tables = [
        sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(t.name))
        for t in reversed(SCHEMA_TABLES)
    ]
    types = [
        sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(sql.Identifier(e))
        for e in (*ENUMS, *_LEGACY_TYPES)
    ]
    return tables + types


def create_source_schema(
    conn: psycopg.Connection, *, replace: bool = False, cursor_indexes: bool = False
) -> None:
    """Create the production totesys schema in `conn`'s database (dropping it first if
    `replace`); `cursor_indexes` adds the opt-in cursor indexes."""
    with conn.transaction():
        if replace:
            for stmt in drop_statements():
                conn.execute(stmt)
        for stmt in create_statements():
            conn.execute(stmt)
        if cursor_indexes:
            for stmt in cursor_index_statements():
                conn.execute(stmt)


def ddl_text(conn: psycopg.Connection, *, cursor_indexes: bool = False) -> str:
    """The DDL as plain SQL text (for docs and `psql`)."""
    statements = create_statements() + (cursor_index_statements() if cursor_indexes else [])
    return ";\n\n".join(s.as_string(conn) for s in statements) + ";\n"
