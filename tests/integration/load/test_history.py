"""Dimension history end to end: ingestion batches -> transform -> load into a real PostgreSQL.

Each test writes source row versions as ingestion batches, runs the real transform and load
after each, and reads `<dim>_history` back from the warehouse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pipeline.lake import Lake
from pipeline.load.run import load
from pipeline.settings import Settings
from pipeline.transform import transform
from pipeline.warehouse_schema import HISTORIES, HISTORY_TABLES
from tests.lake_builders import row, ts, write_batch, write_lookups

pytestmark = pytest.mark.postgres
Batches = list[tuple[str, list[dict[str, Any]]]]  # (source table, rows) per ingestion batch


class Pipeline:
    """An ingestion zone, a processed zone and a warehouse; `step` ingests, transforms, loads."""

    def __init__(self, root: Any, dsn: str) -> None:
        self.ingest, self.processed = Lake(str(root / "ingest")), Lake(str(root / "processed"))
        self.settings = Settings(
            ingest_url=self.ingest.url, processed_url=self.processed.url, warehouse_dsn=dsn
        )
        self.dsn, self.runs = dsn, 0

    def step(self, *batches: tuple[str, list[dict[str, Any]]]) -> None:
        self.runs += 1
        for i, (table, rows) in enumerate(batches):
            write_batch(self.ingest, table, f"e{self.runs}-{i}", rows)
        assert transform(f"t{self.runs}", self.settings).status == "ok"
        assert load(f"l{self.runs}", self.settings).status == "loaded"

    def history(self, dim: str, *columns: str) -> list[tuple[Any, ...]]:
        table = HISTORY_TABLES[f"{dim}_history"]
        names = columns or table.column_names
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, names)),
                    sql.Identifier(table.name),
                    sql.SQL(", ").join(map(sql.Identifier, table.natural_key)),
                )
            ).fetchall()


@pytest.fixture
def pipeline(tmp_path, make_database: Callable[[str], str]) -> Callable[[str], Pipeline]:
    def make(label: str) -> Pipeline:
        return Pipeline(tmp_path / label, make_database(label))

    return make


def at(hour: int, minute: int = 0) -> str:
    return f"2024-11-04 {hour:02d}:{minute:02d}:00.250"


def departments(at_: str = at(8)) -> list[dict[str, Any]]:
    return [
        row("department", at=at_, department_id=1, department_name="Sales"),
        row("department", at=at_, department_id=2, department_name="Finance", location="Leeds"),
        row("department", at=at_, department_id=3, department_name="Purchasing", location=None),
    ]


def test_a_staff_member_moving_department_twice_has_three_versions(pipeline) -> None:
    p = pipeline("moves")
    p.step(("department", departments()), ("staff", [row("staff", at=at(9))]))
    p.step(("staff", [row("staff", at=at(10), department_id=2)]))
    p.step(("staff", [row("staff", at=at(11, 30), department_id=3)]))
    columns = ("staff_id", "department_name", "location", "valid_from", "valid_to")
    assert p.history("dim_staff", *columns, "is_current", "is_deleted") == [
        (1, "Sales", "Manchester", ts(at(9)), ts(at(10)), False, False),
        (1, "Finance", "Leeds", ts(at(10)), ts(at(11, 30)), False, False),
        (1, "Purchasing", None, ts(at(11, 30)), None, True, False),
    ]
    with psycopg.connect(p.dsn) as conn:  # the type 1 dimension keeps its meaning
        assert conn.execute("SELECT department_name FROM dim_staff").fetchall() == [("Purchasing",)]


def test_an_update_of_untracked_columns_adds_no_version(pipeline) -> None:
    p = pipeline("untracked")
    p.step(("department", departments()), ("staff", [row("staff", at=at(9))]))
    before = p.history("dim_staff")
    p.step(("staff", [row("staff", at=at(10))]))  # only last_updated bumped
    p.step(("department", [row("department", at=at(11), manager="Shelley Levene")]))
    assert p.history("dim_staff") == before
    [(_, _, _, _, _, _, valid_from, valid_to, current, deleted)] = before
    assert (valid_from, valid_to, current, deleted) == (ts(at(9)), None, True, False)


def test_a_department_rename_starts_a_version_for_each_of_its_staff(pipeline) -> None:
    p = pipeline("rename")
    staff = [
        row("staff", at=at(9), staff_id=1),
        row("staff", at=at(9), staff_id=2, email_address="b@terrifictotes.com"),
        row("staff", at=at(9), staff_id=3, department_id=2),
    ]
    p.step(("department", departments()), ("staff", staff))
    p.step(("department", [row("department", at=at(12), department_name="Sales & Marketing")]))
    assert p.history("dim_staff", "staff_id", "department_name", "valid_from", "valid_to") == [
        (1, "Sales", ts(at(9)), ts(at(12))),
        (1, "Sales & Marketing", ts(at(12)), None),
        (2, "Sales", ts(at(9)), ts(at(12))),
        (2, "Sales & Marketing", ts(at(12)), None),
        (3, "Finance", ts(at(9)), None),
    ]


def _changes() -> Batches:
    """A week of changes to staff, departments, addresses (two dimensions), counterparties,
    a design and a currency, including a change back to an earlier value."""
    return [
        ("department", departments(at(7))),
        ("address", [row("address", at=at(7)), row("address", at=at(7), address_id=2)]),
        ("currency", [row("currency", at=at(7)), row("currency", at=at(7), currency_id=2,
                                                     currency_code="EUR")]),
        ("design", [row("design", at=at(7))]),
        ("payment_type", [row("payment_type", at=at(7))]),
        ("staff", [row("staff", at=at(8)), row("staff", at=at(8), staff_id=2, department_id=2)]),
        ("counterparty", [row("counterparty", at=at(8))]),
        ("staff", [row("staff", at=at(9), department_id=2)]),
        ("department", [row("department", at=at(10), department_id=2, department_name="Finance",
                         location="York")]),
        ("address", [row("address", at=at(11), phone="0113 496 0000")]),
        ("counterparty", [row("counterparty", at=at(12), legal_address_id=2)]),
        ("staff", [row("staff", at=at(13), department_id=1)]),
        ("design", [row("design", at=at(13), design_name="Steel")]),
        ("staff", [row("staff", at=at(14), department_id=1, email_address="j.f@t.com")]),
        ("address", [row("address", at=at(15), address_id=2, city="Hull")]),
        ("design", [row("design", at=at(16))]),  # back to the first name
        ("currency", [row("currency", at=at(16), currency_id=2, currency_code="USD")]),
    ]  # fmt: skip


def _all_histories(p: Pipeline) -> dict[str, list[tuple[Any, ...]]]:
    """Every history table's business columns (no version id, no lineage)."""
    return {str(t.history_of): p.history(str(t.history_of)) for t in HISTORIES}


def test_out_of_order_batches_produce_the_same_history_as_in_order_ones(pipeline) -> None:
    changes = _changes()
    in_order = pipeline("in_order")
    for batch in changes:
        in_order.step(batch)
    # The same versions arriving newest first, two batches per run, then the first ones.
    late = pipeline("late")
    backwards = changes[::-1]
    for i in range(0, len(backwards), 2):
        late.step(*backwards[i : i + 2])
    expected = _all_histories(in_order)
    assert _all_histories(late) == expected
    sizes = {dim: len(rows) for dim, rows in expected.items()}
    assert sizes == {
        "dim_staff": 7,  # 1: Sales, Finance, Finance in York, Sales, new email; 2: two
        "dim_location": 4,  # each address: as created, then one tracked change
        "dim_design": 3,  # Wooden, Steel, Wooden again
        "dim_currency": 3,  # GBP; EUR, then USD
        "dim_counterparty": 4,  # address 1, its new phone, address 2, its new city
        "dim_payment_type": 1,
    }
    staff_1 = [(r[3], r[4], r[6], r[7]) for r in expected["dim_staff"] if r[0] == 1]
    assert staff_1 == [
        ("Sales", "Manchester", ts(at(8)), ts(at(9))),
        ("Finance", "Leeds", ts(at(9)), ts(at(10))),
        ("Finance", "York", ts(at(10)), ts(at(13))),
        ("Sales", "Manchester", ts(at(13)), ts(at(14))),
        ("Sales", "Manchester", ts(at(14)), None),
    ]


def _checksums(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        out = {}
        for table in HISTORIES:
            cols = sql.SQL(", ").join(map(sql.Identifier, table.column_names))
            (digest,) = conn.execute(  # type: ignore[misc]
                sql.SQL(
                    "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) "
                    "FROM (SELECT {} FROM {}) t"
                ).format(cols, sql.Identifier(table.name))
            ).fetchone()
            out[table.name] = digest
        return out


def test_reloading_every_batch_leaves_every_history_unchanged(pipeline) -> None:
    p = pipeline("reload")
    for batch in _changes():
        p.step(batch)
    before = _checksums(p.dsn)
    assert all(before.values()), before
    assert load("again", p.settings).status == "nothing_to_do"
    with psycopg.connect(p.dsn) as conn:  # forget every batch: the load applies them all again
        ids_before = conn.execute(
            "SELECT dim_staff_version_id FROM dim_staff_history ORDER BY 1"
        ).fetchall()
        conn.execute("DELETE FROM etl_load_ledger WHERE batch_run_id = %s", (f"t{p.runs}",))
    assert load("last-again", p.settings).status == "loaded"
    assert _checksums(p.dsn) == before
    with psycopg.connect(p.dsn) as conn:  # re-applying the last batch rewrote nothing
        assert (
            conn.execute("SELECT dim_staff_version_id FROM dim_staff_history ORDER BY 1").fetchall()
            == ids_before
        )
        conn.execute("DELETE FROM etl_load_ledger")
    result = load("all-again", p.settings)
    assert result.status == "loaded" and len(result.batches) == p.runs
    assert _checksums(p.dsn) == before


def test_history_rows_are_loaded_in_the_batch_transaction(pipeline, monkeypatch) -> None:
    """A failure after the history is written rolls it back with the rest of the batch."""
    from pipeline.load import run as load_run

    p = pipeline("atomic")
    p.step(("department", departments()), ("staff", [row("staff", at=at(9))]))
    before = p.history("dim_staff")
    write_batch(p.ingest, "staff", "late", [row("staff", at=at(10), department_id=2)])
    assert transform("t-late", p.settings).status == "ok"

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("crash before the ledger row")

    monkeypatch.setattr(load_run, "record_batch", fail)
    with pytest.raises(RuntimeError):
        load("crash", p.settings)
    assert p.history("dim_staff") == before
    monkeypatch.undo()
    assert load("retry", p.settings).status == "loaded"
    assert [r[3] for r in p.history("dim_staff")] == ["Sales", "Finance"]


def test_first_run_on_a_zone_without_versions_seeds_history_from_the_current_state(
    pipeline, monkeypatch
) -> None:
    """A processed zone written before history existed keeps only the current state: the
    next run takes each current row as its first version and emits every key's history."""
    from pipeline.transform import history as history_module

    p = pipeline("seed")
    write_lookups(p.ingest, "e0", at=at(7))
    monkeypatch.setattr(history_module, "VERSIONED_TABLES", ())
    assert transform("t0", p.settings).status == "ok"  # as the code before history did
    monkeypatch.undo()
    p.step(("staff", [row("staff", at=at(9), department_id=1, first_name="Jerry")]))
    assert p.history("dim_staff", "first_name", "valid_from", "valid_to") == [
        ("Jeremie", ts(at(7)), ts(at(9))),
        ("Jerry", ts(at(9)), None),
    ]
    assert p.history("dim_design", "design_id", "valid_from", "is_current") == [
        (1, ts(at(7)), True)
    ]


def test_a_deleted_and_restored_counterparty_has_a_deleted_version_then_a_new_current_one(
    pipeline,
) -> None:
    from tests.lake_builders import write_tombstones

    p = pipeline("deleted")
    p.step(
        ("address", [row("address", at=at(7))]), ("counterparty", [row("counterparty", at=at(8))])
    )
    p.runs += 1
    write_tombstones(p.ingest, "counterparty", "r1.tombstones", [1], at="2024-11-04 12:00:00")
    assert transform(f"t{p.runs}", p.settings).status == "ok"
    assert load(f"l{p.runs}", p.settings).status == "loaded"
    columns = ("counterparty_id", "valid_from", "valid_to", "is_current", "is_deleted")
    deleted_at = ts("2024-11-04 12:00:00")
    assert p.history("dim_counterparty", *columns) == [
        (1, ts(at(8)), deleted_at, False, False),
        (1, deleted_at, None, True, True),
    ]
    # It comes back (re-created in totesys, a later snapshot re-extracts it).
    p.step(("counterparty", [row("counterparty", at=at(14), counterparty_legal_name="Fahey Ltd")]))
    assert p.history("dim_counterparty", *columns, "counterparty_legal_name") == [
        (1, ts(at(8)), deleted_at, False, False, "Fahey and Sons"),
        (1, deleted_at, ts(at(14)), False, True, "Fahey and Sons"),
        (1, ts(at(14)), None, True, False, "Fahey Ltd"),
    ]
    with psycopg.connect(p.dsn) as conn:  # the type 1 row exists again too
        assert conn.execute("SELECT _deleted_at FROM dim_counterparty").fetchall() == [(None,)]


def test_a_key_restored_unchanged_is_live_from_the_snapshot_that_found_it(pipeline) -> None:
    from tests.lake_builders import write_tombstones

    p = pipeline("restored")
    p.step(("design", [row("design", at=at(8))]))
    p.runs += 1
    write_tombstones(p.ingest, "design", "r1.tombstones", [1], at="2024-11-04 12:00:00")
    assert transform(f"t{p.runs}", p.settings).status == "ok"
    assert load(f"l{p.runs}", p.settings).status == "loaded"
    p.step(("design", [row("design", at=at(8))]))  # the same version, found again
    history = p.history("dim_design", "valid_from", "valid_to", "is_current", "is_deleted")
    assert [h[3] for h in history] == [False, True, False]
    found_again = history[2][0]  # the snapshot start of the batch that delivered it again
    assert found_again > ts("2024-11-04 12:00:00") and history[2][1:3] == (None, True)
    assert history[1] == (ts("2024-11-04 12:00:00"), found_again, False, True)
