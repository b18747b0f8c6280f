"""The warehouse's three star schemas: one definition shared by transform and load.

The transform writes Parquet with exactly `arrow_schema(table)` and builds each column from
its `Lineage` (the source table and column it comes from, and how); the load creates the
tables from the same definitions, so none of the three can drift apart. Names follow the
agreed star schemas to the letter so BI queries keep working. docs/LINEAGE.md is generated
from these definitions (`python -m pipeline.warehouse_schema`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

ARROW_TYPES: dict[str, pa.DataType] = {
    "timestamp(3)": pa.timestamp("ms"),
    "integer": pa.int32(),
    "text": pa.string(),
    "date": pa.date32(),
    "time(3)": pa.time32("ms"),
    "numeric(10,2)": pa.decimal128(10, 2),
    "boolean": pa.bool_(),
}

# How a column's value is derived from its source column.
COPIED = "copied"
DATE_PART = "date part"
TIME_PART = "time part (ms)"
PARSED_DATE = "YYYY-MM-DD text parsed as a date"
ISO_4217_NAME = "ISO 4217 name of the code (pycountry)"
CALENDAR = "calendar attribute of the date"
VERSION_START = "start of the version (or the looked-up row's, when its change started it)"
VERSION_END = "the next version's `valid_from` (NULL: the version is current)"
VERSION_CURRENT = "`valid_to IS NULL`"
VERSION_DELETED = "the source row was deleted during the version"


@dataclass(frozen=True)
class Lineage:
    """Where a column's values come from: `table.column` of the source, reached through the
    foreign key `via` of the row's own source table when it lives in another table, and
    `how` the value is derived. dim_date's columns come from the dates facts reference."""

    table: str | None
    column: str | None
    how: str = COPIED
    via: str | None = None

    def describe(self) -> str:
        if self.table is None and self.how != CALENDAR:  # derived from the other columns
            return self.how
        where = f"`{self.table}.{self.column}`" if self.table else "the dates facts reference"
        through = f" via `{self.via}`" if self.via else ""
        return f"{where}{through}" + ("" if self.how == COPIED else f", {self.how}")


@dataclass(frozen=True)
class WColumn:
    name: str
    pg_type: str
    nullable: bool = False
    references: str | None = None  # dimension table whose primary key this points at
    lineage: Lineage | None = None  # None only for columns outside the star (e.g. staging)

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.pg_type]


@dataclass(frozen=True)
class WarehouseTable:
    name: str
    columns: tuple[WColumn, ...]  # the columns the processed Parquet carries
    primary_key: str  # dimensions: the natural id; facts: the serial record id
    natural_key: tuple[str, ...] = ()  # facts only: unique (source id, last_updated date, time)
    source: str | None = None  # the source table whose rows these are (None: dim_date)
    history_of: str | None = None  # history tables: the dimension whose versions these are

    @property
    def is_fact(self) -> bool:
        return self.name.startswith("fact_")

    @property
    def is_history(self) -> bool:
        return self.history_of is not None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns]
        )

    def column(self, name: str) -> WColumn:
        return next(c for c in self.columns if c.name == name)


def _col(
    name: str,
    pg_type: str,
    source: tuple[str | None, str | None],
    *,
    how: str = COPIED,
    via: str | None = None,
    nullable: bool = False,
    references: str | None = None,
) -> WColumn:
    return WColumn(name, pg_type, nullable, references, Lineage(*source, how=how, via=via))


def _dim(name: str, source: str | None, *columns: WColumn) -> WarehouseTable:
    return WarehouseTable(name, columns, primary_key=columns[0].name, source=source)


def _own(table: str) -> Callable[..., WColumn]:
    """Columns copied from `table` itself: `own("first_name", "text")`; `column=` renames."""

    def make(name: str, pg_type: str, *, column: str | None = None, **kw: Any) -> WColumn:
        return _col(name, pg_type, (table, column or name), **kw)

    return make


def _fact(
    name: str, record_id: str, source: str, *columns: tuple[str, str, str | None, str]
) -> WarehouseTable:
    """A fact: the source id, the four audit columns, then (name, pg type, references,
    source column) for the rest; `date` columns of a text source column are parsed."""
    pk = f"{source}_id"
    audit = (
        _col("created_date", "date", (source, "created_at"), how=DATE_PART, references="dim_date"),
        _col("created_time", "time(3)", (source, "created_at"), how=TIME_PART),
        _col(
            "last_updated_date", "date", (source, "last_updated"), how=DATE_PART,
            references="dim_date",
        ),
        _col("last_updated_time", "time(3)", (source, "last_updated"), how=TIME_PART),
    )  # fmt: skip
    rest = tuple(
        _col(
            col, pg_type, (source, src), how=PARSED_DATE if pg_type == "date" else COPIED,
            references=ref,
        )
        for col, pg_type, ref, src in columns
    )  # fmt: skip
    return WarehouseTable(
        name=name,
        columns=(_col(pk, "integer", (source, pk)), *audit, *rest),
        primary_key=record_id,
        natural_key=(pk, "last_updated_date", "last_updated_time"),
        source=source,
    )


_staff, _address, _design = _own("staff"), _own("address"), _own("design")
_currency, _cp, _tx, _pt = (
    _own("currency"),
    _own("counterparty"),
    _own("transaction"),
    _own("payment_type"),
)
ADDRESS_COLUMNS = (
    "address_line_1",
    "address_line_2",
    "district",
    "city",
    "postal_code",
    "country",
    "phone",
)
_NULLABLE_ADDRESS = {"address_line_2", "district"}


def _legal(column: str, name: str) -> WColumn:
    return _col(
        name, "text", ("address", column), via="counterparty.legal_address_id",
        nullable=column in _NULLABLE_ADDRESS,
    )  # fmt: skip


def _calendar(name: str, pg_type: str) -> WColumn:
    return _col(name, pg_type, (None, None), how=CALENDAR)


DIMENSIONS: tuple[WarehouseTable, ...] = (
    _dim(
        "dim_date",
        None,
        _col("date_id", "date", (None, None)),
        _calendar("year", "integer"),
        _calendar("month", "integer"),
        _calendar("day", "integer"),
        _calendar("day_of_week", "integer"),
        _calendar("day_name", "text"),
        _calendar("month_name", "text"),
        _calendar("quarter", "integer"),
    ),
    _dim(
        "dim_staff",
        "staff",
        _staff("staff_id", "integer"),
        _staff("first_name", "text"),
        _staff("last_name", "text"),
        _col(
            "department_name", "text", ("department", "department_name"), via="staff.department_id"
        ),
        _col(
            "location", "text", ("department", "location"), via="staff.department_id", nullable=True
        ),
        _staff("email_address", "text"),
    ),
    _dim(
        "dim_location",
        "address",
        _address("location_id", "integer", column="address_id"),
        *(_address(c, "text", nullable=c in _NULLABLE_ADDRESS) for c in ADDRESS_COLUMNS),
    ),
    _dim(
        "dim_design",
        "design",
        _design("design_id", "integer"),
        _design("design_name", "text"),
        _design("file_location", "text"),
        _design("file_name", "text"),
    ),
    _dim(
        "dim_currency",
        "currency",
        _currency("currency_id", "integer"),
        _currency("currency_code", "text"),
        _currency("currency_name", "text", column="currency_code", how=ISO_4217_NAME),
    ),
    _dim(
        "dim_counterparty",
        "counterparty",
        _cp("counterparty_id", "integer"),
        _cp("counterparty_legal_name", "text"),
        _legal("address_line_1", "counterparty_legal_address_line_1"),
        _legal("address_line_2", "counterparty_legal_address_line_2"),
        _legal("district", "counterparty_legal_district"),
        _legal("city", "counterparty_legal_city"),
        _legal("postal_code", "counterparty_legal_postal_code"),
        _legal("country", "counterparty_legal_country"),
        _legal("phone", "counterparty_legal_phone_number"),
    ),
    _dim(
        "dim_transaction",
        "transaction",
        _tx("transaction_id", "integer"),
        _tx("transaction_type", "text"),
        _tx("sales_order_id", "integer", nullable=True),
        _tx("purchase_order_id", "integer", nullable=True),
    ),
    _dim(
        "dim_payment_type",
        "payment_type",
        _pt("payment_type_id", "integer"),
        _pt("payment_type_name", "text"),
    ),
)

FACTS: tuple[WarehouseTable, ...] = (
    _fact(
        "fact_sales_order",
        "sales_record_id",
        "sales_order",
        ("sales_staff_id", "integer", "dim_staff", "staff_id"),
        ("counterparty_id", "integer", "dim_counterparty", "counterparty_id"),
        ("units_sold", "integer", None, "units_sold"),
        ("unit_price", "numeric(10,2)", None, "unit_price"),
        ("currency_id", "integer", "dim_currency", "currency_id"),
        ("design_id", "integer", "dim_design", "design_id"),
        ("agreed_payment_date", "date", "dim_date", "agreed_payment_date"),
        ("agreed_delivery_date", "date", "dim_date", "agreed_delivery_date"),
        ("agreed_delivery_location_id", "integer", "dim_location", "agreed_delivery_location_id"),
    ),
    _fact(
        "fact_purchase_order",
        "purchase_record_id",
        "purchase_order",
        ("staff_id", "integer", "dim_staff", "staff_id"),
        ("counterparty_id", "integer", "dim_counterparty", "counterparty_id"),
        ("item_code", "text", None, "item_code"),
        ("item_quantity", "integer", None, "item_quantity"),
        ("item_unit_price", "numeric(10,2)", None, "item_unit_price"),
        ("currency_id", "integer", "dim_currency", "currency_id"),
        ("agreed_delivery_date", "date", "dim_date", "agreed_delivery_date"),
        ("agreed_payment_date", "date", "dim_date", "agreed_payment_date"),
        ("agreed_delivery_location_id", "integer", "dim_location", "agreed_delivery_location_id"),
    ),
    _fact(
        "fact_payment",
        "payment_record_id",
        "payment",
        ("transaction_id", "integer", "dim_transaction", "transaction_id"),
        ("counterparty_id", "integer", "dim_counterparty", "counterparty_id"),
        ("payment_amount", "numeric(10,2)", None, "payment_amount"),
        ("currency_id", "integer", "dim_currency", "currency_id"),
        ("payment_type_id", "integer", "dim_payment_type", "payment_type_id"),
        ("paid", "boolean", None, "paid"),
        ("payment_date", "date", "dim_date", "payment_date"),
    ),
)

WAREHOUSE_TABLES: dict[str, WarehouseTable] = {t.name: t for t in (*DIMENSIONS, *FACTS)}

# Deletes: a source row deleted in totesys is never deleted from the warehouse; the rows it
# produced (its dimension row, every fact version) carry when it was found deleted.
DELETED_AT = "_deleted_at"

# Versions: a fact keeps every version of a source row; the load marks each version that a
# newer one (by last_updated) replaced with that newer version's `last_updated` (the end of
# its validity), so the current versions are the rows `WHERE _superseded_at IS NULL`.
SUPERSEDED_AT = "_superseded_at"

# Lineage: every warehouse row names the processed batch that last wrote it.
LINEAGE_COLUMN = "_loaded_batch"


def source_key(table: WarehouseTable) -> str:
    """The column holding the source row's primary key (a fact's source id, a dimension's
    own key)."""
    return table.natural_key[0] if table.is_fact else table.primary_key


def deletion_marks(table: WarehouseTable) -> tuple[WColumn, WColumn]:
    """The columns of a processed batch's deletion marks for `table`: the source key and
    `_deleted_at` (set: the row was found deleted then; null: the row exists again)."""
    return WColumn(source_key(table), "integer"), WColumn(DELETED_AT, "timestamp(3)", True)


def deletion_marks_schema(table: WarehouseTable) -> pa.Schema:
    """The Arrow schema of `table`'s deletion marks in the processed zone."""
    return pa.schema([pa.field(c.name, c.arrow_type, c.nullable) for c in deletion_marks(table)])


def tables_of(source: str) -> list[WarehouseTable]:
    """The warehouse tables whose rows are `source`'s rows (its dimension, or its fact)."""
    return [t for t in WAREHOUSE_TABLES.values() if t.source == source]


# Dimension history (SCD type 2 beside the type 1 dimensions above, which keep their names,
# columns and meaning): every version of each source-backed dimension row, with its validity
# taken from the source's `last_updated` (docs/HISTORY.md). The version id is a serial the
# load assigns (like a fact's record id); (key, valid_from) is unique.
VALID_FROM, VALID_TO, IS_CURRENT, IS_DELETED = "valid_from", "valid_to", "is_current", "is_deleted"


def _history(dim: WarehouseTable) -> WarehouseTable:
    source = dim.source
    validity = (
        _col(VALID_FROM, "timestamp(3)", (source, "last_updated"), how=VERSION_START),
        _col(VALID_TO, "timestamp(3)", (None, None), how=VERSION_END, nullable=True),
        _col(IS_CURRENT, "boolean", (None, None), how=VERSION_CURRENT),
        _col(IS_DELETED, "boolean", (None, None), how=VERSION_DELETED),
    )
    return WarehouseTable(
        name=f"{dim.name}_history",
        columns=(*dim.columns, *validity),
        primary_key=f"{dim.name}_version_id",
        natural_key=(dim.primary_key, VALID_FROM),
        source=source,
        history_of=dim.name,
    )


# dim_transaction has no history: a totesys transaction row is written once with its order
# and never updated (the production snapshot: 0 of 15,836 rows changed after creation), so
# its history would be a second copy of the largest dimension, one version per key (half
# again the rows of a first load of the load benchmark; docs/HISTORY.md).
WITHOUT_HISTORY = frozenset({"dim_date", "dim_transaction"})
HISTORIES: tuple[WarehouseTable, ...] = tuple(
    _history(d) for d in DIMENSIONS if d.name not in WITHOUT_HISTORY
)
HISTORY_TABLES: dict[str, WarehouseTable] = {t.name: t for t in HISTORIES}
# Every table a processed batch may carry: the star schemas and the history tables.
PROCESSED_TABLES: dict[str, WarehouseTable] = {**WAREHOUSE_TABLES, **HISTORY_TABLES}


def history_table(dimension: str) -> WarehouseTable:
    """The history table of `dimension` (e.g. `dim_staff` -> `dim_staff_history`)."""
    return HISTORY_TABLES[f"{dimension}_history"]


def lineage_markdown() -> str:
    """The column-lineage table of docs/LINEAGE.md."""
    rows = ["| warehouse column | type | comes from |", "|---|---|---|"]
    for table in PROCESSED_TABLES.values():
        own = table.columns
        if table.history_of:
            rows.append(f"| `{table.name}.*` | | every column of `{table.history_of}`, as there |")
            own = own[len(WAREHOUSE_TABLES[table.history_of].columns) :]
        for c in own:
            assert c.lineage is not None
            rows.append(f"| `{table.name}.{c.name}` | {c.pg_type} | {c.lineage.describe()} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(lineage_markdown(), end="")
