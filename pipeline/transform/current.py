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
    changed: pl.DataFrame  # rows of `state` whose version is new in this run
    duplicates: int  # incoming rows that were re-delivered or superseded versions


def empty_state(table: str) -> pl.DataFrame:
    df = pl.from_arrow(empty_table(TABLES[table].arrow_schema))
    assert isinstance(df, pl.DataFrame)
    return df


def merge(table: str, state: pl.DataFrame, incoming: pl.DataFrame) -> Merged:
    """Fold this run's good rows (with `_batch`) into the state, newest `last_updated` wins.

    Ties on `last_updated` go to the later batch; a version not newer than the stored one
    is a duplicate (the extract's overlap window re-delivers rows on purpose).
    """
    t = TABLES[table]
    pk, lu = t.primary_key, t.cursor
    # Pick the winning row of each id on the key columns only, then gather the full rows
    # once: sorting, de-duplicating and joining whole rows copied the batch several times.
    row = "__row"
    keys = incoming.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias(row), pk, lu, BATCH_COLUMN)
    stored = state.select(pk, pl.col(lu).alias("__stored_lu"))
    winners = (
        keys.sort([lu, BATCH_COLUMN], maintain_order=True)
        .unique(subset=[pk], keep="last", maintain_order=True)
        .join(stored, on=pk, how="left")
        .filter(pl.col("__stored_lu").is_null() | (pl.col(lu) > pl.col("__stored_lu")))
        .sort(pk)[row]
    )
    del keys
    changed = incoming.select(pl.col(t.column_names).gather(winners)).with_columns(
        pl.col(pk).set_sorted()
    )
    if state.height == 0:  # first load: the new state is the changed rows, not a copy
        new_state = changed
    else:
        kept = state.join(changed.select(pk), on=pk, how="anti")
        new_state = pl.concat([kept, changed]).sort(pk)
    return Merged(new_state, changed, incoming.height - changed.height)
