"""The report summaries: small aggregate tables over the facts' current rows.

A contract shared by the load (which keeps them exact in each batch's transaction,
`pipeline.load.summaries`) and the report (which reads them instead of grouping every fact
row, `pipeline.report.queries`). A fact row counts in a summary when it is current: the
newest version of its source row (`_superseded_at IS NULL`) and not deleted in the source
(`_deleted_at IS NULL`). Each summary holds, per group of `keys`, the number of such rows
(`n`), their `units` and `value` (the product of the fact's `value` columns) summed; a group
whose rows all moved elsewhere stays with `n = 0` (readers skip it).

Money is summed per currency only: every money summary has `currency_id` among its keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.warehouse_schema import LINEAGE_COLUMN as LINEAGE
from pipeline.warehouse_schema import WAREHOUSE_TABLES, WarehouseTable


@dataclass(frozen=True)
class Measures:
    """What a fact's summaries add up: `units` (a column, or none) and `value` (the product
    of its columns; the last one is the money column, numeric(10,2))."""

    units: str | None
    value: tuple[str, ...]


MEASURES: dict[str, Measures] = {
    "fact_sales_order": Measures("units_sold", ("units_sold", "unit_price")),
    "fact_purchase_order": Measures("item_quantity", ("item_quantity", "item_unit_price")),
    "fact_payment": Measures(None, ("payment_amount",)),
}


@dataclass(frozen=True)
class Summary:
    """Current rows of `fact` grouped by `keys`. `ranked` summaries are read as top N per
    currency: indexed by (currency, value)."""

    name: str
    fact: str
    keys: tuple[str, ...]
    ranked: bool = False

    @property
    def table(self) -> WarehouseTable:
        return WAREHOUSE_TABLES[self.fact]


SUMMARIES: tuple[Summary, ...] = (
    Summary("report_sales_by_day", "fact_sales_order", ("currency_id", "created_date", LINEAGE)),
    Summary(
        "report_sales_by_design", "fact_sales_order", ("currency_id", "design_id"), ranked=True
    ),
    # one key each: a summary over several would hold a group per few orders
    Summary("report_sales_by_counterparty", "fact_sales_order", ("currency_id", "counterparty_id")),
    Summary(
        "report_sales_by_location",
        "fact_sales_order",
        ("currency_id", "agreed_delivery_location_id"),
    ),
    Summary("report_sales_by_staff", "fact_sales_order", ("currency_id", "sales_staff_id")),
    Summary(
        "report_purchases_by_day",
        "fact_purchase_order",
        ("currency_id", "created_date", "counterparty_id", LINEAGE),
    ),
    Summary(
        "report_purchases_by_item", "fact_purchase_order", ("currency_id", "item_code"), ranked=True
    ),
    Summary("report_payments_by_day", "fact_payment", ("payment_type_id", "payment_date", "paid")),
    Summary(
        "report_payments_by_party",
        "fact_payment",
        ("counterparty_id", "currency_id", "payment_date", "paid"),
    ),
    Summary("report_payments_by_batch", "fact_payment", (LINEAGE,)),
)
SUMMARY = {s.name: s for s in SUMMARIES}

# (table_name, _loaded_batch) -> n: rows of each dimension by the batch that last wrote them.
DIMENSION_ROWS = "report_dimension_rows"
# table_name -> newest: the newest source last_updated of any row a fact holds (freshness;
# a maximum cannot be subtracted, so it covers every version, current or not).
FACT_NEWEST = "report_fact_newest"

SUMMARY_TABLES = (*(s.name for s in SUMMARIES), DIMENSION_ROWS, FACT_NEWEST)


def of_fact(fact: str) -> tuple[Summary, ...]:
    return tuple(s for s in SUMMARIES if s.fact == fact)


def key_type(table: WarehouseTable, key: str) -> str:
    return "text" if key == LINEAGE else table.column(key).pg_type
