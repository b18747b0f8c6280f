"""Schema drift: compare a source table's live columns with the catalog before reading it.

The policy separates harm from noise, column by column (docs/CONTRACTS.md, "The source
and schema drift"):

- an enum column is compared by its labels, never by its type's name or schema (Prisma
  names them, a migration may rename them): a new label is a warning and its values flow
  through as text, where the transform quarantines what it cannot map; a removed label is
  harmless; an enum column turned into text counts as widened;
- widening (a longer varchar or text, smallint -> integer -> bigint, a numeric whose
  precision and scale keep every value) is a warning: the column is still written with the
  catalog's Arrow type, by a checked cast, so a value that does not fit stops the table
  with a `DataQualityError` naming the column instead of being cut;
- a dropped column, narrowing, or another kind of type (text to integer, timestamp to
  text, a timestamp precision other than the catalog's milliseconds) would silently change
  what downstream receives: `SchemaDriftError` for this table, before any byte is written;
- an added column is captured as it is, in the same Parquet files, after the catalog's
  columns (typed by `pipeline.extract.pgtypes.arrow_type`) and listed in the manifest's
  schema, with a warning; the transform reads only catalog columns;
- a catalog NOT NULL column that became nullable is reported and written as nullable, so
  the transform can quarantine the NULL rows instead of the extract failing on them.

Tables the catalog does not list (`_prisma_migrations`, anything else) are never read, so
their presence is not drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.catalog import Column, Table
from pipeline.errors import SchemaDriftError
from pipeline.extract import pgtypes
from pipeline.extract.pgtypes import Change, PgType


@dataclass(frozen=True)
class SourceColumn:
    name: str
    type: str  # format_type(atttypid, atttypmod)
    nullable: bool
    enum_labels: tuple[str, ...] | None = None  # the labels, in order, if an enum type

    @property
    def pg(self) -> PgType:
        return pgtypes.parse(self.type, enum=self.enum_labels is not None)

    @property
    def arrow_field(self) -> pa.Field:
        """How a column the catalog does not know is stored in the ingestion Parquet."""
        return pa.field(self.name, pgtypes.arrow_type(self.pg), nullable=True)


@dataclass(frozen=True)
class DriftReport:
    warnings: list[str] = field(default_factory=list)
    relaxed: frozenset[str] = frozenset()  # catalog NOT NULL columns now nullable in source
    added: tuple[SourceColumn, ...] = ()  # source columns the catalog lacks, in source order
    source_types: dict[str, str] = field(default_factory=dict)  # every live column's type


def expected(column: Column) -> PgType:
    """The catalog column's type as the live database would report it."""
    return pgtypes.parse(pgtypes.format_type(column.pg_type), enum=column.enum_labels is not None)


def _column_warnings(table: Table, column: Column, found: SourceColumn) -> list[str]:
    """Raise for harmful drift of one catalog column; return the warnings for the rest."""
    want, got = expected(column), found.pg
    change = pgtypes.compare(want, got)
    where = f"schema drift in {table.name}.{column.name}"
    if change in (Change.KIND, Change.NARROWER):
        problem = (
            f"retyped from {want.text} to {got.text}"
            if change is Change.KIND
            else f"narrowed from {want.text} to {got.text} (values the catalog allows no "
            "longer fit)"
        )
        raise SchemaDriftError(
            table.name, column.name, problem, old_type=want.text, new_type=got.text
        )
    warnings = []
    if change is Change.WIDER and pa.types.is_string(column.arrow_type):
        warnings.append(
            f"{where}: widened from {want.text} to {got.text}; its values flow as text, as "
            "before" + (" (labels the catalog lacks are quarantined)" if column.enum_labels else "")
        )
    elif change is Change.WIDER:
        warnings.append(
            f"{where}: widened from {want.text} to {got.text}; still extracted as "
            f"{column.arrow_type} by a checked cast (a value that does not fit stops the table "
            "with DataQualityError); adopt the wider type in pipeline/catalog.py to lift that"
        )
    if column.enum_labels is not None and found.enum_labels is not None:
        new = [label for label in found.enum_labels if label not in column.enum_labels]
        if new:
            warnings.append(
                f"{where}: enum type {got.text} has label(s) {', '.join(new)} the catalog does "
                "not know; their values arrive as text and the transform quarantines those "
                "rows (rule invalid_enum)"
            )
    return warnings


def check(table: Table, source: Sequence[SourceColumn]) -> DriftReport:
    """Raise `SchemaDriftError` for a missing, dropped, narrowed or retyped column; report
    the rest (see the module docstring)."""
    if not source:
        raise SchemaDriftError(table.name, "*", "the table does not exist in the source")
    live = {c.name: c for c in source}
    warnings: list[str] = []
    for column in table.columns:
        found = live.get(column.name)
        if found is None:
            raise SchemaDriftError(
                table.name,
                column.name,
                f"the column was dropped (catalog type {expected(column).text})",
                old_type=expected(column).text,
            )
        warnings += _column_warnings(table, column, found)
    relaxed = frozenset(c.name for c in table.columns if not c.nullable and live[c.name].nullable)
    for name in sorted(relaxed):
        warnings.append(
            f"schema drift in {table.name}.{name}: NOT NULL was dropped in the source; "
            "written as nullable so NULL rows can be quarantined"
        )
    known = set(table.column_names)
    added = tuple(c for c in source if c.name not in known)
    for live_column in added:
        warnings.append(
            f"schema drift in {table.name}: new source column {live_column.name!r} "
            f"({live_column.type}) is not in the catalog; captured as "
            f"{live_column.arrow_field.type} in the ingestion "
            "files (listed in the manifest's schema), ignored by the transform until the "
            "catalog adopts it"
        )
    return DriftReport(
        warnings=warnings,
        relaxed=relaxed,
        added=added,
        source_types={c.name: c.type for c in source},
    )


def batch_schema(table: Table, report: DriftReport) -> pa.Schema:
    """The schema of this extraction's Parquet files: the catalog's columns (nullable where
    the source relaxed them), then the added source columns."""
    fields = [f.with_nullable(True) if f.name in report.relaxed else f for f in table.arrow_schema]
    return pa.schema(fields + [c.arrow_field for c in report.added])
