"""Property tests of dimension history (hypothesis): random sequences of staff and department
changes, split into batches and folded in random orders.

Asserted for every example: versions of a key never overlap and leave no gaps, exactly one
version per key is current (and it is live unless the key is deleted at the end), two
consecutive versions differ in a tracked column, the value at every change instant is what
a direct as-of lookup of the source gives, and the history is the same whatever the order
the batches arrive in.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.transform.current import empty_state
from pipeline.transform.history import (
    DELETED_FROM,
    DELETED_TO,
    HISTORY_SPECS,
    fold_versions,
    history_rows,
)
from pipeline.transform.inputs import BATCH_COLUMN
from pipeline.warehouse_schema import IS_CURRENT, IS_DELETED, VALID_FROM, VALID_TO

STAFF = next(s for s in HISTORY_SPECS if s.name == "dim_staff")
DESIGN = next(s for s in HISTORY_SPECS if s.name == "dim_design")
T0 = dt.datetime(2024, 1, 1)
STAFF_IDS, DEPARTMENT_IDS = (1, 2, 3), (1, 2)


def minute(m: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=m)


def staff_row(staff_id: int, m: int, department_id: int, email: str) -> dict[str, Any]:
    return {
        "staff_id": staff_id,
        "first_name": "Ann",
        "last_name": "Lee",
        "department_id": department_id,
        "email_address": email,
        "created_at": T0,
        "last_updated": minute(m),
    }


def department_row(department_id: int, m: int, name: str, location: str | None) -> dict:
    return {
        "department_id": department_id,
        "department_name": name,
        "location": location,
        "manager": f"manager at {m}",  # not tracked by dim_staff: changes start no version
        "created_at": T0,
        "last_updated": minute(m),
    }


staff_changes = st.lists(
    st.tuples(
        st.sampled_from(STAFF_IDS),
        st.integers(0, 60),
        st.sampled_from(DEPARTMENT_IDS),
        st.sampled_from(["a@t.com", "b@t.com"]),
    ),
    min_size=1,
    max_size=14,
    unique_by=lambda c: (c[0], c[1]),  # one version per (key, last_updated)
)
department_changes = st.lists(
    st.tuples(
        st.sampled_from(DEPARTMENT_IDS),
        st.integers(0, 60),
        st.sampled_from(["Sales", "Finance"]),
        st.sampled_from(["Leeds", None]),
    ),
    min_size=2,
    max_size=10,
    unique_by=lambda c: (c[0], c[1]),
).filter(lambda changes: {c[0] for c in changes} == set(DEPARTMENT_IDS))


@st.composite
def deletions(draw: st.DrawFn) -> pl.DataFrame:
    """Non-overlapping deletion intervals per staff key, the last one possibly open."""
    rows = []
    for staff_id in STAFF_IDS:
        bounds = sorted(draw(st.sets(st.integers(0, 70), max_size=4)))
        if len(bounds) % 2 and draw(st.booleans()):
            bounds = bounds[:-1]
        for start, end in zip(bounds[::2], [*bounds[1::2], None], strict=False):
            rows.append({"staff_id": staff_id, DELETED_FROM: minute(start),
                         DELETED_TO: None if end is None else minute(end)})  # fmt: skip
    schema = {"staff_id": pl.Int32, DELETED_FROM: pl.Datetime("ms"), DELETED_TO: pl.Datetime("ms")}
    return pl.DataFrame(rows, schema=schema)


def frame(table: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    empty = empty_state(table)
    return pl.DataFrame(rows, schema=empty.schema).with_columns(
        pl.lit(0, pl.Int32).alias(BATCH_COLUMN)
    )


def split(items: list[Any], cuts: list[int]) -> list[list[Any]]:
    """`items` in consecutive batches cut at the given positions."""
    points = sorted({c % (len(items) + 1) for c in cuts} | {0, len(items)})
    return [items[a:b] for a, b in itertools.pairwise(points) if b > a]


def replay(table: str, batches: list[list[dict[str, Any]]]) -> pl.DataFrame:
    """Fold the batches, in the order given, as successive transform runs would."""
    held = empty_state(table)
    for batch in batches:
        held, _ = fold_versions(table, held, frame(table, batch))
    return held


def staff_history(
    staff: list[list[dict[str, Any]]], departments: list[list[dict[str, Any]]], gone: pl.DataFrame
) -> pl.DataFrame:
    versions = replay("staff", staff)
    return history_rows(STAFF, versions, {"department": replay("department", departments)}, gone)


def as_of(rows: list[dict[str, Any]], key: str, value: int, at: dt.datetime) -> dict | None:
    """The row of `key` = `value` current at `at` (the earliest if none yet), by brute force."""
    mine = sorted((r for r in rows if r[key] == value), key=lambda r: r["last_updated"])
    before = [r for r in mine if r["last_updated"] <= at]
    return before[-1] if before else None


def check_invariants(history: pl.DataFrame, gone: pl.DataFrame) -> None:
    tracked = [c for c in STAFF.table.column_names[1:]] + [IS_DELETED]
    for (staff_id,), versions in history.group_by(["staff_id"]):
        versions = versions.sort(VALID_FROM)
        starts, ends = versions[VALID_FROM].to_list(), versions[VALID_TO].to_list()
        assert ends[:-1] == starts[1:], "versions overlap or leave a gap"
        assert ends[-1] is None
        assert versions[IS_CURRENT].to_list() == [False] * (len(starts) - 1) + [True]
        rows = versions.select(tracked).rows()
        assert all(a != b for a, b in itertools.pairwise(rows)), "an unchanged version"
        deleted_now = gone.filter((pl.col("staff_id") == staff_id) & pl.col(DELETED_TO).is_null())
        assert versions[IS_DELETED][-1] == (deleted_now.height > 0), "current version's state"


def check_against_source(
    history: pl.DataFrame, staff: list[dict[str, Any]], departments: list[dict[str, Any]]
) -> None:
    """At every staff or department change instant, the version holding it shows the source."""
    instants = {r["last_updated"] for r in staff} | {r["last_updated"] for r in departments}
    for staff_id in STAFF_IDS:
        for at in sorted(instants):
            source = as_of(staff, "staff_id", staff_id, at)
            if source is None:
                continue
            dept = as_of(departments, "department_id", source["department_id"], at) or min(
                (r for r in departments if r["department_id"] == source["department_id"]),
                key=lambda r: r["last_updated"],
            )
            holding = history.filter(
                (pl.col("staff_id") == staff_id)
                & (pl.col(VALID_FROM) <= at)
                & (pl.col(VALID_TO).is_null() | (pl.col(VALID_TO) > at))
            )
            assert holding.height == 1, (staff_id, at)
            version = holding.row(0, named=True)
            assert (version["department_name"], version["location"], version["email_address"]) == (
                dept["department_name"], dept["location"], source["email_address"]
            )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    staff_changes,
    department_changes,
    deletions(),
    st.lists(st.integers(0, 30), max_size=5),
    st.lists(st.integers(0, 30), max_size=5),
    st.randoms(use_true_random=False),
)
def test_staff_history_is_well_formed_true_to_the_source_and_order_independent(
    staff_changes, department_changes, gone, staff_cuts, department_cuts, random
) -> None:
    staff = [staff_row(*c) for c in staff_changes]
    departments = [department_row(*c) for c in department_changes]
    staff_batches, department_batches = (
        split(staff, staff_cuts),
        split(departments, department_cuts),
    )
    in_order = staff_history(staff_batches, department_batches, gone)
    shuffled_staff, shuffled_departments = staff_batches[:], department_batches[:]
    random.shuffle(shuffled_staff)
    random.shuffle(shuffled_departments)
    replayed = staff_history(shuffled_staff, shuffled_departments, gone)
    assert replayed.equals(in_order)
    assert set(in_order["staff_id"].to_list()) == {r["staff_id"] for r in staff}
    check_invariants(in_order, gone)
    live = staff_history(staff_batches, department_batches, gone.clear())
    check_against_source(live, staff, departments)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 3), st.integers(0, 40), st.sampled_from(["Wooden", "Steel"])),
        min_size=1,
        max_size=20,
        unique_by=lambda c: (c[0], c[1]),
    ),
    st.lists(st.integers(0, 20), max_size=6),
    st.randoms(use_true_random=False),
)
def test_design_history_replayed_in_any_batch_order_is_identical(changes, cuts, random) -> None:
    rows = [
        {"design_id": i, "design_name": name, "file_location": "/d", "file_name": "f.json",
         "created_at": T0, "last_updated": minute(m)}
        for i, m, name in changes
    ]  # fmt: skip
    batches = split(rows, cuts)
    shuffled = batches[:]
    random.shuffle(shuffled)
    in_order = history_rows(DESIGN, replay("design", batches), {})
    assert history_rows(DESIGN, replay("design", shuffled), {}).equals(in_order)
    for (design_id,), versions in in_order.group_by(["design_id"]):
        names = [r["design_name"] for r in sorted(rows, key=lambda r: r["last_updated"])
                 if r["design_id"] == design_id]  # fmt: skip
        collapsed = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]
        assert versions.sort(VALID_FROM)["design_name"].to_list() == collapsed
        assert versions[IS_CURRENT].sum() == 1
