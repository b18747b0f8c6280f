"""Schema drift: compare a source table's live columns with the catalog before reading it.

An added column cannot break anything we write (we select catalog columns only), so it is
reported and extraction goes on. A dropped or retyped column would silently change what
downstream receives, so it stops this table with `SchemaDriftError` before any byte is
written. A catalog NOT NULL column that became nullable is reported and its field is
written as nullable, so the transform can quarantine the NULL rows (R11) instead of the
extract failing on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.catalog import ENUMS, Table
from pipeline.errors import SchemaDriftError

# How PostgreSQL's format_type() spells the catalog's DDL types (others are identical).
_FORMAT_TYPE = {
    "varchar(3)": "character varying(3)",
    "timestamp(3)": "timestamp(3) without time zone",
}


@dataclass(frozen=True)
class SourceColumn:
    name: str
    type: str  # format_type(atttypid, atttypmod)
    nullable: bool


@dataclass(frozen=True)
class DriftReport:
    warnings: list[str] = field(default_factory=list)
    relaxed: frozenset[str] = frozenset()  # catalog NOT NULL columns now nullable in source


def expected_type(pg_type: str) -> str:
    return _FORMAT_TYPE.get(pg_type, pg_type)


def _normalise(type_text: str) -> str:
    """Drop schema qualification and quotes, which format_type adds for enum types."""
    return type_text.replace('"', "").rsplit(".", 1)[-1]


def check(table: Table, source: Sequence[SourceColumn]) -> DriftReport:
    """Raise `SchemaDriftError` for a missing/dropped/retyped column; report the rest."""
    if not source:
        raise SchemaDriftError(table.name, "*", "the table does not exist in the source")
    live = {c.name: c for c in source}
    for column in table.columns:
        found = live.get(column.name)
        if found is None:
            raise SchemaDriftError(table.name, column.name, "the column was dropped")
        want = expected_type(column.pg_type)
        got = _normalise(found.type)
        if got != want:
            kind = "enum " if column.pg_type in ENUMS else ""
            raise SchemaDriftError(
                table.name, column.name, f"retyped from {kind}{want} to {found.type}"
            )
    warnings: list[str] = []
    relaxed = frozenset(c.name for c in table.columns if not c.nullable and live[c.name].nullable)
    for name in sorted(relaxed):
        warnings.append(
            f"schema drift in {table.name}.{name}: NOT NULL was dropped in the source; "
            "written as nullable so NULL rows can be quarantined"
        )
    known = set(table.column_names)
    for live_column in source:
        if live_column.name not in known:
            warnings.append(
                f"schema drift in {table.name}: new source column {live_column.name!r} "
                f"({live_column.type}) is not in the catalog and was not extracted"
            )
    return DriftReport(warnings=warnings, relaxed=relaxed)
