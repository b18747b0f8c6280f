"""The seven source-backed dimensions, rebuilt from the current state of the lookup tables.

Each builder joins the full current state (small tables) and marks rows whose lookup is
missing or invalid; a run emits only the rows that changed or are affected by a changed
lookup row, and the load upserts them (SCD type 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
import pycountry

from pipeline.catalog import TABLES
from pipeline.transform.quality import RULE, Rule, annotate, quarantine_frame, row_label
from pipeline.warehouse_schema import COPIED, DIMENSIONS, ISO_4217_NAME, WarehouseTable, WColumn

States = dict[str, pl.DataFrame]
Built = tuple[pl.DataFrame, list[Rule]]


@dataclass(frozen=True)
class DimensionSpec:
    """A warehouse dimension as the transform builds it, from its definition (columns and
    their lineage) in `pipeline.warehouse_schema`."""

    table: WarehouseTable

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def source(self) -> str:
        assert self.table.source is not None
        return self.table.source

    @property
    def joined(self) -> list[WColumn]:
        """Columns that come from a lookup table through a foreign key of the source."""
        return [c for c in self.table.columns if c.lineage and c.lineage.via]

    @property
    def lookups(self) -> dict[str, str]:
        """Foreign key of the source table -> the lookup table it reaches."""
        return {
            str(c.lineage.via).split(".", 1)[1]: str(c.lineage.table)
            for c in self.joined
            if c.lineage
        }

    def build(self, states: States) -> Built:
        """Source rows with the dimension's columns joined or derived, `_rule`, and the rules."""
        if any(c.lineage and c.lineage.how == ISO_4217_NAME for c in self.table.columns):
            return _currency(states)
        if not self.joined:
            return annotate(states[self.source].lazy(), []).collect(), []
        [(fk, lookup)] = self.lookups.items()  # one lookup per dimension
        mapping = {str(c.lineage.column): c.name for c in self.joined if c.lineage}
        return _join(states, self.source, lookup, fk, mapping)

    def projection(self) -> list[pl.Expr]:
        """Own columns by their source name; joined and derived ones already carry theirs."""
        out = []
        for c in self.table.columns:
            lineage = c.lineage
            own = lineage and lineage.table == self.source and lineage.how == COPIED
            out.append(pl.col(str(lineage.column) if own and lineage else c.name).alias(c.name))
        return out


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


DIMENSION_SPECS: tuple[DimensionSpec, ...] = tuple(
    DimensionSpec(t) for t in DIMENSIONS if t.source is not None
)


def build_dimensions(states: States, changed: States) -> DimensionOutput:
    """Emit changed/affected dimension rows; quarantine the affected ones that cannot be built."""
    out = DimensionOutput()
    for spec in DIMENSION_SPECS:
        pk = TABLES[spec.source].primary_key
        built, rules = spec.build(states)
        affected = pl.col(pk).is_in(changed[spec.source][pk].implode())
        for fk, lookup in spec.lookups.items():
            lookup_pk = TABLES[lookup].primary_key
            affected = affected | pl.col(fk).is_in(changed[lookup][lookup_pk].implode())
        good = pl.col(RULE).is_null()
        out.valid_keys[spec.source] = built.filter(good)[pk]
        emit = built.filter(affected)
        out.rows[spec.name] = emit.filter(good).select(spec.projection())
        bad = emit.filter(~good)
        out.quarantine[spec.source] = quarantine_frame(spec.source, bad, rules)
    return out


# Lookup tables whose dimension row is built from that row alone: any subset of their current
# state (the buckets of the ids a run touches) builds the same rows and valid keys. The others
# join (or are joined by) another table and are read whole; they are small.
JOINED_TABLES: frozenset[str] = frozenset(
    {spec.source for spec in DIMENSION_SPECS if spec.lookups}
    | {table for spec in DIMENSION_SPECS for table in spec.lookups.values()}
)
ROW_LOCAL_TABLES: frozenset[str] = (
    frozenset(spec.source for spec in DIMENSION_SPECS) - JOINED_TABLES
)
