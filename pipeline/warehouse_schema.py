"""The warehouse's three star schemas: one definition shared by transform and load.

The transform writes Parquet with exactly `arrow_schema(table)`; the load step creates
the tables from the same definitions, so the two cannot drift apart. Names follow
DESIGN.md section 5 to the letter so BI queries keep working.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

ARROW_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int32(),
    "text": pa.string(),
    "date": pa.date32(),
    "time(3)": pa.time32("ms"),
    "numeric(10,2)": pa.decimal128(10, 2),
    "boolean": pa.bool_(),
}


@dataclass(frozen=True)
class WColumn:
    name: str
    pg_type: str
    nullable: bool = False
    references: str | None = None  # dimension table whose primary key this points at

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.pg_type]


@dataclass(frozen=True)
class WarehouseTable:
    name: str
    columns: tuple[WColumn, ...]  # the columns the processed Parquet carries
    primary_key: str  # dimensions: the natural id; facts: the serial record id
    natural_key: tuple[str, ...] = ()  # facts only: unique (source id, last_updated date, time)

    @property
    def is_fact(self) -> bool:
        return self.name.startswith("fact_")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns]
        )


W = WColumn


def _dim(name: str, *columns: WColumn) -> WarehouseTable:
    return WarehouseTable(name=name, columns=columns, primary_key=columns[0].name)


def _fact(name: str, record_id: str, source_id: str, *columns: WColumn) -> WarehouseTable:
    return WarehouseTable(
        name=name,
        columns=(W(source_id, "integer"), *_fact_times(), *columns),
        primary_key=record_id,
        natural_key=(source_id, "last_updated_date", "last_updated_time"),
    )


def _fact_times() -> tuple[WColumn, ...]:
    return (
        W("created_date", "date", references="dim_date"),
        W("created_time", "time(3)"),
        W("last_updated_date", "date", references="dim_date"),
        W("last_updated_time", "time(3)"),
    )


DIMENSIONS: tuple[WarehouseTable, ...] = (
    _dim(
        "dim_date",
        W("date_id", "date"),
        W("year", "integer"),
        W("month", "integer"),
        W("day", "integer"),
        W("day_of_week", "integer"),
        W("day_name", "text"),
        W("month_name", "text"),
        W("quarter", "integer"),
    ),
    _dim(
        "dim_staff",
        W("staff_id", "integer"),
        W("first_name", "text"),
        W("last_name", "text"),
        W("department_name", "text"),
        W("location", "text", nullable=True),
        W("email_address", "text"),
    ),
    _dim(
        "dim_location",
        W("location_id", "integer"),
        W("address_line_1", "text"),
        W("address_line_2", "text", nullable=True),
        W("district", "text", nullable=True),
        W("city", "text"),
        W("postal_code", "text"),
        W("country", "text"),
        W("phone", "text"),
    ),
    _dim(
        "dim_design",
        W("design_id", "integer"),
        W("design_name", "text"),
        W("file_location", "text"),
        W("file_name", "text"),
    ),
    _dim(
        "dim_currency",
        W("currency_id", "integer"),
        W("currency_code", "text"),
        W("currency_name", "text"),
    ),
    _dim(
        "dim_counterparty",
        W("counterparty_id", "integer"),
        W("counterparty_legal_name", "text"),
        W("counterparty_legal_address_line_1", "text"),
        W("counterparty_legal_address_line_2", "text", nullable=True),
        W("counterparty_legal_district", "text", nullable=True),
        W("counterparty_legal_city", "text"),
        W("counterparty_legal_postal_code", "text"),
        W("counterparty_legal_country", "text"),
        W("counterparty_legal_phone_number", "text"),
    ),
    _dim(
        "dim_transaction",
        W("transaction_id", "integer"),
        W("transaction_type", "text"),
        W("sales_order_id", "integer", nullable=True),
        W("purchase_order_id", "integer", nullable=True),
    ),
    _dim(
        "dim_payment_type",
        W("payment_type_id", "integer"),
        W("payment_type_name", "text"),
    ),
)

FACTS: tuple[WarehouseTable, ...] = (
    _fact(
        "fact_sales_order",
        "sales_record_id",
        "sales_order_id",
        W("sales_staff_id", "integer", references="dim_staff"),
        W("counterparty_id", "integer", references="dim_counterparty"),
        W("units_sold", "integer"),
        W("unit_price", "numeric(10,2)"),
        W("currency_id", "integer", references="dim_currency"),
        W("design_id", "integer", references="dim_design"),
        W("agreed_payment_date", "date", references="dim_date"),
        W("agreed_delivery_date", "date", references="dim_date"),
        W("agreed_delivery_location_id", "integer", references="dim_location"),
    ),
    _fact(
        "fact_purchase_order",
        "purchase_record_id",
        "purchase_order_id",
        W("staff_id", "integer", references="dim_staff"),
        W("counterparty_id", "integer", references="dim_counterparty"),
        W("item_code", "text"),
        W("item_quantity", "integer"),
        W("item_unit_price", "numeric(10,2)"),
        W("currency_id", "integer", references="dim_currency"),
        W("agreed_delivery_date", "date", references="dim_date"),
        W("agreed_payment_date", "date", references="dim_date"),
        W("agreed_delivery_location_id", "integer", references="dim_location"),
    ),
    _fact(
        "fact_payment",
        "payment_record_id",
        "payment_id",
        W("transaction_id", "integer", references="dim_transaction"),
        W("counterparty_id", "integer", references="dim_counterparty"),
        W("payment_amount", "numeric(10,2)"),
        W("currency_id", "integer", references="dim_currency"),
        W("payment_type_id", "integer", references="dim_payment_type"),
        W("paid", "boolean"),
        W("payment_date", "date", references="dim_date"),
    ),
)

WAREHOUSE_TABLES: dict[str, WarehouseTable] = {t.name: t for t in (*DIMENSIONS, *FACTS)}
