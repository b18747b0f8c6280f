"""Warehouse DDL generated from `pipeline.warehouse_schema`, so the tables and the processed
Parquet the transform writes cannot drift apart.

Every identifier comes from the schema definitions and is quoted with `psycopg.sql`.
Beyond the star-schema columns (docs/LINEAGE.md, names untouched) each table carries one
lineage column naming the processed batch that last wrote the row (NULL for rows written
by anything but the load step, e.g. a hand-made baseline), and each fact a serial
record id primary key plus a UNIQUE natural key that makes re-loading a no-op.
"""

from __future__ import annotations

from psycopg import sql

from pipeline.load.versions import mark_statement
from pipeline.warehouse_schema import (
    DELETED_AT,
    DIMENSIONS,
    FACTS,
    HISTORIES,
    SUPERSEDED_AT,
    WAREHOUSE_TABLES,
    WarehouseTable,
)
from pipeline.warehouse_schema import (
    LINEAGE_COLUMN as LINEAGE_COLUMN,  # re-exported: the load's modules import it from here
)

DELETED_COLUMN = DELETED_AT  # when the source row was found deleted; NULL while it exists
LEDGER_TABLE = "etl_load_ledger"


def fk_constraint_name(table: str, column: str) -> str:
    return f"{table}_{column}_fkey"


def natural_key_constraint_name(table: str) -> str:
    return f"{table}_natural_key"


def foreign_keys() -> dict[str, tuple[str, str, str]]:
    """Constraint name -> (table, column, referenced dimension) for every foreign key."""
    return {
        fk_constraint_name(t.name, c.name): (t.name, c.name, c.references)
        for t in WAREHOUSE_TABLES.values()
        for c in t.columns
        if c.references
    }


def column_definitions(table: WarehouseTable) -> list[sql.Composable]:
    """`name type [NOT NULL]` for the design columns, in schema order."""
    return [
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.name),
            sql.SQL(c.pg_type),
            sql.SQL("" if c.nullable else " NOT NULL"),
        )
        for c in table.columns
    ]


def create_table(table: WarehouseTable) -> sql.Composed:
    """CREATE TABLE with primary key, natural key (facts), foreign keys and lineage."""
    items: list[sql.Composable] = []
    if table.is_fact:
        items.append(sql.SQL("{} serial PRIMARY KEY").format(sql.Identifier(table.primary_key)))
    items.extend(column_definitions(table))
    # lineage: NULL for rows written by anything but the load step
    items.append(sql.SQL("{} text").format(sql.Identifier(LINEAGE_COLUMN)))
    if table.is_fact:
        items.append(
            sql.SQL("CONSTRAINT {} UNIQUE ({})").format(
                sql.Identifier(natural_key_constraint_name(table.name)),
                sql.SQL(", ").join(map(sql.Identifier, table.natural_key)),
            )
        )
    else:
        items.append(sql.SQL("PRIMARY KEY ({})").format(sql.Identifier(table.primary_key)))
    for c in table.columns:
        if c.references:
            items.append(
                sql.SQL("CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})").format(
                    sql.Identifier(fk_constraint_name(table.name, c.name)),
                    sql.Identifier(c.name),
                    sql.Identifier(c.references),
                    sql.Identifier(WAREHOUSE_TABLES[c.references].primary_key),
                )
            )
    return sql.SQL("CREATE TABLE {} (\n  {}\n)").format(
        sql.Identifier(table.name), sql.SQL(",\n  ").join(items)
    )


def star_schema_statements() -> list[sql.Composed]:
    """The eleven tables, dimensions first so the facts' foreign keys resolve."""
    return [create_table(t) for t in (*DIMENSIONS, *FACTS)]


def deleted_column_statements() -> list[sql.Composed]:
    """`_deleted_at timestamp(3)` on every dimension and fact (docs/CONTRACTS.md): a row
    deleted in the source is never deleted here, only marked, so facts keep their history
    and foreign keys hold. Current rows are the ones `WHERE _deleted_at IS NULL`."""
    return [
        sql.SQL("ALTER TABLE {} ADD COLUMN {} timestamp(3)").format(
            sql.Identifier(t.name), sql.Identifier(DELETED_COLUMN)
        )
        for t in (*DIMENSIONS, *FACTS)
    ]


def superseded_column_statements() -> list[sql.Composed]:
    """`_superseded_at timestamp(3)` on every fact, filled for the versions already there
    (the load keeps it from then on, `pipeline.load.versions`): current versions are the
    rows `WHERE _superseded_at IS NULL`, so readers need not de-duplicate versions."""
    statements = []
    for t in FACTS:
        statements.append(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} timestamp(3)").format(
                sql.Identifier(t.name), sql.Identifier(SUPERSEDED_AT)
            )
        )
        statements.append(mark_statement(t))
    return statements


def ledger_statements() -> list[sql.Composed]:
    """The run ledger: one row per processed batch, written in the batch's own transaction."""
    ledger = sql.Identifier(LEDGER_TABLE)
    return [
        sql.SQL(
            "CREATE TABLE {} (\n"
            "  batch_run_id text PRIMARY KEY,\n"
            "  load_run_id text NOT NULL,\n"
            "  committed_at timestamptz NOT NULL,\n"
            "  loaded_at timestamptz NOT NULL DEFAULT clock_timestamp(),\n"
            "  rows jsonb NOT NULL,\n"
            "  rows_in jsonb NOT NULL,\n"
            "  duration_s double precision NOT NULL\n"
            ")"
        ).format(ledger),
        sql.SQL("CREATE INDEX {} ON {} (load_run_id)").format(
            sql.Identifier(f"{LEDGER_TABLE}_load_run_id_idx"), ledger
        ),
    ]


def history_statements() -> list[sql.Composed]:
    """One `<dim>_history` table per source-backed dimension (docs/HISTORY.md): the
    dimension's columns and validity, a serial version id, UNIQUE (key, valid_from) (which
    also serves the as-at join), and the lineage column. No foreign key: every key it holds
    is in the dimension, which keeps every key it ever had."""
    statements = []
    for table in HISTORIES:
        items: list[sql.Composable] = [
            sql.SQL("{} bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY").format(
                sql.Identifier(table.primary_key)
            ),
            *column_definitions(table),
            sql.SQL("{} text").format(sql.Identifier(LINEAGE_COLUMN)),
            sql.SQL("CONSTRAINT {} UNIQUE ({})").format(
                sql.Identifier(natural_key_constraint_name(table.name)),
                sql.SQL(", ").join(map(sql.Identifier, table.natural_key)),
            ),
        ]
        statements.append(
            sql.SQL("CREATE TABLE {} (\n  {}\n)").format(
                sql.Identifier(table.name), sql.SQL(",\n  ").join(items)
            )
        )
    return statements
