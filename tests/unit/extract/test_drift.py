"""The drift policy without a database: type parsing and comparison, and `check`'s verdicts
(the same cases against a real PostgreSQL: tests/integration/extract/test_drift.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.catalog import ENUMS, TABLES
from pipeline.errors import SchemaDriftError
from pipeline.extract import pgtypes
from pipeline.extract.drift import SourceColumn, batch_schema, check, expected
from pipeline.extract.pgtypes import Change


def _live(table: str, **changes: tuple[str, tuple[str, ...] | None]) -> list[SourceColumn]:
    """The table as PostgreSQL reports it, with some columns' (type, labels) replaced."""
    out = []
    for c in TABLES[table].columns:
        type_, labels = changes.get(c.name, (expected(c).text, c.enum_labels))
        out.append(SourceColumn(c.name, type_, c.nullable, labels))
    return out


@pytest.mark.parametrize(
    ("want", "got", "change"),
    [
        ("character varying(3)", "character varying(3)", Change.SAME),
        ("character varying(3)", "character varying(10)", Change.WIDER),
        ("character varying(3)", "text", Change.WIDER),
        ("character varying(3)", "character varying", Change.WIDER),
        ("character varying(3)", "character varying(2)", Change.NARROWER),
        ("text", "character varying(255)", Change.NARROWER),
        ("integer", "bigint", Change.WIDER),
        ("integer", "smallint", Change.NARROWER),
        ("integer", "numeric(12,0)", Change.KIND),
        ("integer", "text", Change.KIND),
        ("numeric(10,2)", "numeric(12,2)", Change.WIDER),
        ("numeric(10,2)", "numeric(12,4)", Change.WIDER),
        ("numeric(10,2)", "numeric", Change.WIDER),
        ("numeric(10,2)", "numeric(10,4)", Change.NARROWER),  # 8 integer digits -> 6
        ("numeric(10,2)", "numeric(12,1)", Change.NARROWER),  # cents would be cut
        ("numeric(10,2)", "double precision", Change.KIND),
        ("timestamp(3) without time zone", "timestamp(3) without time zone", Change.SAME),
        ("timestamp(3) without time zone", "timestamp(6) without time zone", Change.KIND),
        ("timestamp(3) without time zone", "timestamp(3) with time zone", Change.KIND),
        ("timestamp(3) without time zone", "text", Change.KIND),
        ("boolean", "boolean", Change.SAME),
        ("boolean", "integer", Change.KIND),
    ],
)
def test_type_comparison(want: str, got: str, change: Change) -> None:
    assert pgtypes.compare(pgtypes.parse(want), pgtypes.parse(got)) is change


def test_enums_compare_by_kind_never_by_name() -> None:
    catalog = pgtypes.parse('"TransactionType"', enum=True)
    assert pgtypes.compare(catalog, pgtypes.parse('other."TxKind"', enum=True)) is Change.SAME
    assert pgtypes.compare(catalog, pgtypes.parse("text")) is Change.WIDER
    assert pgtypes.compare(catalog, pgtypes.parse("integer")) is Change.KIND


def test_the_catalog_as_production_creates_it_passes_without_warnings() -> None:
    for name in TABLES:
        report = check(TABLES[name], _live(name))
        assert (report.warnings, report.relaxed, report.added) == ([], frozenset(), ()), name


def test_an_enum_type_renamed_or_moved_is_no_drift() -> None:
    moved = _live("transaction", transaction_type=('audit."Kind"', ENUMS["TransactionType"]))
    assert check(TABLES["transaction"], moved).warnings == []


def test_enum_labels_added_warn_removed_are_fine() -> None:
    spec = TABLES["transaction"]
    added = _live("transaction", transaction_type=('"TransactionType"', ("SALE", "PURCHASE", "X")))
    [warning] = check(spec, added).warnings
    assert "transaction.transaction_type" in warning and "X" in warning
    removed = _live("transaction", transaction_type=('"TransactionType"', ("SALE",)))
    assert check(spec, removed).warnings == []


def test_widening_warns_and_keeps_the_catalog_arrow_type() -> None:
    spec = TABLES["payment"]
    live = _live("payment", company_ac_number=("bigint", None), payment_amount=("numeric", None))
    report = check(spec, live)
    assert len(report.warnings) == 2
    assert all("widened" in w for w in report.warnings)
    assert batch_schema(spec, report) == spec.arrow_schema


@pytest.mark.parametrize(
    ("column", "live_type", "problem"),
    [
        ("paid", "text", "retyped from boolean to text"),
        ("payment_date", "date", "retyped from text to date"),
        ("company_ac_number", "smallint", "narrowed from integer to smallint"),
    ],
)
def test_kind_changes_and_narrowing_fail_naming_old_and_new_type(
    column: str, live_type: str, problem: str
) -> None:
    with pytest.raises(SchemaDriftError, match=problem) as info:
        check(TABLES["payment"], _live("payment", **{column: (live_type, None)}))
    error = info.value
    assert (error.table, error.column, error.new_type) == ("payment", column, live_type)
    assert error.old_type == expected(TABLES["payment"].column(column)).text


def test_a_dropped_column_or_table_fails() -> None:
    spec = TABLES["payment"]
    with pytest.raises(SchemaDriftError, match="dropped") as info:
        check(spec, [c for c in _live("payment") if c.name != "paid"])
    assert (info.value.column, info.value.old_type, info.value.new_type) == (
        "paid",
        "boolean",
        None,
    )
    with pytest.raises(SchemaDriftError, match="does not exist"):
        check(spec, [])


def test_an_added_column_is_reported_and_appended_to_the_batch_schema() -> None:
    spec = TABLES["payment"]
    live = [
        *_live("payment"),
        SourceColumn("note", "text", True),
        SourceColumn("fee", "numeric(12,3)", True),
        SourceColumn("kind", '"Kind"', True, ("A", "B")),
        SourceColumn("meta", "jsonb", True),
    ]
    report = check(spec, live)
    assert [c.name for c in report.added] == ["note", "fee", "kind", "meta"]
    assert len(report.warnings) == 4 and "'note'" in report.warnings[0]
    schema = batch_schema(spec, report)
    assert schema.names == [*spec.column_names, "note", "fee", "kind", "meta"]
    assert [schema.field(n).type for n in ("note", "fee", "kind", "meta")] == [
        pa.string(),
        pa.decimal128(12, 3),
        pa.string(),
        pa.string(),
    ]


def test_a_relaxed_not_null_is_reported_and_written_nullable() -> None:
    spec = TABLES["payment"]
    relaxed = [SourceColumn(c.name, c.type, True, c.enum_labels) for c in _live("payment")]
    report = check(spec, relaxed)
    assert "paid" in report.relaxed
    assert batch_schema(spec, report).field("paid").nullable
