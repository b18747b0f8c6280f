"""Compare warehouse contents table by table (sorted rows, not just counts).

Serial record ids and lineage columns (names starting with `_`) depend on load order and
run ids, so they are left out: two warehouses are equal when every business column of
every table holds the same multiset of rows.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pipeline.warehouse_schema import HISTORY_TABLES, IS_CURRENT, PROCESSED_TABLES, WAREHOUSE_TABLES


def warehouse_contents(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    contents: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(dsn) as conn:
        for name, table in PROCESSED_TABLES.items():
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
            rows = conn.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY {}").format(cols, sql.Identifier(name), cols)
            ).fetchall()
            contents[name] = rows
    return contents


def latest_versions(rows: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    """Fact rows reduced to the newest version per source id (column 0), by (date, time)."""
    newest: dict[Any, tuple[Any, ...]] = {}
    for row in rows:
        current = newest.get(row[0])
        if current is None or (row[3], row[4]) > (current[3], current[4]):
            newest[row[0]] = row
    return set(newest.values())


def assert_equivalent_to_clean_pass(
    incremental: dict[str, list[tuple[Any, ...]]], clean: dict[str, list[tuple[Any, ...]]]
) -> None:
    """Incremental history vs a clean pass over the same final source state.

    Dimensions (SCD1) must be identical. Facts keep every version, so the incremental
    warehouse holds the clean pass's rows plus older versions: the newest version of every
    source row must be identical, every clean row present, and no row duplicated.
    dim_date must cover at least the clean pass's dates.
    """
    for name, table in WAREHOUSE_TABLES.items():
        inc, cln = incremental[name], clean[name]
        assert len(inc) == len(set(inc)), f"{name}: duplicated rows"
        if table.is_fact:
            assert set(cln) <= set(inc), f"{name}: clean-pass rows missing"
            assert latest_versions(inc) == latest_versions(cln), f"{name}: newest versions differ"
        elif name == "dim_date":
            assert set(cln) <= set(inc), "dim_date misses dates"
        else:
            assert inc == cln, f"{name} differs from a clean pass"
    for name, history in HISTORY_TABLES.items():  # the current versions are the dimension
        dim = str(history.history_of)
        width = len(WAREHOUSE_TABLES[dim].columns)
        current = history.column_names.index(IS_CURRENT)
        for contents in (incremental, clean):
            rows = [r[:width] for r in contents[name] if r[current]]
            assert len(rows) == len({r[0] for r in contents[name]}), f"{name}: one current"
            assert sorted(rows) == sorted(contents[dim]), f"{name}: current != {dim}"
