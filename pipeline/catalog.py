"""The totesys source, exactly as production defines it: tables, columns, keys, enums.

Every other module takes table and column names from here, so a SQL identifier can only
ever be one that this file spells out. The definitions follow the production schema (a
Prisma-managed database) column for column: each table's column order, types,
nullability, defaults, which columns are unique (unique indexes named
`<table>_<column>_key`, as Prisma creates them), the foreign keys' ON UPDATE / ON DELETE
rules, the enum types with their quoted CamelCase names and labels, and Prisma's
bookkeeping table `_prisma_migrations`, which exists in production but is never extracted.
The simulator's DDL is generated from this file (`pipeline/local/simulator/schema.py`) and
a test compares the database it creates with the production schema, catalog to catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

CURSOR_COLUMN = "last_updated"

# Enum types of the source database, by their production names, labels in declaration order.
ENUMS: dict[str, tuple[str, ...]] = {
    "PaymentTypeName": ("SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND"),
    "TransactionType": ("SALE", "PURCHASE"),
}

# PostgreSQL type (as written in the DDL) -> Arrow type used in the ingestion zone. Enum
# values travel as their label text.
ARROW_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int32(),
    "text": pa.string(),
    "varchar(3)": pa.string(),
    "numeric(10,2)": pa.decimal128(10, 2),
    "timestamp(3)": pa.timestamp("ms"),
    "boolean": pa.bool_(),
    **{name: pa.string() for name in ENUMS},
}

RESTRICT, SET_NULL, CASCADE = "RESTRICT", "SET NULL", "CASCADE"


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    nullable: bool = False
    references: str | None = None  # "table" whose primary key this column points at
    unique: bool = False  # a unique index `<table>_<column>_key` (not a constraint)
    default: str | None = None  # SQL default expression, as the DDL writes it
    on_delete: str = RESTRICT  # foreign key rule (with `references`)
    on_update: str = CASCADE

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.pg_type]

    @property
    def enum_labels(self) -> tuple[str, ...] | None:
        """The labels of this column's enum type, or None for a non-enum column."""
        return ENUMS.get(self.pg_type)


@dataclass(frozen=True)
class Relation:
    """A table of the source database as its DDL defines it (business table or not)."""

    name: str
    primary_key: str
    columns: tuple[Column, ...]
    serial_key: bool = True  # the key is `serial`: filled from a sequence the column owns

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r} in the catalog")


@dataclass(frozen=True)
class Table(Relation):
    """A totesys business table: extracted incrementally by its cursor column."""

    cursor: str = CURSOR_COLUMN

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns]
        )


C = Column


def _key(table: str) -> Column:
    return Column(f"{table}_id", "integer")


def _created() -> Column:
    return Column("created_at", "timestamp(3)", default="CURRENT_TIMESTAMP")


def _updated() -> Column:
    return Column(CURSOR_COLUMN, "timestamp(3)")  # no default: the writer sets it


def _table(name: str, *columns: Column) -> Table:
    return Table(name=name, primary_key=f"{name}_id", columns=(_key(name), *columns))


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
            _created(),
            _updated(),
        ),
        _table("currency", C("currency_code", "varchar(3)"), _created(), _updated()),
        _table(
            "department",
            C("department_name", "text"),
            C("location", "text", nullable=True),
            C("manager", "text", nullable=True),
            _created(),
            _updated(),
        ),
        _table(
            "design",
            _created(),
            C("design_name", "text"),
            C("file_location", "text"),
            C("file_name", "text"),
            _updated(),
        ),
        _table("payment_type", C("payment_type_name", "PaymentTypeName"), _created(), _updated()),
        _table(
            "counterparty",
            C("counterparty_legal_name", "text"),
            C("legal_address_id", "integer", references="address"),
            C("commercial_contact", "text", nullable=True),
            C("delivery_contact", "text", nullable=True),
            _created(),
            _updated(),
        ),
        _table(
            "staff",
            C("first_name", "text"),
            C("last_name", "text"),
            C("department_id", "integer", references="department"),
            C("email_address", "text"),
            _created(),
            _updated(),
        ),
        _table(
            "sales_order",
            _created(),
            _updated(),
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
            _created(),
            _updated(),
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
            C("transaction_type", "TransactionType"),
            C(
                "sales_order_id",
                "integer",
                nullable=True,
                references="sales_order",
                unique=True,
                on_delete=SET_NULL,
            ),
            C(
                "purchase_order_id",
                "integer",
                nullable=True,
                references="purchase_order",
                unique=True,
                on_delete=SET_NULL,
            ),
            _created(),
            _updated(),
        ),
        _table(
            "payment",
            _created(),
            _updated(),
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

# Prisma's migration ledger: part of the production schema, not business data. Never
# extracted; its presence (like that of any table the catalog does not list) is no drift.
PRISMA_MIGRATIONS = Relation(
    name="_prisma_migrations",
    primary_key="id",
    serial_key=False,
    columns=(
        C("id", "varchar(36)"),
        C("checksum", "varchar(64)"),
        C("finished_at", "timestamptz", nullable=True),
        C("migration_name", "varchar(255)"),
        C("logs", "text", nullable=True),
        C("rolled_back_at", "timestamptz", nullable=True),
        C("started_at", "timestamptz", default="now()"),
        C("applied_steps_count", "integer", default="0"),
    ),
)

# Every table of the production schema, in the order its DDL creates them.
SCHEMA_TABLES: tuple[Relation, ...] = (PRISMA_MIGRATIONS, *TABLES.values())


def get_table(name: str) -> Table:
    """Look a table up by name; the error lists the valid names so a typo is easy to fix."""
    try:
        return TABLES[name]
    except KeyError:
        from pipeline.errors import UnknownTableError

        raise UnknownTableError(name, TABLE_NAMES) from None
