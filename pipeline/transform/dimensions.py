"""The seven source-backed dimensions, rebuilt from the current state of the lookup tables.

Each builder joins the full current state (small tables) and marks rows whose lookup is
missing or invalid; a run emits only the rows that changed or are affected by a changed
lookup row, and the load upserts them (SCD type 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl
import pycountry

from pipeline.catalog import TABLES
from pipeline.transform.quality import RULE, Rule, annotate, quarantine_frame, row_label

States = dict[str, pl.DataFrame]
Built = tuple[pl.DataFrame, list[Rule]]


@dataclass
class DimensionSpec:
    name: str  # warehouse dimension
    source: str  # source table whose rows it is
    build: Callable[[States], Built]  # source + dimension columns, `_rule`; and the rules
    project: dict[str, pl.Expr]  # warehouse column -> expression over the built frame
    lookups: dict[str, str] = field(default_factory=dict)  # foreign key -> lookup table


@dataclass
class DimensionOutput:
    rows: dict[str, pl.DataFrame] = field(default_factory=dict)
    quarantine: dict[str, pl.DataFrame] = field(default_factory=dict)
    valid_keys: dict[str, pl.Series] = field(default_factory=dict)


def _found(table: str, lookup: str, fk: str) -> Rule:
    return Rule(
        "missing_dimension",
        pl.col(f"__found_{lookup}").is_null(),
        pl.format(f"{{}}: {fk} {{}} not found in {lookup}", row_label(table), pl.col(fk)),
    )


def _join(states: States, table: str, lookup: str, fk: str, columns: dict[str, str]) -> Built:
    """Left-join the lookup's columns (renamed) and flag rows whose lookup row is missing."""
    pk = TABLES[lookup].primary_key
    right = states[lookup].select(
        pl.col(pk).alias(fk),
        *(pl.col(src).alias(dst) for src, dst in columns.items()),
        pl.lit(True).alias(f"__found_{lookup}"),
    )
    joined = states[table].join(right, on=fk, how="left")
    rules = [_found(table, lookup, fk)]
    return annotate(joined.lazy(), rules).collect(), rules


def _straight(table: str) -> Callable[[States], Built]:
    return lambda states: (annotate(states[table].lazy(), []).collect(), [])


def currency_names(codes: pl.Series) -> dict[str, str]:
    """ISO 4217 names from pycountry for the distinct codes present (a handful)."""
    names = {}
    for code in codes.drop_nulls().unique().to_list():
        found = pycountry.currencies.get(alpha_3=code.upper())
        if found is not None:
            names[code] = found.name
    return names


def _currency(states: States) -> Built:
    cur = states["currency"]
    names = currency_names(cur["currency_code"])
    named = cur.with_columns(
        pl.col("currency_code")
        .replace_strict(names, default=None, return_dtype=pl.String)
        .alias("currency_name")
    )
    rule = Rule(
        "unknown_currency",
        pl.col("currency_name").is_null(),
        pl.format(
            "{}: currency_code {} is not an ISO 4217 code",
            row_label("currency"),
            pl.col("currency_code"),
        ),
    )
    return annotate(named.lazy(), [rule]).collect(), [rule]


def _cols(*names: str) -> dict[str, pl.Expr]:
    return {n: pl.col(n) for n in names}


ADDRESS_COLUMNS = (
    "address_line_1",
    "address_line_2",
    "district",
    "city",
    "postal_code",
    "country",
    "phone",
)
_LEGAL = {
    "address_line_1": "counterparty_legal_address_line_1",
    "address_line_2": "counterparty_legal_address_line_2",
    "district": "counterparty_legal_district",
    "city": "counterparty_legal_city",
    "postal_code": "counterparty_legal_postal_code",
    "country": "counterparty_legal_country",
    "phone": "counterparty_legal_phone_number",
}

DIMENSIONS: tuple[DimensionSpec, ...] = (
    DimensionSpec(
        "dim_staff",
        "staff",
        lambda s: _join(
            s,
            "staff",
            "department",
            "department_id",
            {"department_name": "department_name", "location": "location"},
        ),
        _cols(
            "staff_id", "first_name", "last_name", "department_name", "location", "email_address"
        ),
        {"department_id": "department"},
    ),
    DimensionSpec(
        "dim_location",
        "address",
        _straight("address"),
        {"location_id": pl.col("address_id"), **_cols(*ADDRESS_COLUMNS)},
    ),
    DimensionSpec(
        "dim_design",
        "design",
        _straight("design"),
        _cols("design_id", "design_name", "file_location", "file_name"),
    ),
    DimensionSpec(
        "dim_currency",
        "currency",
        _currency,
        _cols("currency_id", "currency_code", "currency_name"),
    ),
    DimensionSpec(
        "dim_counterparty",
        "counterparty",
        lambda s: _join(s, "counterparty", "address", "legal_address_id", _LEGAL),
        _cols("counterparty_id", "counterparty_legal_name", *_LEGAL.values()),
        {"legal_address_id": "address"},
    ),
    DimensionSpec(
        "dim_transaction",
        "transaction",
        _straight("transaction"),
        _cols("transaction_id", "transaction_type", "sales_order_id", "purchase_order_id"),
    ),
    DimensionSpec(
        "dim_payment_type",
        "payment_type",
        _straight("payment_type"),
        _cols("payment_type_id", "payment_type_name"),
    ),
)


def build_dimensions(states: States, changed: States) -> DimensionOutput:
    """Emit changed/affected dimension rows; quarantine the affected ones that cannot be built."""
    out = DimensionOutput()
    for spec in DIMENSIONS:
        pk = TABLES[spec.source].primary_key
        built, rules = spec.build(states)
        affected = pl.col(pk).is_in(changed[spec.source][pk].implode())
        for fk, lookup in spec.lookups.items():
            lookup_pk = TABLES[lookup].primary_key
            affected = affected | pl.col(fk).is_in(changed[lookup][lookup_pk].implode())
        good = pl.col(RULE).is_null()
        out.valid_keys[spec.source] = built.filter(good)[pk]
        emit = built.filter(affected)
        out.rows[spec.name] = emit.filter(good).select(
            [expr.alias(name) for name, expr in spec.project.items()]
        )
        bad = emit.filter(~good)
        out.quarantine[spec.source] = quarantine_frame(spec.source, bad, rules)
    return out


# Lookup tables whose dimension row is built from that row alone: any subset of their current
# state (the buckets of the ids a run touches) builds the same rows and valid keys. The others
# join (or are joined by) another table and are read whole; they are small.
JOINED_TABLES: frozenset[str] = frozenset(
    {spec.source for spec in DIMENSIONS if spec.lookups}
    | {table for spec in DIMENSIONS for table in spec.lookups.values()}
)
ROW_LOCAL_TABLES: frozenset[str] = frozenset(spec.source for spec in DIMENSIONS) - JOINED_TABLES
