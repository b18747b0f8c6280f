"""The single list of totesys tables: keys, cursor column, columns and their types.

Every other module takes table and column names from here, so a SQL identifier can only
ever be one that this file spells out.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

CURSOR_COLUMN = "last_updated"

# PostgreSQL type (as written in the DDL) -> Arrow type used in the ingestion zone.
ARROW_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int32(),
    "text": pa.string(),
    "varchar(3)": pa.string(),
    "numeric(10,2)": pa.decimal128(10, 2),
    "timestamp(3)": pa.timestamp("ms"),
    "boolean": pa.bool_(),
    "payment_type_name": pa.string(),
    "transaction_type": pa.string(),
}

# Enum types of the source database, in declaration order.
ENUMS: dict[str, tuple[str, ...]] = {
    "payment_type_name": ("SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND"),
    "transaction_type": ("SALE", "PURCHASE"),
}


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    nullable: bool = False
    references: str | None = None  # "table" whose primary key this column points at
    unique: bool = False

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.pg_type]


@dataclass(frozen=True)
class Table:
    name: str
    primary_key: str
    columns: tuple[Column, ...]
    cursor: str = CURSOR_COLUMN

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r} in the catalog")

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns]
        )


def _audit() -> tuple[Column, Column]:
    return Column("created_at", "timestamp(3)"), Column("last_updated", "timestamp(3)")


def _table(name: str, *columns: Column) -> Table:
    pk = Column(f"{name}_id", "integer")
    return Table(name=name, primary_key=pk.name, columns=(pk, *columns, *_audit()))


C = Column

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        _table(
            "address",
            C("address_line_1", "text"),
            C("address_line_2", "text", nullable=True),
            C("district", "text", nullable=True),
            C("city", "text"),
            C("postal_code", "text"),
            C("country", "text"),
            C("phone", "text"),
        ),
        _table("currency", C("currency_code", "varchar(3)")),
        _table(
            "department",
            C("department_name", "text"),
            C("location", "text", nullable=True),
            C("manager", "text", nullable=True),
        ),
        _table(
            "design",
            C("design_name", "text"),
            C("file_location", "text"),
            C("file_name", "text"),
        ),
        _table("payment_type", C("payment_type_name", "payment_type_name")),
        _table(
            "counterparty",
            C("counterparty_legal_name", "text"),
            C("legal_address_id", "integer", references="address"),
            C("commercial_contact", "text", nullable=True),
            C("delivery_contact", "text", nullable=True),
        ),
        _table(
            "staff",
            C("first_name", "text"),
            C("last_name", "text"),
            C("department_id", "integer", references="department"),
            C("email_address", "text"),
        ),
        _table(
            "sales_order",
            C("design_id", "integer", references="design"),
            C("staff_id", "integer", references="staff"),
            C("counterparty_id", "integer", references="counterparty"),
            C("units_sold", "integer"),
            C("unit_price", "numeric(10,2)"),
            C("currency_id", "integer", references="currency"),
            C("agreed_delivery_date", "text"),
            C("agreed_payment_date", "text"),
            C("agreed_delivery_location_id", "integer", references="address"),
        ),
        _table(
            "purchase_order",
            C("staff_id", "integer", references="staff"),
            C("counterparty_id", "integer", references="counterparty"),
            C("item_code", "text"),
            C("item_quantity", "integer"),
            C("item_unit_price", "numeric(10,2)"),
            C("currency_id", "integer", references="currency"),
            C("agreed_delivery_date", "text"),
            C("agreed_payment_date", "text"),
            C("agreed_delivery_location_id", "integer", references="address"),
        ),
        _table(
            "transaction",
            C("transaction_type", "transaction_type"),
            C("sales_order_id", "integer", nullable=True, references="sales_order", unique=True),
            C(
                "purchase_order_id",
                "integer",
                nullable=True,
                references="purchase_order",
                unique=True,
            ),
        ),
        _table(
            "payment",
            C("transaction_id", "integer", references="transaction", unique=True),
            C("counterparty_id", "integer", references="counterparty"),
            C("payment_amount", "numeric(10,2)"),
            C("currency_id", "integer", references="currency"),
            C("payment_type_id", "integer", references="payment_type"),
            C("paid", "boolean"),
            C("payment_date", "text"),
            C("company_ac_number", "integer"),
            C("counterparty_ac_number", "integer"),
        ),
    )
}

# Tables in an order where every referenced table comes before the tables pointing at it.
TABLE_NAMES: tuple[str, ...] = tuple(TABLES)


def get_table(name: str) -> Table:
    """Look a table up by name; the error lists the valid names so a typo is easy to fix."""
    try:
        return TABLES[name]
    except KeyError:
        from pipeline.errors import UnknownTableError

        raise UnknownTableError(name, TABLE_NAMES) from None
