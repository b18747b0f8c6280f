"""The three facts: one row per source row version, de-duplicated, checked, split into dates.

Flow per fact table, as one lazy Polars plan collected once:
rows with null keys -> quarantine; de-duplicate versions `(id, last_updated)` within the run
(the latest batch wins) and against versions earlier runs handled, by content
(`pipeline.transform.content`): an identical re-delivery (the extract's overlap window) is
dropped, one whose values differ (a backfill after an in-place fix) is a correction and
emitted again, so the load replaces the fact row with that natural key; add rows still
pending from earlier runs; evaluate row rules and dimension-key rules; good rows become
fact rows.

A row whose only problem is a missing dimension row is quarantined *and* kept pending: the
dimension may arrive with a later batch (its table failed to extract this time), and then
the fact row is emitted. A retried row that still misses its dimension stays pending without
being quarantined again; pending rows expire after `PENDING_TTL`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import polars as pl

from pipeline.catalog import TABLES
from pipeline.lake import empty_table
from pipeline.transform.content import CONTENT, fingerprint
from pipeline.transform.inputs import BATCH_COLUMN
from pipeline.transform.quality import (
    DATE_PREFIX,
    RULE,
    annotate,
    key_rules,
    parse_text_dates,
    quarantine_frame,
    reference_rule,
    row_rules,
)
from pipeline.warehouse_schema import (
    COPIED,
    DATE_PART,
    FACTS,
    PARSED_DATE,
    TIME_PART,
    WAREHOUSE_TABLES,
    WarehouseTable,
    WColumn,
)

# Versions already handled, kept per fact table and id bucket (state.py) with their content
# fingerprint, to tell identical re-deliveries (overlap windows, full re-extracts) from
# corrections exactly: 20 bytes each, and a run reads only the buckets of the ids it
# received. Past the cap (16 versions per id on average) a bucket keeps only its newest
# versions, and an older re-delivery is emitted for the load to compare with the warehouse.
SEEN_MAX_PER_BUCKET = 1_000_000
PENDING_TTL = dt.timedelta(days=7)
PENDING_SINCE = "_pending_since"
RETRY = "_retry"
_SEEN, _HELD, CORRECTED = "__seen", "__held", "__corrected"


@dataclass(frozen=True)
class FactSpec:
    """A warehouse fact as the transform builds it: everything comes from the table's
    definition in `pipeline.warehouse_schema` (columns and their lineage)."""

    table: WarehouseTable

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def source(self) -> str:
        assert self.table.source is not None
        return self.table.source

    @property
    def references(self) -> dict[str, str]:
        """Source foreign-key column -> the source table of the dimension it points at."""
        refs = {}
        for c in self.table.columns:
            if c.references and c.references != "dim_date" and c.lineage and c.lineage.column:
                target = WAREHOUSE_TABLES[c.references].source
                assert target is not None
                refs[c.lineage.column] = target
        return refs

    def projection(self) -> list[pl.Expr]:
        """Each warehouse column from its source column, derived as its lineage says."""
        return [_derive(c).alias(c.name) for c in self.table.columns]


def _derive(column: WColumn) -> pl.Expr:
    lineage = column.lineage
    assert lineage is not None and lineage.column is not None
    source = pl.col(lineage.column)
    derived = {
        COPIED: source,
        DATE_PART: source.dt.date(),
        TIME_PART: source.dt.time(),
        PARSED_DATE: pl.col(DATE_PREFIX + lineage.column),  # parsed (and checked) by the rules
    }
    if lineage.how not in derived:
        raise ValueError(f"{column.name}: a fact column cannot be derived by {lineage.how!r}")
    return derived[lineage.how]


@dataclass
class FactOutput:
    rows: pl.DataFrame
    quarantine: pl.DataFrame
    new_seen: pl.DataFrame  # versions handled now: (id, last_updated, content fingerprint)
    pending: pl.DataFrame
    rows_in: int
    duplicates: int
    corrected: int = 0  # re-delivered versions whose content differs from the one held
    pending_counts: dict[str, int] = field(default_factory=dict)


FACT_SPECS: tuple[FactSpec, ...] = tuple(FactSpec(t) for t in FACTS)
FACT_SOURCES: tuple[str, ...] = tuple(f.source for f in FACT_SPECS)


def seen_schema(source: str) -> pl.Schema:
    t = TABLES[source]
    return pl.Schema(
        [(t.primary_key, pl.Int32), (t.cursor, pl.Datetime("ms")), (CONTENT, pl.UInt64)]
    )


def empty_seen(source: str) -> pl.DataFrame:
    return pl.DataFrame(schema=seen_schema(source))


def empty_pending(source: str) -> pl.DataFrame:
    df = pl.from_arrow(empty_table(TABLES[source].arrow_schema))
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(pl.lit(None, pl.Datetime("us", "UTC")).alias(PENDING_SINCE))


def transform_fact(
    spec: FactSpec,
    raw: pl.LazyFrame,
    *,
    seen: pl.DataFrame,
    pending: pl.DataFrame,
    valid_keys: dict[str, pl.Series],
    now: dt.datetime,
) -> FactOutput:
    """Fact rows, quarantined rows, new `seen` versions and the next `pending` state of one
    fact table. `seen` needs to hold only the stored versions of the ids in `raw`."""
    t = TABLES[spec.source]
    pk, lu = t.primary_key, t.cursor
    keyed = annotate(raw, key_rules(spec.source))
    bad_keys = keyed.filter(pl.col(RULE).is_not_null())
    candidates = (
        keyed.filter(pl.col(RULE).is_null())
        .select([*t.column_names, BATCH_COLUMN])
        .unique(subset=[pk, lu], keep="last", maintain_order=True)  # the latest batch wins
        .with_columns(fingerprint(t.column_names))
    )
    if seen.height:  # (the join copies every row: skipped when nothing was seen yet)
        held = seen.lazy().select(pk, lu, pl.col(CONTENT).alias(_HELD), pl.lit(True).alias(_SEEN))
        candidates = (
            candidates.join(held, on=[pk, lu], how="left", maintain_order="left")
            .filter(pl.col(_SEEN).is_null() | pl.col(_HELD).ne_missing(pl.col(CONTENT)))
            .with_columns(pl.col(_SEEN).fill_null(False).alias(CORRECTED))
            .drop(_HELD, _SEEN)
        )
    else:
        candidates = candidates.with_columns(pl.lit(False).alias(CORRECTED))
    candidates = candidates.with_columns(
        pl.lit(False).alias(RETRY), pl.lit(None, pl.Datetime("us", "UTC")).alias(PENDING_SINCE)
    )
    retry = pending.lazy().with_columns(
        pl.lit(-1, pl.Int32).alias(BATCH_COLUMN), pl.lit(True).alias(RETRY)
    )
    if pending.height:  # a pending version delivered again: the new delivery replaces it
        retry = retry.join(candidates.select(pk, lu), on=[pk, lu], how="anti")
    rules = row_rules(spec.source) + [
        reference_rule(spec.source, col, target, valid_keys[target])
        for col, target in spec.references.items()
    ]
    checked_lf = annotate(
        pl.concat([candidates, retry], how="diagonal_relaxed").with_columns(
            parse_text_dates(spec.source)
        ),
        rules,
    )
    checked, bad_key_rows, counted = pl.collect_all(
        [checked_lf, bad_keys, raw.select(pl.len().alias("n"))]
    )
    rows_in = int(counted["n"][0])
    good = pl.col(RULE).is_null()
    retried = pl.col(RETRY)
    bad = checked.filter(~good)  # few rows; the big frame is only copied when it must be
    rows = (checked if bad.height == 0 else checked.filter(good)).select(spec.projection())
    n_retried = int(checked[RETRY].sum()) if pending.height else 0
    n_new = checked.height - n_retried
    new_versions = checked if pending.height == 0 else checked.filter(~retried)

    missing = pl.col(RULE) >= len(rules) - len(spec.references)  # reference rules come last
    new_bad = bad.filter(~retried)
    quarantined = pl.concat(
        [
            quarantine_frame(spec.source, bad_key_rows, key_rules(spec.source)),
            quarantine_frame(spec.source, new_bad, rules),
        ]
    )
    still = bad.filter(retried)
    expired = still.filter(pl.col(PENDING_SINCE) < now - PENDING_TTL)
    next_pending = pl.concat(
        [
            still.filter(pl.col(PENDING_SINCE) >= now - PENDING_TTL),
            new_bad.filter(missing).with_columns(pl.lit(now).alias(PENDING_SINCE)),
        ]
    ).select([*t.column_names, PENDING_SINCE])
    n_retry = pending.height
    return FactOutput(
        rows=rows,
        quarantine=quarantined,
        new_seen=new_versions.select(pk, lu, CONTENT),
        pending=next_pending,
        rows_in=rows_in,
        duplicates=rows_in - bad_key_rows.height - n_new,
        corrected=int(new_versions[CORRECTED].sum()),
        pending_counts={
            "retried": n_retry,
            "resolved": n_retry - still.height,
            "expired": expired.height,
            "new": new_bad.filter(missing).height,
            "kept": next_pending.height,
        },
    )


def grow_seen(
    seen: pl.DataFrame, added: pl.DataFrame, bucket: pl.Expr, lu: str, *, replace: bool = False
) -> pl.DataFrame:
    """Stored versions plus this run's, each bucket capped at its newest `SEEN_MAX_PER_BUCKET`.

    With `replace` (corrections among `added`), a version held already takes the new
    fingerprint instead of being listed twice."""
    if replace:
        seen = seen.join(added.select(seen.columns[:2]), on=seen.columns[:2], how="anti")
    handled = pl.concat([seen, added])
    if handled.height <= SEEN_MAX_PER_BUCKET:
        return handled
    name = bucket.meta.output_name()
    per_bucket = handled.select(bucket).group_by(name).len()["len"]
    if per_bucket.le(SEEN_MAX_PER_BUCKET).all():
        return handled
    return (
        handled.with_columns(bucket)
        .sort(lu, descending=True)
        .filter(pl.int_range(pl.len()).over(name) < SEEN_MAX_PER_BUCKET)
        .select(handled.columns)
    )
