"""The load's fast paths give the same warehouse as the general ones: a first load COPYs
dimensions straight into their empty tables; foreign keys of bulk fact batches are checked
by key ranges; no pandas import on the way (a cold start cost). Real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from pipeline.lake import Lake
from pipeline.load import apply, facts, load
from pipeline.load.migrations import migrate
from pipeline.settings import Settings
from pipeline.warehouse_schema import WAREHOUSE_TABLES
from tests.processed_builders import (
    date_rows,
    dimension_rows,
    full_contents,
    star_batch,
    write_batch,
)

pytestmark = pytest.mark.postgres
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "processed"))


Batches = list[tuple[str, dict[str, Any], dt.datetime, int]]  # name, tables, committed, parts


def _two_batches() -> Batches:
    out = []
    for k, name in enumerate(["b1", "b2"]):
        when = T0 + dt.timedelta(days=k)
        batch = star_batch(when, ids=range(1 + k, 6 + k), suffix=name)
        if k:  # b2: ids 1-3 of every dimension changed, 4-6 new
            batch.update(dimension_rows(6, suffix=name))
        out.append((name, batch, when.replace(tzinfo=dt.UTC), 2))
    return out


def _older_batch_late() -> Batches:
    new, old = T0 + dt.timedelta(days=1), T0
    out = []
    for name, when in [("newer", new), ("older", old)]:
        batch = star_batch(when, suffix=f"-{name}")
        batch.update(dimension_rows(5 if name == "older" else 3, suffix=f"-{name}"))
        out.append((name, batch, when.replace(tzinfo=dt.UTC), 1))
    return out  # the older batch arrives late


def _write(lake: Lake, batches: Batches) -> list[str]:
    for name, tables, when, parts in batches:
        write_batch(lake, name, tables, committed_at=when, parts=parts)
    return [name for name, *_ in batches]


def _load_each(lake: Lake, dsn: str, batches: Batches) -> list[dict[str, Any]]:
    """Commit and load the batches one at a time, in their order (a late batch arrives
    after the load of the one before it)."""
    results = []
    for name, tables, when, parts in batches:
        write_batch(lake, name, tables, committed_at=when, parts=parts)
        results.append(load(f"l-{name}", Settings(processed_url=lake.url, warehouse_dsn=dsn)))
    return [r.to_dict() for r in results]


@pytest.mark.parametrize("scenario", [_two_batches, _older_batch_late])
def test_copying_new_dimension_keys_equals_the_upsert_path(
    tmp_path, make_database, monkeypatch: pytest.MonkeyPatch, scenario: Any
) -> None:
    """A first load COPYs into the empty dimensions; with SPLIT_ROWS = 1 every later batch
    COPYs its new keys and upserts the known ones. Same warehouse as the general path."""
    batches = scenario()
    copied: list[str] = []
    real = apply.copy_rows

    def spy(conn: psycopg.Connection, lake: Lake, out: Any, batch: str, mask: Any = None) -> int:
        copied.append(f"{batch}:{out.table.name}:{'all' if mask is None else int(mask.sum())}")
        return real(conn, lake, out, batch, mask)

    monkeypatch.setattr(apply, "copy_rows", spy)
    monkeypatch.setattr(apply, "SPLIT_ROWS", 1)
    fast_dsn = make_database("fast")
    fast = _load_each(Lake(str(tmp_path / "fast")), fast_dsn, batches)
    first, second = (name for name, *_ in batches)
    dims = [t for t in WAREHOUSE_TABLES if t.startswith("dim_")]
    assert sorted(c for c in copied if c.startswith(f"{first}:")) == sorted(
        f"{first}:{t}:all" for t in dims
    )
    later = {c.split(":")[1]: int(c.split(":")[2]) for c in copied if c.startswith(f"{second}:")}
    assert later["dim_staff"] == (3 if scenario is _two_batches else 2)  # the new keys only
    assert "dim_currency" not in later  # no new key: nothing to COPY

    def refuse(*args: Any) -> int:
        raise psycopg.errors.UniqueViolation("force the general path")

    monkeypatch.setattr(apply, "copy_rows", refuse)
    general_dsn = make_database("general")
    assert _load_each(Lake(str(tmp_path / "general")), general_dsn, batches) == fast
    contents = full_contents(fast_dsn)
    assert contents == full_contents(general_dsn)  # lineage included
    if scenario is _older_batch_late:  # known keys keep the newer values, new ones are added
        assert [r[1] for r in contents["dim_staff"]] == [
            *(f"First{i}-newer" for i in (1, 2, 3)),
            *(f"First{i}-older" for i in (4, 5)),
        ]


def test_a_date_repeated_in_a_first_batch_is_loaded_once(lake: Lake, pg_dsn: str) -> None:
    batch = star_batch(T0)
    batch["dim_date"] = batch["dim_date"] + batch["dim_date"][:1]
    write_batch(lake, "b1", batch)
    result = load("l", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))
    assert result.rows["dim_date"] == 2
    assert [r[-1] for r in full_contents(pg_dsn)["dim_date"]] == ["b1", "b1"]


def test_a_dimension_row_refused_by_copy_names_table_and_column(lake: Lake, pg_dsn: str) -> None:
    from pipeline.errors import DataQualityError

    batch = star_batch(T0)
    days = date_rows(dt.date(2026, 1, 1))
    days[0]["day_of_week"] = None  # NOT NULL in the warehouse
    schema = WAREHOUSE_TABLES["dim_date"].arrow_schema
    nullable = pa.schema([f.with_nullable(True) for f in schema])
    batch["dim_date"] = pa.Table.from_pylist(batch["dim_date"] + days, schema=nullable)
    write_batch(lake, "b1", batch)
    with pytest.raises(DataQualityError, match=r"dim_date.*day_of_week"):
        load("l", Settings(processed_url=lake.url, warehouse_dsn=pg_dsn))


def _keys(column: str, *chunks: list[Any]) -> np.ndarray:
    typ = WAREHOUSE_TABLES["fact_payment"].arrow_schema.field(column).type
    keyset = facts.KeySet()
    for values in chunks:
        keyset.add(pa.array(values, typ))
    return keyset.values()


def test_key_sets_collect_distinct_values_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _keys("transaction_id", [5, 3, 5], [9], [], [1, 3]).tolist() == [1, 3, 5, 9]
    d = dt.date(2026, 1, 1)
    days = (d - dt.date(1970, 1, 1)).days
    assert _keys("payment_date", [d, d], [dt.date(2025, 12, 31)]).tolist() == [days - 1, days]
    monkeypatch.setattr(facts.KeySet, "MAX_SPAN", 10)
    assert _keys("transaction_id", [5, 3], [2**30, 3], [7]).tolist() == [3, 5, 7, 2**30]


@pytest.mark.parametrize("probe_keys", [0, facts.PROBE_KEYS], ids=["ranges", "probes"])
def test_missing_keys_are_found_by_ranges_and_by_probes(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, probe_keys: int
) -> None:
    monkeypatch.setattr(facts, "PROBE_KEYS", probe_keys)
    migrate(pg_dsn)
    first = dt.date(2026, 1, 1)
    days = [first + dt.timedelta(days=k) for k in range(10) if k != 4]  # no 2026-01-05
    columns = {c.name: c for c in WAREHOUSE_TABLES["fact_payment"].columns}
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "INSERT INTO dim_transaction (transaction_id, transaction_type) "
            "SELECT i, 'SALE' FROM generate_series(1, 100) i WHERE i <> 50"
        )
        conn.execute(
            "INSERT INTO dim_date (date_id, year, month, day, day_of_week, day_name, "
            "month_name, quarter) SELECT d, 2026, 1, 1, 1, 'x', 'y', 1 FROM unnest(%s::date[]) d",
            (days,),
        )

        def missing(column: str, *chunks: list[Any]) -> str | None:
            return facts._missing_key(conn, columns[column], _keys(column, *chunks))

        assert missing("transaction_id", list(range(1, 50))) is None  # dense below the gap
        assert missing("transaction_id", list(range(1, 101))) == "50"
        assert missing("transaction_id", [100, 1], [50, 99]) == "50"
        assert missing("transaction_id", list(range(51, 101)), [1]) is None
        assert missing("transaction_id", [101]) == "101"
        assert missing("payment_date", days) is None
        assert missing("payment_date", days[:4]) is None
        assert missing("payment_date", [first, first + dt.timedelta(days=9)]) is None
        assert missing("payment_date", [*days, dt.date(2026, 1, 5)]) == "2026-01-05"
        assert missing("payment_date", []) is None


def _scans(conn: psycopg.Connection, table: str) -> tuple[int, int]:
    """Sequential and index scans of `table` so far in this transaction."""
    row = conn.execute(
        "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables WHERE relname = %s",
        (table,),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


@pytest.mark.parametrize("table", ["dim_transaction", "dim_date"])
def test_keys_present_are_found_by_index_probes_never_a_scan_of_the_table(
    pg_dsn: str, table: str
) -> None:
    """The batch positions whose key the table holds, for keys in any order, partly outside
    the table's range, with gaps: found by probes of the key's index. A join that scans or
    hashes the whole table for each batch made a first load of many batches quadratic."""
    migrate(pg_dsn)
    spec = WAREHOUSE_TABLES[table]
    ids = np.random.default_rng(1).permutation(np.arange(1, 30_001)).astype(np.int32)
    held = (ids >= 1_000) & (ids <= 20_000) & (ids % 7 != 0)
    epoch = dt.date(1970, 1, 1)
    with psycopg.connect(pg_dsn) as conn:
        if table == "dim_date":
            conn.execute(
                "INSERT INTO dim_date (date_id, year, month, day, day_of_week, day_name, "
                "month_name, quarter) SELECT %s::date + i, 2026, 1, 1, 1, 'x', 'y', 1 "
                "FROM generate_series(1000, 20000) i WHERE i %% 7 <> 0",
                (epoch,),
            )
            column = pa.array(ids).view(pa.date32())
        else:
            conn.execute(
                "INSERT INTO dim_transaction (transaction_id, transaction_type) "
                "SELECT i, 'SALE' FROM generate_series(1000, 20000) i WHERE i % 7 <> 0"
            )
            column = pa.array(ids)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        seq_before, idx_before = _scans(conn, table)
        found = apply.rows_present(
            conn, spec, (spec.primary_key,), pa.table({spec.primary_key: column})
        )
        seq_after, idx_after = _scans(conn, table)
        assert sorted(found.tolist()) == np.flatnonzero(held).tolist()
        assert seq_after == seq_before  # no scan of the table
        assert idx_after > idx_before
        outside = pa.table({spec.primary_key: column.filter(pa.array(ids > 20_000))})
        assert apply.rows_present(conn, spec, (spec.primary_key,), outside).tolist() == []
        assert _scans(conn, table) == (seq_after, idx_after + 2)  # min and max only


def test_a_load_does_not_import_pandas(lake: Lake, pg_dsn: str) -> None:
    """pyarrow imports pandas on Python-object conversions (fill_null(0), pa.array(...),
    pq.read_table): a second of a cold start for nothing. The load avoids them."""
    _write(lake, _two_batches())
    write_batch(  # an overlapping batch: the natural-key lookup path too
        lake,
        "b3",
        star_batch(T0 + dt.timedelta(days=1), ids=range(2, 8), suffix="b3"),
        committed_at=(T0 + dt.timedelta(days=2)).replace(tzinfo=dt.UTC),
    )
    code = (
        "import sys\n"
        "from pipeline.load import load\n"
        "from pipeline.load import apply, facts\n"
        "from pipeline.settings import Settings\n"
        "apply.SPLIT_ROWS = facts.BULK_FK_ROWS = facts.PROBE_KEYS = 1  # every fast path\n"
        f"r = load('l', Settings(processed_url={lake.url!r}, warehouse_dsn={pg_dsn!r}))\n"
        "assert r.batches == ['b1', 'b2', 'b3'], r\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"
