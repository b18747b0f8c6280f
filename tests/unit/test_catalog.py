import pytest

from pipeline.catalog import TABLE_NAMES, TABLES, get_table
from pipeline.errors import UnknownTableError


def test_catalog_lists_the_eleven_totesys_tables() -> None:
    assert set(TABLE_NAMES) == {
        "address", "counterparty", "currency", "department", "design", "staff",
        "sales_order", "purchase_order", "payment_type", "transaction", "payment",
    }  # fmt: skip


def test_every_table_has_integer_pk_and_millisecond_audit_columns() -> None:
    for table in TABLES.values():
        assert table.column(table.primary_key).pg_type == "integer"
        assert table.column("created_at").pg_type == "timestamp(3)"
        assert table.column("last_updated").pg_type == "timestamp(3)"
        assert table.cursor == "last_updated"


def test_references_point_at_earlier_tables() -> None:
    seen: set[str] = set()
    for table in TABLES.values():
        for column in table.columns:
            if column.references:
                assert column.references in seen, (table.name, column.name)
        seen.add(table.name)


def test_unknown_table_error_lists_valid_names() -> None:
    with pytest.raises(UnknownTableError, match="valid tables: address"):
        get_table("sales_orders")
