"""Deletes: tombstone batches, and rows found again, become deletion marks for the load.

Reconciliation (`pipeline.extract.reconcile`) records the keys the source no longer has
as tombstone batches (`layout.tombstone_schema`). The transform keeps the keys currently
deleted per source table (`deleted/<table>` state: key, `_deleted_at` = when the deletion
was detected, and the source-clock bound of the detecting snapshot) and emits marks per
warehouse table (`warehouse_schema.deletion_marks`), which the load applies to the rows of
that source row: its dimension row and every fact version.

Order is by source snapshot, not by commit: a key is deleted from its tombstone's snapshot
on, and found again only by a batch whose snapshot began after that one was taken (a
re-extraction of a restored row). A batch from an earlier snapshot that commits later
(a slow concurrent extraction) re-delivers rows as they were before the delete, and does
not undo it. Marks are emitted for keys deleted or found again in this run, and again for
deleted keys whose rows this run emits (a late older version is marked as well).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from pipeline import layout
from pipeline.catalog import TABLES
from pipeline.lake import Lake
from pipeline.transform import state as st
from pipeline.transform.inputs import Batch, check_row_count
from pipeline.warehouse_schema import DELETED_AT, WAREHOUSE_TABLES, source_key, tables_of

TOMBSTONE_TO = "_tombstone_to"  # the detecting snapshot's upper bound (source clock, ISO)
OBSERVED = "_observed_from"


def state_kind(table: str) -> str:
    return f"deleted/{table}"


def empty_state(table: str) -> pl.DataFrame:
    pk = TABLES[table].primary_key
    return pl.DataFrame(
        schema={pk: pl.Int32, DELETED_AT: pl.Datetime("ms"), TOMBSTONE_TO: pl.String}
    )


@dataclass
class Deletions:
    marks: dict[str, pl.DataFrame] = field(default_factory=dict)  # warehouse table -> marks
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # "deleted", "restored"


def _tombstones(lake: Lake, table: str, batches: list[Batch]) -> pl.DataFrame:
    pk = TABLES[table].primary_key
    frames = []
    for batch in batches:
        data = lake.read_parquet(batch.files, schema=layout.tombstone_schema(table))
        check_row_count(table, [(0, batch)], data.num_rows)
        df = pl.from_arrow(data)
        assert isinstance(df, pl.DataFrame)
        frames.append(
            df.select(pk, pl.col(layout.DELETED_AT).alias(DELETED_AT)).with_columns(
                pl.lit(batch.observed[1]).alias(TOMBSTONE_TO)
            )
        )
    return pl.concat(frames) if frames else empty_state(table)


def _observations(
    rows: Callable[[str], pl.LazyFrame | None],
    ordinals: dict[int, str],
    table: str,
    keys: pl.Series,
) -> pl.DataFrame:
    """Per key among `keys`: the latest snapshot start of this run's row batches holding it."""
    pk = TABLES[table].primary_key
    lf = rows(table) if keys.len() else None
    if lf is None:
        return pl.DataFrame(schema={pk: pl.Int32, OBSERVED: pl.String})
    from pipeline.transform.inputs import BATCH_COLUMN

    started = pl.DataFrame(
        {BATCH_COLUMN: list(ordinals), OBSERVED: list(ordinals.values())},
        schema={BATCH_COLUMN: pl.Int32, OBSERVED: pl.String},
    )
    return (
        lf.select(pk, BATCH_COLUMN)
        .filter(pl.col(pk).is_in(keys.implode()))
        .join(started.lazy(), on=BATCH_COLUMN)
        .group_by(pk)
        .agg(pl.col(OBSERVED).max())
        .collect()
    )


def resolve(
    lake: Lake,
    store: st.StateStore,
    tombstones: dict[str, list[Batch]],
    rows: Callable[[str], pl.LazyFrame | None],
    ordinals: dict[int, str],
    emitted: dict[str, pl.Series],
) -> Deletions:
    """Fold this run's tombstones and rows into the deleted state; the marks to load.

    `rows(table)`: this run's rows of the table (with the batch ordinal), None if it has
    none; called only for a table with deleted keys, so a round's rows are read again only
    where a delete may be undone (not a second copy of every batch next to its outputs);
    `ordinals`: batch ordinal -> its snapshot's start; `emitted`: warehouse table -> source
    keys of the rows this run emits for it.
    """
    out = Deletions()
    for table in TABLES:
        pk = TABLES[table].primary_key
        kind = state_kind(table)
        held = store.read_whole(kind, empty_state(table))
        new = _tombstones(lake, table, tombstones.get(table, []))
        if held.height == 0 and new.height == 0:
            continue
        latest = (
            pl.concat([held, new])
            .sort(TOMBSTONE_TO, maintain_order=True)
            .group_by(pk, maintain_order=True)
            .last()
        )
        seen = _observations(rows, ordinals, table, latest[pk])
        cleared = latest.join(seen, on=pk).filter(pl.col(OBSERVED) >= pl.col(TOMBSTONE_TO))
        deleted = latest.join(cleared.select(pk), on=pk, how="anti").sort(pk)
        before = held.select(pk, pl.col(DELETED_AT).alias("__was"))
        changed = deleted.join(before, on=pk, how="left").filter(
            pl.col("__was").ne_missing(pl.col(DELETED_AT))
        )
        restored = cleared.join(held.select(pk), on=pk, how="semi")
        out.counts[table] = {"deleted": changed.height, "restored": restored.height}
        if changed.height or restored.height or held.height != deleted.height:
            store.replace(kind, deleted)
        for target in tables_of(table):
            again = deleted.filter(
                pl.col(pk).is_in(emitted.get(target.name, pl.Series([])).implode())
            )
            marks = pl.concat(
                [
                    changed.select(pk, DELETED_AT),
                    again.select(pk, DELETED_AT),
                    restored.select(pk, pl.lit(None, pl.Datetime("ms")).alias(DELETED_AT)),
                ]
            ).unique(pk, keep="first")
            if marks.height:
                out.marks[target.name] = marks.rename({pk: source_key(target)}).sort(
                    source_key(target)
                )
    return out


def emitted_keys(outputs: dict[str, pl.DataFrame]) -> dict[str, pl.Series]:
    """Warehouse table -> source keys of the rows this run emits for it."""
    return {
        name: df[source_key(WAREHOUSE_TABLES[name])]
        for name, df in outputs.items()
        if df.height and WAREHOUSE_TABLES[name].source
    }
