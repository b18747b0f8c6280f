"""DDL of the totesys source database, generated from the catalog so the two cannot disagree.

Faithful to the real database (a Prisma schema): enums, `timestamp(3)` audit columns,
text dates, foreign keys `ON DELETE RESTRICT ON UPDATE CASCADE` for required references
and `ON DELETE SET NULL` for optional ones.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pipeline.catalog import ENUMS, TABLES, Column, Table


def _column_sql(table: Table, column: Column) -> sql.Composable:
    parts: list[sql.Composable] = [sql.Identifier(column.name)]
    if column.name == table.primary_key:
        parts.append(sql.SQL("serial PRIMARY KEY"))
    else:
        type_sql = (
            sql.Identifier(column.pg_type) if column.pg_type in ENUMS else sql.SQL(column.pg_type)
        )
        parts.append(type_sql)
        if not column.nullable:
            parts.append(sql.SQL("NOT NULL"))
        if column.name == "created_at":
            parts.append(sql.SQL("DEFAULT CURRENT_TIMESTAMP"))
        if column.unique:
            parts.append(sql.SQL("UNIQUE"))
        if column.references:
            on_delete = "SET NULL" if column.nullable else "RESTRICT"
            parts.append(
                sql.SQL("REFERENCES {} ({}) ON DELETE {} ON UPDATE CASCADE").format(
                    sql.Identifier(column.references),
                    sql.Identifier(TABLES[column.references].primary_key),
                    sql.SQL(on_delete),
                )
            )
    return sql.SQL(" ").join(parts)


def create_statements() -> list[sql.Composed]:
    """CREATE TYPE / CREATE TABLE statements in dependency order."""
    statements: list[sql.Composed] = [
        sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.Literal(v) for v in values)
        )
        for name, values in ENUMS.items()
    ]
    for table in TABLES.values():
        statements.append(
            sql.SQL("CREATE TABLE {} (\n  {}\n)").format(
                sql.Identifier(table.name),
                sql.SQL(",\n  ").join(_column_sql(table, c) for c in table.columns),
            )
        )
        statements.append(
            sql.SQL("CREATE INDEX {} ON {} ({}, {})").format(
                sql.Identifier(f"{table.name}_cursor_idx"),
                sql.Identifier(table.name),
                sql.Identifier(table.cursor),
                sql.Identifier(table.primary_key),
            )
        )
    return statements


def drop_statements() -> list[sql.Composed]:
    tables = [
        sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(t))
        for t in reversed(TABLES)
    ]
    types = [sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(sql.Identifier(e)) for e in ENUMS]
    return tables + types


def create_source_schema(conn: psycopg.Connection, *, replace: bool = False) -> None:
    """Create the totesys tables in `conn`'s database (dropping them first if `replace`)."""
    with conn.transaction():
        if replace:
            for stmt in drop_statements():
                conn.execute(stmt)
        for stmt in create_statements():
            conn.execute(stmt)


def ddl_text(conn: psycopg.Connection) -> str:
    """The DDL as plain SQL text (for docs and `psql`)."""
    return ";\n\n".join(s.as_string(conn) for s in create_statements()) + ";\n"
