"""A database's `public` schema as plain data, read from PostgreSQL's own catalogs.

Two databases built differently (the production DDL file, the simulator's `seed`) have the
same shape exactly when `describe_schema` returns equal dictionaries: enum types with their
labels in order, every relation (tables, indexes, sequences, views) with its kind and
storage options, columns in order with type, nullability, default, identity and collation,
constraints with their definitions (ON UPDATE / ON DELETE rules included), indexes with
their definitions, sequences with their parameters and owning column, triggers and
functions. Object ids, statistics and row contents are left out.
"""

from __future__ import annotations

from typing import Any

import psycopg

QUERIES: dict[str, str] = {
    "enum types": """
        SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
        FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
        WHERE t.typnamespace = 'public'::regnamespace
        GROUP BY t.typname ORDER BY 1""",
    "types": """
        SELECT t.typname, t.typtype FROM pg_type t
        WHERE t.typnamespace = 'public'::regnamespace AND t.typrelid = 0
          AND t.typcategory <> 'A'
        ORDER BY 1""",
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, coalesce(c.reloptions, '{}'),
               c.relrowsecurity, c.relreplident
        FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1""",
    "columns": """
        SELECT c.relname,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
               a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               coalesce(co.collname, '')
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid),
               c.confupdtype, c.confdeltype, c.condeferrable, c.condeferred, c.convalidated,
               coalesce(c.conindid::regclass::text, '')
        FROM pg_constraint c WHERE c.connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text,
               pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary, i.indisvalid
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "sequences": """
        SELECT s.seqrelid::regclass::text, format_type(s.seqtypid, NULL), s.seqstart,
               s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
               coalesce(d.refobjid::regclass::text || '.' || a.attname, '')
        FROM pg_sequence s
        JOIN pg_class c ON c.oid = s.seqrelid
        LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
             AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a'
        LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1""",
    "triggers": """
        SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1, 2""",
}


def describe_schema(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every object of the `public` schema, one sorted list of rows per kind."""
    with psycopg.connect(dsn) as conn:
        return {kind: conn.execute(query).fetchall() for kind, query in QUERIES.items()}  # type: ignore[arg-type]


def differences(
    actual: dict[str, list[tuple[Any, ...]]], expected: dict[str, list[tuple[Any, ...]]]
) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Per kind, the rows only one side has (empty when the schemas are identical)."""
    out = {}
    for kind in QUERIES:
        extra = [r for r in actual[kind] if r not in expected[kind]]
        missing = [r for r in expected[kind] if r not in actual[kind]]
        if extra or missing:
            out[kind] = {"only in actual": extra, "only in expected": missing}
    return out
