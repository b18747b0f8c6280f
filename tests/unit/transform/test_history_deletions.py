"""Deletion intervals of dimension history: found deleted opens one, found again closes it."""

from __future__ import annotations

import datetime as dt

import polars as pl

from pipeline.transform.history import DELETED_FROM, DELETED_TO, empty_deletions, fold_deletions

PK = "design_id"


def t(hour: int) -> dt.datetime:
    return dt.datetime(2024, 11, 4, hour)


def frame(rows: list[tuple[int, dt.datetime | None]], column: str) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=[(PK, pl.Int32), (column, pl.Datetime("ms"))], orient="row")


def test_deleted_opens_restored_closes_and_a_second_delete_opens_again() -> None:
    held = empty_deletions(PK)
    held, changed = fold_deletions(PK, held, frame([(1, t(9)), (2, t(9))], DELETED_FROM),
                                   frame([], DELETED_TO))  # fmt: skip
    assert sorted(changed.to_list()) == [1, 2]
    assert held.rows() == [(1, t(9), None), (2, t(9), None)]
    # Marked again (a late older version of a deleted key): nothing changes.
    again, changed = fold_deletions(PK, held, frame([(1, t(10))], DELETED_FROM),
                                    frame([], DELETED_TO))  # fmt: skip
    assert again.equals(held) and changed.len() == 0
    held, changed = fold_deletions(
        PK, held, frame([], DELETED_FROM), frame([(1, t(11))], DELETED_TO)
    )
    assert changed.to_list() == [1]
    assert held.rows() == [(1, t(9), t(11)), (2, t(9), None)]
    held, changed = fold_deletions(PK, held, frame([(1, t(12))], DELETED_FROM),
                                   frame([], DELETED_TO))  # fmt: skip
    assert held.rows() == [(1, t(9), t(11)), (1, t(12), None), (2, t(9), None)]


def test_a_restore_not_after_the_delete_means_the_key_was_never_gone() -> None:
    held, _ = fold_deletions(PK, empty_deletions(PK), frame([(1, t(9))], DELETED_FROM),
                             frame([], DELETED_TO))  # fmt: skip
    held, changed = fold_deletions(
        PK, held, frame([], DELETED_FROM), frame([(1, t(9))], DELETED_TO)
    )
    assert changed.to_list() == [1] and held.height == 0
