"""A fact version loaded again with other values is updated in place (same record id,
lineage naming the new batch); loaded again with the same values it is not touched."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from pipeline.errors import ReferentialIntegrityError
from pipeline.lake import Lake
from pipeline.load.run import load
from pipeline.settings import Settings
from tests.processed_builders import row_versions, sales_rows, star_batch, write_batch

pytestmark = pytest.mark.postgres
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)


def _facts(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT sales_record_id, sales_order_id, units_sold, sales_staff_id, _loaded_batch "
            "FROM fact_sales_order ORDER BY 1"
        ).fetchall()


def test_a_changed_version_is_updated_in_place_an_identical_one_is_left_alone(
    tmp_path, pg_dsn: str
) -> None:
    lake = Lake(str(tmp_path / "processed"))
    settings = Settings(processed_url=lake.url, warehouse_dsn=pg_dsn)
    write_batch(lake, "t1", star_batch(T0, ids=range(1, 6)))
    load("l1", settings)
    before = row_versions(pg_dsn, "fact_sales_order")

    # Version 2 again with another units_sold, version 3 again unchanged, 9 is new.
    rows = sales_rows(range(2, 4), T0) + sales_rows(range(9, 10), T0)
    rows[0]["units_sold"] = 999
    write_batch(lake, "t2", {"fact_sales_order": rows})
    result = load("l2", settings)
    assert result.rows == {"fact_sales_order": 2}  # one updated, one added
    facts = _facts(pg_dsn)
    assert [f[:3] for f in facts] == [
        (1, 1, 10), (2, 2, 999), (3, 3, 10), (4, 4, 10), (5, 5, 10), (6, 9, 10)
    ]  # fmt: skip
    assert {f[1]: f[4] for f in facts} == {1: "t1", 2: "t2", 3: "t1", 4: "t1", 5: "t1", 9: "t2"}
    after = row_versions(pg_dsn, "fact_sales_order")
    assert after[3] == before[3] and after[2] != before[2]  # row 3 was not even rewritten


def test_a_correction_to_a_missing_dimension_key_is_refused(tmp_path, pg_dsn: str) -> None:
    lake = Lake(str(tmp_path / "processed"))
    settings = Settings(processed_url=lake.url, warehouse_dsn=pg_dsn)
    write_batch(lake, "t1", star_batch(T0, ids=range(1, 6)))
    load("l1", settings)
    write_batch(lake, "t2", {"fact_sales_order": sales_rows(range(2, 3), T0, ref=404)})
    with pytest.raises(ReferentialIntegrityError, match="404"):
        load("l2", settings)
    assert [f[3] for f in _facts(pg_dsn)] == [1, 1, 1, 1, 1]  # nothing of the batch applied
