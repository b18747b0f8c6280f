"""Row-level data-quality rules as Polars expressions, evaluated for all rows at once.

A rule is (name, failed, reason). `annotate` adds `_rule`/`_reason` naming the first rule a
row breaks (null when it passes); `split` separates passing rows from the ones that go to
`_quarantine/<source_table>/run=<run_id>.parquet`. Reasons name table, key and column.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl
from polars.expr.whenthen import ChainedThen, Then

from pipeline.catalog import TABLES
from pipeline.warehouse_schema import FACTS, PARSED_DATE

RULE = "_rule"
REASON = "_reason"
DATE_FORMAT = "%Y-%m-%d"
DATE_PREFIX = "__date_"  # parsed text-date columns carried alongside the raw text

# Text columns that hold YYYY-MM-DD dates in the source: those a fact parses (its lineage),
# in the source table's column order.
TEXT_DATE_COLUMNS: dict[str, tuple[str, ...]] = {
    str(fact.source): tuple(
        c
        for c in TABLES[str(fact.source)].column_names
        if any(
            w.lineage and (w.lineage.column, w.lineage.how) == (c, PARSED_DATE)
            for w in fact.columns
        )
    )
    for fact in FACTS
}
NON_NEGATIVE: dict[str, tuple[str, ...]] = {
    "sales_order": ("units_sold", "unit_price"),
    "purchase_order": ("item_quantity", "item_unit_price"),
    "payment": ("payment_amount",),
}


@dataclass(frozen=True)
class Rule:
    name: str
    failed: pl.Expr
    reason: pl.Expr


def row_label(table: str) -> pl.Expr:
    """`"staff 7"`: the table and primary key a reason talks about."""
    pk = TABLES[table].primary_key
    return pl.format(f"{table} {pk}={{}}", pl.col(pk).cast(pl.String).fill_null("null"))


def key_rules(table: str) -> list[Rule]:
    """The columns every later step needs: primary key and the audit timestamps."""
    t = TABLES[table]
    return [_not_null(table, c) for c in (t.primary_key, "created_at", t.cursor)]


def row_rules(table: str) -> list[Rule]:
    """Not-null for required columns, parseable text dates, non-negative amounts, enum values."""
    t = TABLES[table]
    keys = {t.primary_key, "created_at", t.cursor}
    rules = [_not_null(table, c.name) for c in t.columns if not c.nullable and c.name not in keys]
    for col in TEXT_DATE_COLUMNS.get(table, ()):
        rules.append(
            Rule(
                "unparseable_date",
                pl.col(col).is_not_null() & pl.col(DATE_PREFIX + col).is_null(),
                pl.format(
                    f"{{}}: {col} {{}} is not a YYYY-MM-DD date", row_label(table), pl.col(col)
                ),
            )
        )
    for col in NON_NEGATIVE.get(table, ()):
        rules.append(
            Rule(
                "negative_value",
                pl.col(col) < 0,
                pl.format(f"{{}}: {col} {{}} is negative", row_label(table), pl.col(col)),
            )
        )
    for column in t.columns:  # a label the source added later arrives as text: quarantined
        if column.enum_labels is None:
            continue
        col, allowed = column.name, list(column.enum_labels)
        rules.append(
            Rule(
                "invalid_enum",
                ~pl.col(col).is_in(allowed),
                pl.format(
                    f"{{}}: {col} {{}} is not one of {'|'.join(allowed)}",
                    row_label(table),
                    pl.col(col),
                ),
            )
        )
    return rules


def reference_rule(table: str, column: str, target: str, valid: pl.Series) -> Rule:
    """The referenced dimension row must exist (and be valid) in the current state."""
    return Rule(
        "missing_dimension",
        pl.col(column).is_not_null() & ~pl.col(column).is_in(valid.implode()),
        pl.format(f"{{}}: {column} {{}} not found in {target}", row_label(table), pl.col(column)),
    )


def parse_text_dates(table: str) -> list[pl.Expr]:
    """Parsed copies of the text-date columns (null when unparseable), for rules and facts."""
    return [
        pl.col(c).str.to_date(DATE_FORMAT, strict=False).alias(DATE_PREFIX + c)
        for c in TEXT_DATE_COLUMNS.get(table, ())
    ]


def annotate(lf: pl.LazyFrame, rules: Iterable[Rule]) -> pl.LazyFrame:
    """Add `_rule`, the index of the first broken rule (null for a good row).

    Only the cheap conditions run over every row; the reason strings are formatted later,
    by `explain`, for the few rows that failed.
    """
    rules = list(rules)
    if not rules:
        return lf.with_columns(pl.lit(None, pl.Int16).alias(RULE))
    index: Then | ChainedThen = pl.when(rules[0].failed).then(pl.lit(0, pl.Int16))
    for i, r in enumerate(rules[1:], start=1):
        index = index.when(r.failed).then(pl.lit(i, pl.Int16))
    return lf.with_columns(index.otherwise(pl.lit(None, pl.Int16)).alias(RULE))


def explain(bad: pl.DataFrame, rules: Iterable[Rule]) -> pl.DataFrame:
    """Turn the `_rule` index of failed rows into the rule name and a `_reason` sentence."""
    rules = list(rules)
    if bad.height == 0 or not rules:
        return bad.with_columns(
            pl.lit(None, pl.String).alias(RULE), pl.lit(None, pl.String).alias(REASON)
        )
    names = pl.Series([r.name for r in rules], dtype=pl.String)
    reason: Then | ChainedThen = pl.when(pl.col(RULE) == 0).then(rules[0].reason)
    for i, r in enumerate(rules[1:], start=1):
        reason = reason.when(pl.col(RULE) == i).then(r.reason)
    return bad.with_columns(
        pl.col(RULE).replace_strict(list(range(len(rules))), names).alias(RULE),
        reason.otherwise(pl.lit(None, pl.String)).alias(REASON),
    )


def _not_null(table: str, column: str) -> Rule:
    return Rule(
        "not_null",
        pl.col(column).is_null(),
        pl.format(f"{{}}: required column {column} is null", row_label(table)),
    )


def quarantine_frame(table: str, bad: pl.DataFrame, rules: Iterable[Rule]) -> pl.DataFrame:
    """Rejected rows in the source table's own columns plus `_rule` and `_reason`."""
    return explain(bad, rules).select([*TABLES[table].column_names, RULE, REASON])
