"""Which source ids a fact batch makes the load re-mark (`pipeline.load.versions`)."""

from __future__ import annotations

import numpy as np
from psycopg import sql

from pipeline.load.versions import mark_statement, touched_ids
from pipeline.warehouse_schema import WAREHOUSE_TABLES


def _ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int32)


def test_new_source_ids_in_a_first_or_incremental_batch_touch_nothing() -> None:
    assert touched_ids(_ids(1, 2, 3), None).tolist() == []
    assert touched_ids(_ids(11, 12, 13), (1, 10)).tolist() == []  # all above the held range
    assert touched_ids(_ids(13, 11, 12), None).tolist() == []  # unordered, no repeat


def test_ids_repeated_in_the_batch_or_within_the_held_range_are_touched() -> None:
    assert touched_ids(_ids(5, 3, 5, 9, 3, 3), None).tolist() == [3, 5]
    assert touched_ids(_ids(1, 4, 12, 4, 20), (4, 12)).tolist() == [4, 12]
    assert touched_ids(_ids(30, 2, 30), (5, 9)).tolist() == [30]


def test_the_mark_statement_is_scoped_to_the_listed_ids_or_to_all() -> None:
    fact = WAREHOUSE_TABLES["fact_payment"]
    everything = mark_statement(fact, ids=None).as_string(None)
    assert " IN (SELECT" not in everything and "lead(" in everything
    listed = mark_statement(fact, sql.Identifier("_ids")).as_string(None)
    assert 'WHERE "payment_id" IN (SELECT "payment_id" FROM "_ids")' in listed
    assert 'PARTITION BY "payment_id" ORDER BY "last_updated_date", "last_updated_time"' in listed
