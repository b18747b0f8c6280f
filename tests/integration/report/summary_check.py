"""The load's report summaries against hand-written SQL over the facts' current rows.

`assert_summaries_exact` recomputes every group of every summary from scratch (the newest
version of each source id by `DISTINCT ON`, not deleted: no use of the load's version
marks) and compares them all, not only the top N a chart shows; the dimension rows per
lineage batch and the newest `last_updated` per fact likewise.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pipeline.load.ddl import LINEAGE_COLUMN
from pipeline.summary_schema import DIMENSION_ROWS, FACT_NEWEST, MEASURES, SUMMARIES, Summary
from pipeline.warehouse_schema import DELETED_AT, DIMENSIONS, FACTS, WAREHOUSE_TABLES

Groups = set[tuple[Any, ...]]


def expected(conn: psycopg.Connection, s: Summary) -> Groups:
    table = WAREHOUSE_TABLES[s.fact]
    source_id, day, time = table.natural_key
    m = MEASURES[s.fact]
    keys = ", ".join(f'"{k}"' for k in s.keys)
    units = f'sum("{m.units}")' if m.units else "NULL::numeric"
    value = " * ".join(f'"{c}"' for c in m.value)
    return set(
        conn.execute(
            f"SELECT {keys}, count(*), {units}, sum({value}) FROM "
            f'(SELECT DISTINCT ON ("{source_id}") * FROM "{table.name}" '
            f'ORDER BY "{source_id}", "{day}" DESC, "{time}" DESC) AS cur '
            f'WHERE "{DELETED_AT}" IS NULL GROUP BY {keys}'
        ).fetchall()
    )


def kept(conn: psycopg.Connection, s: Summary) -> Groups:
    keys = ", ".join(f'"{k}"' for k in s.keys)
    return set(conn.execute(f'SELECT {keys}, n, units, value FROM "{s.name}" WHERE n <> 0'))


def emptied_but_not_zero(conn: psycopg.Connection, s: Summary) -> Groups:
    """Groups with no rows left whose sums are not zero (a delta that lost a half)."""
    return set(
        conn.execute(
            f'SELECT * FROM "{s.name}" WHERE n = 0 AND (value <> 0 OR coalesce(units, 0) <> 0)'
        )
    )


def dimension_rows(conn: psycopg.Connection) -> tuple[Groups, Groups]:
    counted = " UNION ALL ".join(
        f'SELECT \'{d.name}\', "{LINEAGE_COLUMN}", count(*) FROM "{d.name}" GROUP BY 2'
        for d in DIMENSIONS
    )
    held = conn.execute(
        f'SELECT table_name, "{LINEAGE_COLUMN}", n FROM "{DIMENSION_ROWS}" WHERE n <> 0'
    )
    return set(conn.execute(counted)), set(held)


def newest(conn: psycopg.Connection) -> tuple[Groups, Groups]:
    scanned = " UNION ALL ".join(
        f'SELECT \'{t.name}\', max("{t.natural_key[1]}" + "{t.natural_key[2]}") FROM "{t.name}"'
        for t in FACTS
    )
    held = conn.execute(f'SELECT table_name, newest FROM "{FACT_NEWEST}"')
    return set(conn.execute(scanned)), set(held)


def assert_summaries_exact(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        for s in SUMMARIES:
            assert kept(conn, s) == expected(conn, s), s.name
            assert not emptied_but_not_zero(conn, s), s.name
        counted, held = dimension_rows(conn)
        assert held == counted
        scanned, recorded = newest(conn)
        assert recorded == scanned


def snapshot(dsn: str) -> dict[str, Groups]:
    """Every summary's non-empty groups (to compare two warehouses or two moments)."""
    with psycopg.connect(dsn) as conn:
        groups = {s.name: kept(conn, s) for s in SUMMARIES}
        groups[DIMENSION_ROWS] = dimension_rows(conn)[1]
        groups[FACT_NEWEST] = newest(conn)[1]
    return groups
