"""Dimension history: every version of each source-backed dimension row (docs/HISTORY.md).

The type 1 dimensions keep the latest state only. For their `<dim>_history` tables the
transform keeps every valid version of each lookup source table (`versions/<table>` state,
bucketed like `current/<table>`: primary key and `last_updated` identify a version; a
re-delivery of a version with other values replaces it) and, for the keys whose versions
changed in a run, rebuilds their whole history from those versions:

- a candidate version starts at each `last_updated` of the source row and, for a joined
  dimension (`dim_staff` = staff + department), at each `last_updated` of a looked-up row
  the key referenced; the dimension row at that instant joins the source row as it was
  then with the looked-up row as it was then (its earliest version covers any time before
  it: a lookup row is taken to have existed as first seen);
- a deletion interval of the key (from reconciliation's tombstones) starts a deleted
  version and its end (the key found again) a live one;
- consecutive candidates equal in every tracked column (all but the key; deletion is
  tracked too) are one version; each version ends where the next begins.

The history is a function of the set of versions only, so batches arriving late or in any
order produce the same history; a run emits the full history of every key it touched,
and the load replaces those keys' versions (`pipeline.load.history`). Versions the
dimension would quarantine (a missing lookup row, an unknown currency) are not versions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from pipeline.catalog import TABLES
from pipeline.transform import state as st
from pipeline.transform.current import empty_state
from pipeline.transform.deletes import OBSERVED
from pipeline.transform.deletes import _observations as observed_from
from pipeline.transform.dimensions import DIMENSION_SPECS, JOINED_TABLES, DimensionSpec
from pipeline.transform.inputs import BATCH_COLUMN
from pipeline.transform.quality import RULE
from pipeline.warehouse_schema import (
    DELETED_AT,
    HISTORY_TABLES,
    IS_CURRENT,
    IS_DELETED,
    VALID_FROM,
    VALID_TO,
    history_table,
)

DELETED_FROM, DELETED_TO = "deleted_from", "deleted_to"  # a key's deletion intervals
_POINT = "__at"  # a candidate version's start
_LOOKUP_LU = "__lookup_last_updated"
_BEFORE_ALL = dt.datetime(1, 1, 1)  # the earliest version of a lookup row covers all before


# The dimensions with a history table, and the source tables their versions come from.
HISTORY_SPECS: tuple[DimensionSpec, ...] = tuple(
    spec for spec in DIMENSION_SPECS if f"{spec.name}_history" in HISTORY_TABLES
)
VERSIONED_TABLES: tuple[str, ...] = tuple(
    sorted(
        {spec.source for spec in HISTORY_SPECS}
        | {t for spec in HISTORY_SPECS for t in spec.lookups.values()}
    )
)


def versions_kind(table: str) -> str:
    return f"versions/{table}"


def empty_deletions(pk: str) -> pl.DataFrame:
    return pl.DataFrame(
        schema={pk: pl.Int32, DELETED_FROM: pl.Datetime("ms"), DELETED_TO: pl.Datetime("ms")}
    )


def fold_versions(
    table: str, held: pl.DataFrame, incoming: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fold this run's good rows (with `_batch`) into the versions held for their keys.

    Returns every version of the keys `held` covers plus the new ones, sorted by key and
    `last_updated`, and the versions that are new or re-delivered with other values (the
    later batch of a run wins a tie). Identical re-deliveries are no change.
    """
    t = TABLES[table]
    pk, lu, columns = t.primary_key, t.cursor, list(t.column_names)
    latest = (
        incoming.sort(BATCH_COLUMN, maintain_order=True)
        .unique([pk, lu], keep="last", maintain_order=True)
        .select(columns)
    )
    new = latest.join(held, on=columns, how="anti", nulls_equal=True)
    if new.height == 0:
        return held, new
    kept = held.join(new.select(pk, lu), on=[pk, lu], how="anti")
    return pl.concat([kept, new]).sort([pk, lu]), new


@dataclass
class History:
    """One run's view of the versions state and the history it emits."""

    store: st.StateStore
    versions: dict[str, pl.DataFrame] = field(default_factory=dict)  # table -> versions read
    new: dict[str, pl.DataFrame] = field(default_factory=dict)  # table -> new versions

    def __post_init__(self) -> None:
        for table in VERSIONED_TABLES:
            self._seed(table)

    def _seed(self, table: str) -> None:
        """A processed zone from before history keeps the current state only: its latest
        versions become the first versions (once), and every key's history is emitted."""
        kind, pk = versions_kind(table), TABLES[table].primary_key
        current = f"current/{table}"
        if self.store.stored_buckets(kind) or not (
            self.store.stored_buckets(current) or current in self.store.base.files
        ):
            return
        latest = self.store.read(current, empty_state(table), pk)
        if latest.height:
            self.versions[table] = self.new[table] = latest
            self.store.update(kind, latest, pk, None)

    def add(self, table: str, checked: pl.DataFrame) -> None:
        """Fold a lookup table's good rows of this run into its versions state."""
        if table not in VERSIONED_TABLES:
            return
        pk, kind = TABLES[table].primary_key, versions_kind(table)
        seeded = table in self.new  # from the current state, in this run: every bucket
        if seeded:
            held = self.versions[table]
        else:
            whole = table in JOINED_TABLES  # small, and joined: read whole
            buckets = None if whole else self.store.buckets_in(checked[pk])
            held = self.store.read(kind, empty_state(table), pk, buckets)
        versions, new = fold_versions(table, held, checked)
        self.versions[table] = versions
        if new.height or seeded:
            self.new[table] = pl.concat([self.new[table], new]) if seeded else new
            dirty = None if seeded else self.store.buckets_in(new[pk])
            self.store.update(kind, versions, pk, dirty)

    def _all(self, table: str) -> pl.DataFrame:
        if table not in self.versions:  # a joined table this run brought nothing for
            pk = TABLES[table].primary_key
            self.versions[table] = self.store.read(versions_kind(table), empty_state(table), pk)
        return self.versions[table]

    def deletions(
        self,
        marks: dict[str, pl.DataFrame],
        rows: Callable[[str], pl.LazyFrame | None],
        ordinals: dict[int, str],
    ) -> tuple[dict[str, pl.DataFrame], dict[str, pl.Series]]:
        """Fold this run's deletion marks (`pipeline.transform.deletes`: per dimension, the
        key and when it was found deleted, NULL when found again) into the deletion
        intervals kept per source table; (every interval, keys whose intervals changed).

        A key found again is live from its first version after the deletion, or, when the
        source row came back unchanged, from the start of the snapshot that found it."""
        intervals: dict[str, pl.DataFrame] = {}
        changed: dict[str, pl.Series] = {}
        for spec in HISTORY_SPECS:
            source, pk = spec.source, TABLES[spec.source].primary_key
            kind = deletions_kind(source)
            held = self.store.read_whole(kind, empty_deletions(pk))
            mine = marks.get(spec.name)
            if mine is None or mine.height == 0:
                intervals[source] = held
                continue
            mine = mine.rename({spec.table.primary_key: pk})
            mine = mine.with_columns(pl.col(pk).cast(pl.Int32))
            deleted = mine.filter(pl.col(DELETED_AT).is_not_null()).select(
                pk, pl.col(DELETED_AT).alias(DELETED_FROM)
            )
            back = mine.filter(pl.col(DELETED_AT).is_null())[pk]
            restored = self._restored_at(source, held, back, rows, ordinals)
            new, keys = fold_deletions(pk, held, deleted, restored)
            if keys.len():
                self.store.replace(kind, new)
                changed[source] = keys
            intervals[source] = new
        return intervals, changed

    def _restored_at(
        self,
        source: str,
        held: pl.DataFrame,
        keys: pl.Series,
        rows: Callable[[str], pl.LazyFrame | None],
        ordinals: dict[int, str],
    ) -> pl.DataFrame:
        """(key, `DELETED_TO`) for keys found again in this run."""
        pk, lu = TABLES[source].primary_key, TABLES[source].cursor
        if keys.len() == 0:
            return pl.DataFrame(schema=[(pk, pl.Int32), (DELETED_TO, pl.Datetime("ms"))])
        opened = held.filter(pl.col(DELETED_TO).is_null() & pl.col(pk).is_in(keys.implode()))
        after = (
            self._versions_of(source, keys)
            .join(opened.select(pk, DELETED_FROM), on=pk)
            .filter(pl.col(lu) > pl.col(DELETED_FROM))
            .group_by(pk)
            .agg(pl.col(lu).min().alias("__first_after"))
        )
        seen = observed_from(rows, ordinals, source, keys).with_columns(
            pl.col(OBSERVED).str.to_datetime(time_unit="ms", time_zone=None, strict=False)
        )
        return (
            opened.select(pk)
            .join(after, on=pk, how="left")
            .join(seen, on=pk, how="left")
            .select(pk, pl.coalesce("__first_after", OBSERVED).alias(DELETED_TO))
            .drop_nulls(DELETED_TO)
        )

    def _versions_of(self, table: str, keys: pl.Series) -> pl.DataFrame:
        """Every version of the given keys (row-local tables: their buckets read if this
        run has not read them)."""
        pk = TABLES[table].primary_key
        if table in JOINED_TABLES:
            held = self._all(table)
        else:
            held = self.versions.get(table, empty_state(table))
            missing = keys.filter(~keys.is_in(held[pk].implode()))
            if missing.len():
                kind, buckets = versions_kind(table), self.store.buckets_in(missing)
                more = self.store.read(kind, empty_state(table), pk, buckets)
                held = pl.concat([held, more.filter(pl.col(pk).is_in(missing.implode()))])
        return held.filter(pl.col(pk).is_in(keys.implode()))

    def build(
        self,
        deletions: dict[str, pl.DataFrame] | None = None,
        deleted_keys: dict[str, pl.Series] | None = None,
    ) -> dict[str, pl.DataFrame]:
        """History table -> the full history of every key whose versions changed in this run
        or whose deletion intervals did (`deleted_keys`, per source table; `deletions`: every
        deletion interval of the source table, `DELETED_FROM`/`DELETED_TO`)."""
        deletions, deleted_keys = deletions or {}, deleted_keys or {}
        out: dict[str, pl.DataFrame] = {}
        for spec in HISTORY_SPECS:
            source, pk = spec.source, TABLES[spec.source].primary_key
            parts = [self.new[source][pk]] if source in self.new else []
            if source in deleted_keys:
                parts.append(deleted_keys[source].cast(pl.Int32))
            for fk, lookup in spec.lookups.items():
                if lookup in self.new:
                    lookup_pk = TABLES[lookup].primary_key
                    changed = self.new[lookup][lookup_pk].implode()
                    parts.append(self._all(source).filter(pl.col(fk).is_in(changed))[pk])
            if not parts:
                continue
            keys = pl.concat(parts).unique()
            if keys.len() == 0:
                continue
            rows = self._versions_of(source, keys)
            lookups = {lookup: self._all(lookup) for lookup in spec.lookups.values()}
            gone = deletions.get(source, empty_deletions(pk))
            out[history_table(spec.name).name] = history_rows(spec, rows, lookups, gone)
        return out


def history_rows(
    spec: DimensionSpec,
    versions: pl.DataFrame,
    lookups: dict[str, pl.DataFrame],
    deletions: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The history of the keys in `versions` (every version of each of them, catalog
    columns), given every version of the looked-up tables and the keys' deletion intervals
    (`DELETED_FROM`, `DELETED_TO`; NULL: still deleted)."""
    source = spec.source
    pk, lu = TABLES[source].primary_key, TABLES[source].cursor
    gone = empty_deletions(pk) if deletions is None else deletions
    gone = gone.filter(pl.col(pk).is_in(versions[pk].implode()))
    points = [versions.select(pk, pl.col(lu).alias(_POINT))]
    for fk, lookup in spec.lookups.items():
        lookup_pk, lookup_lu = TABLES[lookup].primary_key, TABLES[lookup].cursor
        changes = lookups[lookup].select(
            pl.col(lookup_pk).alias(fk), pl.col(lookup_lu).alias(_POINT)
        )
        points.append(versions.select(pk, fk).unique().join(changes, on=fk).select(pk, _POINT))
    for end in (DELETED_FROM, DELETED_TO):
        points.append(gone.select(pk, pl.col(end).alias(_POINT)).drop_nulls())
    candidates = pl.concat(points).unique().sort(_POINT)
    # The source row as it was at each candidate instant (none before its first version).
    at = candidates.join_asof(
        versions.sort(lu),
        left_on=_POINT,
        right_on=lu,
        by=pk,
        strategy="backward",
        check_sortedness=False,
    ).filter(pl.col(lu).is_not_null())
    if spec.lookups:  # joined as at each instant; a key without its lookup row is skipped
        built = _join_as_at(spec, at, lookups)
    else:
        built, _ = spec.build({source: at})
        built = built.filter(pl.col(RULE).is_null())
    deleted = _deleted_at_points(built.select(pk, _POINT), gone, pk)
    rows = built.select(*spec.projection(), pl.col(_POINT).alias(VALID_FROM)).join(
        deleted, left_on=[spec.table.primary_key, VALID_FROM], right_on=[pk, _POINT], how="left"
    )
    return _collapse(rows.with_columns(pl.col(IS_DELETED).fill_null(False)), spec)


def _join_as_at(
    spec: DimensionSpec, at: pl.DataFrame, lookups: dict[str, pl.DataFrame]
) -> pl.DataFrame:
    """Add the looked-up columns as they were at each candidate instant, named as
    `DimensionSpec.build` names them after its join; instants whose lookup row is missing
    are dropped."""
    [(fk, lookup)] = spec.lookups.items()  # one lookup per dimension
    lookup_pk, lookup_lu = TABLES[lookup].primary_key, TABLES[lookup].cursor
    mapping = {str(c.lineage.column): c.name for c in spec.joined if c.lineage}
    right = lookups[lookup].select(
        pl.col(lookup_pk).alias(fk),
        pl.col(lookup_lu).alias(_LOOKUP_LU),
        *(pl.col(src).alias(dst) for src, dst in mapping.items()),
    )
    earliest = right.sort(_LOOKUP_LU).unique(fk, keep="first", maintain_order=True)
    right = pl.concat(
        [earliest.with_columns(pl.lit(_BEFORE_ALL, pl.Datetime("ms")).alias(_LOOKUP_LU)), right]
    ).sort(_LOOKUP_LU)
    return at.join_asof(
        right,
        left_on=_POINT,
        right_on=_LOOKUP_LU,
        by=fk,
        strategy="backward",
        check_sortedness=False,
    ).filter(pl.col(_LOOKUP_LU).is_not_null())


def _deleted_at_points(points: pl.DataFrame, gone: pl.DataFrame, pk: str) -> pl.DataFrame:
    """`IS_DELETED` for the (key, instant) pairs inside one of the key's deletion intervals."""
    if gone.height == 0:
        return pl.DataFrame(
            schema=[(pk, pl.Int32), (_POINT, pl.Datetime("ms")), (IS_DELETED, pl.Boolean)]
        )
    inside = (pl.col(DELETED_FROM) <= pl.col(_POINT)) & (
        pl.col(DELETED_TO).is_null() | (pl.col(_POINT) < pl.col(DELETED_TO))
    )
    return (
        points.join(gone, on=pk)
        .filter(inside)
        .select(pk, _POINT, pl.lit(True).alias(IS_DELETED))
        .unique([pk, _POINT])
    )


def _collapse(rows: pl.DataFrame, spec: DimensionSpec) -> pl.DataFrame:
    """One version per run of equal tracked values; each ends where the next begins."""
    table = history_table(spec.name)
    key = spec.table.primary_key
    tracked = [*spec.table.column_names[1:], IS_DELETED]
    rows = rows.sort([key, VALID_FROM])
    starts = pl.col(key).ne_missing(pl.col(key).shift())
    for c in tracked:
        starts = starts | pl.col(c).ne_missing(pl.col(c).shift())
    kept = rows.filter(starts)
    same_key = pl.col(key).shift(-1) == pl.col(key)
    valid_to = pl.when(same_key).then(pl.col(VALID_FROM).shift(-1))
    return (
        kept.with_columns(valid_to.alias(VALID_TO))
        .with_columns(pl.col(VALID_TO).is_null().alias(IS_CURRENT))
        .select(table.column_names)
    )


# -- deletions --------------------------------------------------------------------------
def deletions_kind(table: str) -> str:
    return f"deletions/{table}"


def fold_deletions(
    pk: str, held: pl.DataFrame, deleted: pl.DataFrame, restored: pl.DataFrame
) -> tuple[pl.DataFrame, pl.Series]:
    """A source table's deletion intervals after this run, and the keys whose changed.

    `deleted`: (key, `DELETED_FROM`) of keys found deleted (an open interval starts unless
    one is open); `restored`: (key, `DELETED_TO`) of keys found again (their open interval
    ends there; an end not after its start drops the interval: the key was never gone).
    """
    open_ = pl.col(DELETED_TO).is_null()
    is_open = held.filter(open_)
    starts = (
        deleted.join(is_open.select(pk), on=pk, how="anti")
        .join(restored.select(pk), on=pk, how="anti")
        .unique(pk)
        .select(pk, DELETED_FROM, pl.lit(None, pl.Datetime("ms")).alias(DELETED_TO))
    )
    ends = is_open.drop(DELETED_TO).join(restored.unique(pk), on=pk)
    ends = ends.filter(pl.col(DELETED_TO) > pl.col(DELETED_FROM))
    ended = is_open.select(pk).join(restored.select(pk), on=pk, how="semi")
    kept = pl.concat([held.filter(~open_), is_open.join(ended, on=pk, how="anti")])
    new = pl.concat([kept, ends.select(held.columns), starts.select(held.columns)])
    changed = pl.concat([starts[pk], ended[pk]]).unique()
    return new.sort([pk, DELETED_FROM]), changed
