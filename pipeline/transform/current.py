"""Current state of the lookup source tables: the latest version of each row, by primary key.

Dimensions are SCD type 1, and a dimension row can change because a row it looks up
changed (a department's location, a counterparty's address). Keeping the latest version
of every lookup table in the processed zone lets a run rebuild exactly the affected
dimension rows even when only one side of the join arrived in this batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline.catalog import TABLES
from pipeline.lake import empty_table
from pipeline.transform.inputs import BATCH_COLUMN

# Source tables whose current state is kept (everything a dimension is built from).
LOOKUP_TABLES: tuple[str, ...] = (
    "address",
    "counterparty",
    "currency",
    "department",
    "design",
    "payment_type",
    "staff",
    "transaction",
)


@dataclass
class Merged:
    state: pl.DataFrame  # new current state: catalog columns, one row per primary key
    changed: pl.DataFrame  # rows of `state` whose version is new (or corrected) in this run
    duplicates: int  # incoming rows that were re-delivered or superseded versions
    corrected: int = 0  # re-deliveries of the held version with other values


def empty_state(table: str) -> pl.DataFrame:
    df = pl.from_arrow(empty_table(TABLES[table].arrow_schema))
    assert isinstance(df, pl.DataFrame)
    return df


def merge(table: str, state: pl.DataFrame, incoming: pl.DataFrame) -> Merged:
    """Fold this run's good rows (with `_batch`) into the state, newest `last_updated` wins.

    Ties on `last_updated` go to the later batch. A version older than the stored one, or
    the stored version again with the same values, is a duplicate (the extract's overlap
    window re-delivers rows on purpose); the stored version with other values (a row fixed
    in totesys without bumping `last_updated`, re-delivered by a backfill) replaces it.
    """
    t = TABLES[table]
    pk, lu = t.primary_key, t.cursor
    # Pick the winning row of each id on the key columns only, then gather the full rows
    # once: sorting, de-duplicating and joining whole rows copied the batch several times.
    row, stored_lu = "__row", "__stored_lu"
    keys = incoming.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias(row), pk, lu, BATCH_COLUMN)
    stored = state.select(pk, pl.col(lu).alias(stored_lu))
    candidates = (
        keys.sort([lu, BATCH_COLUMN], maintain_order=True)
        .unique(subset=[pk], keep="last", maintain_order=True)
        .join(stored, on=pk, how="left")
    )
    del keys
    newer = candidates.filter(pl.col(stored_lu).is_null() | (pl.col(lu) > pl.col(stored_lu)))
    again = candidates.filter(pl.col(lu) == pl.col(stored_lu))[row]
    corrected = _changed_values(table, state, incoming, again)
    chosen = newer.select(pk, row)
    if corrected.height:
        chosen = pl.concat([chosen, corrected])
    winners = chosen.sort(pk)[row]
    changed = incoming.select(pl.col(t.column_names).gather(winners)).with_columns(
        pl.col(pk).set_sorted()
    )
    if state.height == 0:  # first load: the new state is the changed rows, not a copy
        new_state = changed
    else:
        kept = state.join(changed.select(pk), on=pk, how="anti")
        new_state = pl.concat([kept, changed]).sort(pk)
    return Merged(new_state, changed, incoming.height - changed.height, corrected.height)


def _changed_values(
    table: str, state: pl.DataFrame, incoming: pl.DataFrame, rows: pl.Series
) -> pl.DataFrame:
    """`(key, row)` of the incoming `rows` that re-deliver the stored version with other
    values (compared column by column; these are few: the overlap window's re-deliveries)."""
    t = TABLES[table]
    pk, row = t.primary_key, rows.name
    if rows.len() == 0:
        return pl.DataFrame(schema={pk: incoming.schema[pk], row: rows.dtype})
    values = [c for c in t.column_names if c != pk]
    again = incoming.select(pl.col(t.column_names).gather(rows)).with_columns(rows)
    old = state.join(again.select(pk), on=pk, how="semi").rename({c: f"__old_{c}" for c in values})
    differs = pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"__old_{c}")) for c in values)
    return again.join(old, on=pk, how="inner").filter(differs).select(pk, row)
