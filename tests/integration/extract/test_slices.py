"""Capped calls cut their window by an estimate from the planner's statistics
(`pipeline.extract.slices`): each query sorts about its own rows, and whatever the estimate
(fresh, stale either way, absent) every source row is delivered exactly once.

"Exactly once" is checked against the source table itself: the rows of every batch of the
run, as a list (a duplicate counts twice), equal the table's rows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.catalog import TABLES
from pipeline.extract import repair
from pipeline.extract.slices import MIN_SHARE
from pipeline.extract.source import SourceSnapshot, Window
from pipeline.lake import Lake
from tests.integration.extract.helpers import batch_versions, lake_url, run, source

__all__ = ["lake_url", "source"]  # fixtures

pytestmark = pytest.mark.postgres

TABLE = "sales_order"
SPEC = TABLES[TABLE]
VALUES, PER_VALUE = 60, 50  # 60 timestamps, 50 rows tied on each


def add_tied(dsn: str, values: int, per_value: int, start: str, step: str = "1 minute") -> None:
    """`values * per_value` sales orders, `per_value` of them on each of `values` timestamps
    `step` apart from `start`, ids interleaved across the timestamps (so a tie group's ids
    are not contiguous)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, "
            "unit_price, currency_id, agreed_delivery_date, agreed_payment_date, "
            "agreed_delivery_location_id, created_at, last_updated) "
            "SELECT 1, 1, 1, g, 2.5, 1, '2024-11-10', '2024-11-12', 1, ts, ts "
            "FROM generate_series(0, %(n)s - 1) g, "
            "LATERAL (SELECT %(start)s::timestamp + (g %% %(values)s) * %(step)s::interval) t(ts)",
            {"n": values * per_value, "values": values, "start": start, "step": step},
        )


def sql_run(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]  # constant text in this module


def frozen_statistics(dsn: str) -> None:
    """Analyse the table now and keep autovacuum from refreshing the statistics later."""
    sql_run(dsn, "ALTER TABLE sales_order SET (autovacuum_enabled = false)", "ANALYZE sales_order")


def source_rows(dsn: str) -> list[tuple[int, str]]:
    query = sql.SQL("SELECT {}, to_char({}, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS') FROM {}").format(
        sql.Identifier(SPEC.primary_key), sql.Identifier(SPEC.cursor), sql.Identifier(TABLE)
    )
    with psycopg.connect(dsn) as conn:
        return sorted((int(i), str(s)) for i, s in conn.execute(query))


@dataclass
class Query:
    window: Window
    limit: int | None
    slice_from: datetime | None
    slice_to: datetime | None


@pytest.fixture
def queries(monkeypatch: pytest.MonkeyPatch) -> list[Query]:
    """Every row query the extract sends, with its window and slice."""
    sent: list[Query] = []
    original = SourceSnapshot.batches

    def spy(self: SourceSnapshot, window: Window, limit: int | None = None, *a: Any, **kw: Any):
        sent.append(Query(window, limit, kw.get("slice_from"), kw.get("slice_to")))
        return original(self, window, limit, *a, **kw)

    monkeypatch.setattr(SourceSnapshot, "batches", spy)
    return sent


def extract_all(dsn: str, lake_url: str, max_rows: int) -> list[dict[str, Any]]:
    """Every call of one run to completion; returns their manifests in order."""
    lake, manifests, run_id = Lake(lake_url), [], "r1"
    for _ in range(100):
        result = run(dsn, lake_url, run_id, table=TABLE, extract_max_rows=max_rows)
        manifests.append(lake.read_json(result.manifest))
        if not result.more:
            return manifests
        run_id = result.next_run_id  # type: ignore[assignment]
    raise AssertionError("the run did not complete in 100 calls")


def delivered(lake_url: str, manifests: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return sorted(v for m in manifests for v in batch_versions(lake_url, TABLE, m["run_id"]))


def matched(rows: list[tuple[int, str]], q: Query) -> int:
    """How many source rows the query's condition selects: what PostgreSQL sorts for it."""
    w = q.window

    def inside(key: int, stamp: str) -> bool:
        ts = datetime.fromisoformat(stamp)
        if ts >= w.until or (q.slice_to is not None and ts >= q.slice_to):
            return False
        if q.slice_from is not None and ts < q.slice_from:
            return False
        if w.since is None:
            return True
        return (ts, key) > (w.since, w.after_key) if w.after_key is not None else ts >= w.since

    return sum(inside(k, s) for k, s in rows)


def check_calls(manifests: list[dict[str, Any]], max_rows: int) -> None:
    """Every call but the last has `more` and at least `MIN_SHARE` of its cap; a call that
    stopped below the cap records the bound it stopped at, and holds no row at or above it."""
    assert [m["more"] for m in manifests] == [True] * (len(manifests) - 1) + [False]
    for m in manifests[:-1]:
        assert m["rows"] >= MIN_SHARE * max_rows
        bound = m["window"]["bound"]
        assert bound is not None or m["rows"] == max_rows  # a bound, or the cap cut it
        if bound is not None:
            assert m["cursor"]["to"] < bound
    assert manifests[-1]["window"]["bound"] is None


# -- the slices themselves -----------------------------------------------------------------
def test_slices_at_a_tied_value_partition_the_window_exactly(source: str) -> None:
    """Rows tied on the cursor at a bound all fall on one side of it, for every value."""
    add_tied(source, 6, 7, "2024-11-04 09:00")
    with SourceSnapshot.open(source, SPEC) as snap:
        start = datetime(2024, 11, 4, 9, 1)  # inside the second tie group, after key 3
        window = Window(since=start, after_key=3, until=snap.now)

        def keys(**slice_: datetime) -> list[int]:
            return [
                k
                for batch in snap.batches(window, None, **slice_)  # type: ignore[arg-type]
                for k in batch.column(SPEC.primary_key).to_pylist()
            ]

        whole = keys()
        assert 0 < len(whole) < 42
        for minute in range(7):
            bound = datetime(2024, 11, 4, 9, minute)
            below, above = keys(slice_to=bound), keys(slice_from=bound)
            assert below + above == whole  # in order, no gap, no overlap
            assert len(set(below) & set(above)) == 0


# -- whole runs on real statistics ----------------------------------------------------------
def test_fresh_statistics_make_each_query_sort_about_its_own_rows(
    source: str, lake_url: str, queries: list[Query]
) -> None:
    add_tied(source, 5000, 4, "2024-11-04 09:00", "1 second")  # 20,000 rows, 4 per timestamp
    frozen_statistics(source)
    rows = source_rows(source)
    manifests = extract_all(source, lake_url, max_rows=2000)

    assert delivered(lake_url, manifests) == rows
    check_calls(manifests, 2000)
    assert len(manifests) <= 11
    sorted_rows = [matched(rows, q) for q in queries]
    # Without the bound each query sorts everything above its start: 20,000, 18,000, ...
    assert max(sorted_rows) <= 2 * 2000, sorted_rows
    assert all(q.slice_to is not None for q in queries[:-2])


def test_ties_straddling_the_bounds_of_common_values(
    source: str, lake_url: str, queries: list[Query]
) -> None:
    """Few distinct values: the statistics hold them all as common values, so every bound
    is a value 50 rows are tied on, and the cap cuts inside tie groups too."""
    add_tied(source, VALUES, PER_VALUE, "2024-11-04 09:00")
    frozen_statistics(source)
    with SourceSnapshot.open(source, SPEC) as snap:
        stats = snap.cursor_stats()
    assert stats is not None and len(stats.common) == VALUES and not stats.bounds
    rows = source_rows(source)
    manifests = extract_all(source, lake_url, max_rows=400)

    assert delivered(lake_url, manifests) == rows
    check_calls(manifests, 400)
    values = {datetime.fromisoformat(s) for _, s in rows}
    assert {q.slice_to for q in queries if q.slice_to} <= values  # bounds on tied values
    assert max(matched(rows, q) for q in queries) <= 2 * 400


def test_stale_statistics_that_count_deleted_rows_stop_calls_at_their_bound(
    source: str, lake_url: str, queries: list[Query]
) -> None:
    """40% of every tie group deleted after the statistics were taken: each slice holds
    about 60% of its estimate, so calls stop at the bound (with `more`) on a tied value."""
    add_tied(source, VALUES, PER_VALUE, "2024-11-04 09:00")
    frozen_statistics(source)
    sql_run(source, "DELETE FROM sales_order WHERE (sales_order_id - 1) / 60 % 5 IN (1, 3)")
    rows = source_rows(source)
    assert len(rows) == 1800
    manifests = extract_all(source, lake_url, max_rows=400)

    assert delivered(lake_url, manifests) == rows
    check_calls(manifests, 400)
    values = {datetime.fromisoformat(s) for _, s in rows}
    bounds = [datetime.fromisoformat(m["window"]["bound"]) for m in manifests[:-1]]
    assert bounds and set(bounds) <= values  # every call but the last stopped at a tied value
    assert all(m["rows"] < 400 for m in manifests[:-1])


def test_stale_statistics_that_count_rows_since_moved_away(
    source: str, lake_url: str, queries: list[Query]
) -> None:
    """90% of every tie group updated to later timestamps (beyond what the statistics
    know) after they were taken: the first slice comes back far short of the estimate, so
    the call reads on, in the same snapshot, from that slice's bound."""
    add_tied(source, VALUES, PER_VALUE, "2024-11-04 09:00")
    frozen_statistics(source)
    sql_run(
        source,
        "UPDATE sales_order SET last_updated = last_updated + interval '1 day' "
        "WHERE (sales_order_id - 1) / 60 % 10 <> 0",
    )
    rows = source_rows(source)
    manifests = extract_all(source, lake_url, max_rows=400)

    assert delivered(lake_url, manifests) == rows
    check_calls(manifests, 400)
    chained = [
        (a, b)
        for a, b in itertools.pairwise(queries)
        if b.slice_from is not None and b.slice_from == a.slice_to
    ]
    values = {datetime.fromisoformat(s) for _, s in rows}
    assert chained and all(b.slice_from in values for _, b in chained)  # on tied values
    assert len(manifests) <= 2 * len(rows) / 400 + 1


def test_stale_statistics_that_put_too_few_rows_below_the_bound(
    source: str, lake_url: str, queries: list[Query]
) -> None:
    """After the statistics were taken, 20,000 rows arrived on three of the timestamps: the
    cap cuts the slices there, and the sparser rest comes back short."""
    add_tied(source, VALUES, PER_VALUE, "2024-11-04 09:00")
    frozen_statistics(source)
    add_tied(source, 3, 6667, "2024-11-04 09:00")
    rows = source_rows(source)
    manifests = extract_all(source, lake_url, max_rows=400)

    assert delivered(lake_url, manifests) == rows
    check_calls(manifests, 400)
    assert len(manifests) <= 2 * len(rows) / 400 + 1


def test_without_statistics_each_call_reads_to_the_window_end(
    source: str, lake_url: str, queries: list[Query]
) -> None:
    sql_run(source, "ALTER TABLE sales_order SET (autovacuum_enabled = false)")
    add_tied(source, VALUES, PER_VALUE, "2024-11-04 09:00")
    with SourceSnapshot.open(source, SPEC) as snap:
        assert snap.cursor_stats() is None  # never analysed
    rows = source_rows(source)
    manifests = extract_all(source, lake_url, max_rows=400)

    assert delivered(lake_url, manifests) == rows
    assert [m["rows"] for m in manifests] == [400] * 7 + [200]
    assert all(m["window"]["bound"] is None for m in manifests)
    assert all(q.slice_from is None and q.slice_to is None for q in queries)


def test_a_small_table_reads_as_one_query(source: str, lake_url: str, queries: list[Query]) -> None:
    add_tied(source, VALUES, PER_VALUE, "2024-11-04 09:00")
    frozen_statistics(source)
    manifests = extract_all(source, lake_url, max_rows=3000)  # the table: 3,000 rows
    assert [m["rows"] for m in manifests] == [3000]
    assert [(q.slice_from, q.slice_to) for q in queries] == [(None, None)]


def test_a_select_only_role_sees_the_statistics(source: str) -> None:
    add_tied(source, VALUES, PER_VALUE, "2024-11-04 09:00")
    frozen_statistics(source)
    sql_run(
        source,
        "CREATE ROLE slices_reader LOGIN PASSWORD 'reader-pw'",
        "GRANT SELECT ON sales_order TO slices_reader",
    )
    params = conninfo_to_dict(source)
    params.update(user="slices_reader", password="reader-pw")
    try:
        with SourceSnapshot.open(make_conninfo(**params), SPEC) as snap:  # type: ignore[arg-type]
            stats = snap.cursor_stats()
    finally:
        sql_run(source, "DROP OWNED BY slices_reader", "DROP ROLE slices_reader")
    assert stats is not None and len(stats.common) == VALUES
    assert stats.rows == pytest.approx(VALUES * PER_VALUE)


def test_a_repair_of_a_batch_that_stopped_at_a_bound_reads_up_to_the_bound(
    source: str,
) -> None:
    add_tied(source, 6, 7, "2024-11-04 09:00")
    bound = "2024-11-04T09:03:00.000000"
    damage = repair.Damage(
        key=f"_manifests/{TABLE}/r1.json",
        run_id="r1",
        reason="is broken (test)",
        window={
            "since": None,
            "until": "2030-01-01T00:00:00",
            "after_key": None,
            "bound": bound,
            "mode": "full",
        },
    )
    with SourceSnapshot.open(source, SPEC) as snap:
        stream, ranges = repair.rows(snap, damage)
        stamps = [s for b in stream for s in b.column(SPEC.cursor).to_pylist()]
    assert ranges is None
    assert len(stamps) == 3 * 7 and max(stamps) < datetime.fromisoformat(bound)
