"""The three facts: one row per source row version, de-duplicated, checked, split into dates.

Flow per fact table, as one lazy Polars plan collected once:
rows with null keys -> quarantine; de-duplicate versions `(id, last_updated)` within the run
(first batch wins) and against versions earlier runs handled (the extract's overlap window
re-delivers them); add rows still pending from earlier runs; evaluate row rules and
dimension-key rules; good rows become fact rows.

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

# Versions already handled, kept per fact table and id bucket (state.py) to skip re-deliveries
# (overlap windows, full re-extracts) exactly: 12 bytes each, and a run reads only the buckets
# of the ids it received. Past the cap (16 versions per id on average) a bucket keeps only
# its newest versions, and older re-deliveries fall back on the load's ON CONFLICT.
SEEN_MAX_PER_BUCKET = 1_000_000
PENDING_TTL = dt.timedelta(days=7)
PENDING_SINCE = "_pending_since"
RETRY = "_retry"


@dataclass(frozen=True)
class FactSpec:
    name: str  # warehouse fact table
    source: str  # source table
    references: dict[str, str]  # foreign key column -> source table of the dimension
    columns: dict[str, pl.Expr]  # warehouse columns after the id and the four time columns


@dataclass
class FactOutput:
    rows: pl.DataFrame
    quarantine: pl.DataFrame
    new_seen: pl.DataFrame  # versions handled for the first time (id, last_updated)
    pending: pl.DataFrame
    rows_in: int
    duplicates: int
    pending_counts: dict[str, int] = field(default_factory=dict)


def _date(col: str) -> pl.Expr:
    return pl.col(DATE_PREFIX + col)


FACTS: tuple[FactSpec, ...] = (
    FactSpec(
        "fact_sales_order",
        "sales_order",
        {
            "staff_id": "staff",
            "counterparty_id": "counterparty",
            "currency_id": "currency",
            "design_id": "design",
            "agreed_delivery_location_id": "address",
        },
        {
            "sales_staff_id": pl.col("staff_id"),
            "counterparty_id": pl.col("counterparty_id"),
            "units_sold": pl.col("units_sold"),
            "unit_price": pl.col("unit_price"),
            "currency_id": pl.col("currency_id"),
            "design_id": pl.col("design_id"),
            "agreed_payment_date": _date("agreed_payment_date"),
            "agreed_delivery_date": _date("agreed_delivery_date"),
            "agreed_delivery_location_id": pl.col("agreed_delivery_location_id"),
        },
    ),
    FactSpec(
        "fact_purchase_order",
        "purchase_order",
        {
            "staff_id": "staff",
            "counterparty_id": "counterparty",
            "currency_id": "currency",
            "agreed_delivery_location_id": "address",
        },
        {
            "staff_id": pl.col("staff_id"),
            "counterparty_id": pl.col("counterparty_id"),
            "item_code": pl.col("item_code"),
            "item_quantity": pl.col("item_quantity"),
            "item_unit_price": pl.col("item_unit_price"),
            "currency_id": pl.col("currency_id"),
            "agreed_delivery_date": _date("agreed_delivery_date"),
            "agreed_payment_date": _date("agreed_payment_date"),
            "agreed_delivery_location_id": pl.col("agreed_delivery_location_id"),
        },
    ),
    FactSpec(
        "fact_payment",
        "payment",
        {
            "transaction_id": "transaction",
            "counterparty_id": "counterparty",
            "currency_id": "currency",
            "payment_type_id": "payment_type",
        },
        {
            "transaction_id": pl.col("transaction_id"),
            "counterparty_id": pl.col("counterparty_id"),
            "payment_amount": pl.col("payment_amount"),
            "currency_id": pl.col("currency_id"),
            "payment_type_id": pl.col("payment_type_id"),
            "paid": pl.col("paid"),
            "payment_date": _date("payment_date"),
        },
    ),
)
FACT_SOURCES: tuple[str, ...] = tuple(f.source for f in FACTS)


def seen_schema(source: str) -> pl.Schema:
    t = TABLES[source]
    return pl.Schema([(t.primary_key, pl.Int32), (t.cursor, pl.Datetime("ms"))])


def empty_seen(source: str) -> pl.DataFrame:
    return pl.DataFrame(schema=seen_schema(source))


def empty_pending(source: str) -> pl.DataFrame:
    df = pl.from_arrow(TABLES[source].arrow_schema.empty_table())
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(pl.lit(None, pl.Datetime("us", "UTC")).alias(PENDING_SINCE))


def _projection(spec: FactSpec) -> list[pl.Expr]:
    t = TABLES[spec.source]
    return [
        pl.col(t.primary_key),
        pl.col("created_at").dt.date().alias("created_date"),
        pl.col("created_at").dt.time().alias("created_time"),
        pl.col(t.cursor).dt.date().alias("last_updated_date"),
        pl.col(t.cursor).dt.time().alias("last_updated_time"),
        *(expr.alias(name) for name, expr in spec.columns.items()),
    ]


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
        .unique(subset=[pk, lu], keep="first", maintain_order=True)  # earliest batch wins
    )
    if seen.height:  # (the anti-join copies every row: skipped when nothing was seen yet)
        candidates = candidates.join(seen.lazy(), on=[pk, lu], how="anti", maintain_order="left")
    candidates = candidates.with_columns(
        pl.lit(False).alias(RETRY), pl.lit(None, pl.Datetime("us", "UTC")).alias(PENDING_SINCE)
    )
    retry = pending.lazy().with_columns(
        pl.lit(-1, pl.Int32).alias(BATCH_COLUMN), pl.lit(True).alias(RETRY)
    )
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
    rows = (checked if bad.height == 0 else checked.filter(good)).select(_projection(spec))
    n_new = checked.height - pending.height
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
        new_seen=new_versions.select(pk, lu),
        pending=next_pending,
        rows_in=rows_in,
        duplicates=rows_in - bad_key_rows.height - n_new,
        pending_counts={
            "retried": n_retry,
            "resolved": n_retry - still.height,
            "expired": expired.height,
            "new": new_bad.filter(missing).height,
            "kept": next_pending.height,
        },
    )


def grow_seen(seen: pl.DataFrame, added: pl.DataFrame, bucket: pl.Expr, lu: str) -> pl.DataFrame:
    """Stored versions plus this run's, each bucket capped at its newest `SEEN_MAX_PER_BUCKET`."""
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
