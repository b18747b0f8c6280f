"""The report's SQL: every chart's numbers are aggregated in the warehouse, never in Python.

Facts keep every version of a source row, keyed by (source id, last_updated_date,
last_updated_time); business charts read the *current* version of each source row
(`current_rows`: the newest by last_updated, which the load marks by leaving
`_superseded_at` NULL, `pipeline.load.versions`). `LIVE_ROW` is the one place that decides
whether a current row counts: it excludes rows deleted in totesys (`_deleted_at` set), and
every business chart follows.

Each fact is read once per report: one filtered scan feeds one `GROUPING SETS` aggregate,
so all the charts of a star cost a single pass; the outer query ranks and labels the
small grouped result. Identifiers come from `pipeline.warehouse_schema` and the load's
ledger and lineage names (a renamed column fails here, not in a browser), quoted by
`psycopg.sql`; values are parameters.
"""

from __future__ import annotations

from psycopg import sql

from pipeline.load.ddl import LEDGER_TABLE, LINEAGE_COLUMN
from pipeline.summary_schema import DIMENSION_ROWS, FACT_NEWEST, SUMMARIES
from pipeline.warehouse_schema import (
    DELETED_AT,
    DIMENSIONS,
    FACTS,
    SUPERSEDED_AT,
    WAREHOUSE_TABLES,
    WarehouseTable,
)

TOP = 10  # designs, counterparties, items per currency
TOP_CITIES = 20  # delivery cities per currency
TOP_STAFF = 25  # staff members by units sold
TOP_OVERDUE = 15  # counterparties by overdue amount per currency

# Whether a current fact row counts in the business charts: not deleted in totesys (a
# deleted row keeps its versions with `_deleted_at` set on each, docs/CONTRACTS.md).
LIVE_ROW: sql.Composable = sql.SQL("{} IS NULL").format(sql.Identifier(DELETED_AT))

LEDGER_COLUMNS = ("batch_run_id", "load_run_id", "committed_at", "loaded_at", "rows")


def _identifiers() -> dict[str, sql.Identifier]:
    """Every warehouse table and column name, the ledger and the lineage column, quoted."""
    names = {LEDGER_TABLE, LINEAGE_COLUMN, DIMENSION_ROWS, FACT_NEWEST, *LEDGER_COLUMNS}
    names |= {s.name for s in SUMMARIES}
    for table in WAREHOUSE_TABLES.values():
        names |= {table.name, table.primary_key, *table.column_names}
    return {name: sql.Identifier(name) for name in names}


IDENT = _identifiers()


def compose(template: str, **values: sql.Composable) -> sql.Composed:
    """`template` with `{name}` filled from the schema's identifiers (and `values`)."""
    return sql.SQL(template).format(**{**IDENT, **values})


def current_rows(table: WarehouseTable, columns: tuple[str, ...]) -> sql.Composed:
    """The newest version of each source row of a fact, if `LIVE_ROW` keeps it, with its
    lineage and its source `last_updated` (as `updated`): a plain scan, since the load
    marks every replaced version (`_superseded_at`)."""
    _, updated_date, updated_time = table.natural_key
    return compose(
        "SELECT {cols}, {_loaded_batch}, {updated_date} + {updated_time} AS updated "
        "FROM {table} WHERE {superseded} IS NULL AND {live}",
        superseded=sql.Identifier(SUPERSEDED_AT),
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        live=LIVE_ROW,
        table=sql.Identifier(table.name),
        updated_date=sql.Identifier(updated_date),
        updated_time=sql.Identifier(updated_time),
    )


def in_window(column: str) -> sql.Composed:
    """True when `column` (a date) is within the report window (both ends inclusive)."""
    return compose(
        "(%(since)s::date IS NULL OR {c} >= %(since)s::date) "
        "AND (%(until)s::date IS NULL OR {c} <= %(until)s::date)",
        c=sql.Identifier(column),
    )


FACT = {t.name: t for t in FACTS}

# Every business query returns rows of this shape; `part` names what the row feeds.
RESULT_COLUMNS = ("part", "currency", "period", "label", "detail", "n", "units", "value", "newest")

# Current rows by the load day of the batch that wrote them (from the `agg` rows where
# `lineage` holds), and freshness: the newest source `last_updated` of any row the fact
# holds (`{freshness}`, a scalar query; a maximum the load can keep without a scan).
# Neither depends on the report window.
_LINEAGE = """
SELECT 'lineage', NULL, l.{loaded_at}::date, NULL, NULL, sum(a.n), NULL, NULL, NULL::timestamp
FROM agg a LEFT JOIN {etl_load_ledger} l ON l.{batch_run_id} = a.{_loaded_batch}
WHERE {lineage} GROUP BY 3
UNION ALL
SELECT 'freshness', NULL, NULL, NULL, NULL, NULL, NULL, NULL, ({freshness})"""


def _grouped(
    summarized: bool,
    summary: str,
    facts: str,
    table: WarehouseTable,
    columns: tuple[str, ...],
    window: sql.Composed,
) -> sql.Composed:
    """A star's `agg` rows: from the load's summaries (`summary`, all dates), or grouped in
    one pass over the fact's current rows (`facts`, with the window)."""
    if summarized:
        return compose(summary)
    return compose(facts, current=current_rows(table, columns), window=window)


def freshness(table: WarehouseTable, summarized: bool) -> sql.Composed:
    """The newest `last_updated` of any row of `table`: the load's record of it, or a scan."""
    if summarized:
        return compose(
            "SELECT newest FROM {report_fact_newest} WHERE table_name = {name}",
            name=sql.Literal(table.name),
        )
    _, day, time = table.natural_key
    return compose(
        "SELECT max({d} + {t}) FROM {f}",
        d=sql.Identifier(day),
        t=sql.Identifier(time),
        f=sql.Identifier(table.name),
    )


# Value by month and currency, and the window's total per currency, from `agg` rows
# grouped by day (`{day}`) where `{by_day}` holds.
_MONTHS_AND_TOTALS = """
SELECT 'month' AS part, c.{currency_code} AS currency,
       date_trunc('month', a.{day})::date AS period, NULL AS label, NULL AS detail,
       sum(a.n) AS n, sum(a.units) AS units, sum(a.value) AS value, NULL::timestamp AS newest
FROM agg a JOIN {dim_currency} c USING ({currency_id})
WHERE {by_day} AND {window} GROUP BY 2, 3
UNION ALL
SELECT 'total', c.{currency_code}, NULL, NULL, NULL, sum(a.n), sum(a.units), sum(a.value), NULL
FROM agg a JOIN {dim_currency} c USING ({currency_id})
WHERE {by_day} AND {window} GROUP BY 2"""


def _top(
    part: str,
    where: str,
    label: str,
    key: str,
    join: str = "",
    limit: int = TOP,
    regroup: bool = False,
    source: str = "agg",
) -> str:
    """The `limit` rows of `where` with the highest value per currency, by `key`: a bounded
    sort per currency over the grouped rows (purchase item codes can be one per order).
    `regroup` when `where` keeps several rows per key (a grouping that includes the day)."""
    rows = (
        f"SELECT a.{key}, sum(a.n) AS n, sum(a.units) AS units, sum(a.value) AS value "
        f"FROM {source} a WHERE {where} AND a.{{currency_id}} = c.{{currency_id}} "
        f"GROUP BY a.{key} ORDER BY 4 DESC, 1"
        if regroup
        else f"SELECT a.{key}, a.n, a.units, a.value FROM {source} a "
        f"WHERE {where} AND a.{{currency_id}} = c.{{currency_id}} ORDER BY a.value DESC, 1"
    )
    return f"""
SELECT '{part}', c.{{currency_code}}, NULL, {label}, NULL, t.n, t.units, t.value, NULL
FROM {{dim_currency}} c CROSS JOIN LATERAL ({rows} LIMIT {limit}) AS t{join}"""


_SALES_AGG = """
WITH cur AS ({current})
SELECT GROUPING({created_date}) = 0 AS by_day, GROUPING({design_id}) = 0 AS by_design,
       in_window, {currency_id}, {created_date}, {_loaded_batch}, {design_id},
       {counterparty_id}, {agreed_delivery_location_id}, {sales_staff_id},
       count(*) AS n, sum({units_sold}) AS units, sum({units_sold} * {unit_price}) AS value,
       NULL::timestamp AS newest
FROM (SELECT cur.*, {window} AS in_window FROM cur) AS w
GROUP BY GROUPING SETS (({currency_id}, {created_date}, {_loaded_batch}),
  ({currency_id}, {design_id}, in_window),
  ({currency_id}, {counterparty_id}, {agreed_delivery_location_id}, {sales_staff_id},
   in_window))"""

# The same rows from the load's summaries (`pipeline.load.summaries`): all dates only.
_SALES_SUMMARY_AGG = """
SELECT TRUE AS by_day, FALSE AS by_design, TRUE AS in_window, {currency_id}, {created_date},
       {_loaded_batch}, n, units, value, NULL::timestamp AS newest
FROM {report_sales_by_day} WHERE n > 0"""

# Sales current rows rolled up by counterparty, delivery city, staff and department.
_SALES_PEOPLE = """
people AS (
  SELECT a.{currency_id}, a.n, a.units, a.value, p.{counterparty_legal_name}, l.{city},
         l.{country}, s.{staff_id}, s.{first_name} || ' ' || s.{last_name} AS staff,
         s.{department_name}
  FROM agg a
  JOIN {dim_counterparty} p ON p.{counterparty_id} = a.{counterparty_id}
  JOIN {dim_location} l ON l.{location_id} = a.{agreed_delivery_location_id}
  JOIN {dim_staff} s ON s.{staff_id} = a.{sales_staff_id}
  WHERE NOT a.by_day AND NOT a.by_design AND a.in_window
),
rolled AS (
  SELECT CASE WHEN GROUPING({counterparty_legal_name}) = 0 THEN 'counterparty'
              WHEN GROUPING({city}) = 0 THEN 'city'
              WHEN GROUPING({staff_id}) = 0 THEN 'staff' ELSE 'department' END AS part,
         {currency_id}, {counterparty_legal_name}, {city}, {country}, {staff_id}, staff,
         {department_name}, sum(n) AS n, sum(units) AS units, sum(value) AS value
  FROM people
  GROUP BY GROUPING SETS (({currency_id}, {counterparty_legal_name}),
    ({currency_id}, {country}, {city}), ({currency_id}, {staff_id}, staff, {department_name}),
    ({currency_id}, {department_name}))
)"""

# The same rolled rows from the load's one-key summaries (all dates).
_SALES_SUMMARY_PEOPLE = """
rolled AS (
  SELECT 'counterparty' AS part, a.{currency_id}, p.{counterparty_legal_name},
         NULL::text AS {city}, NULL::text AS {country}, NULL::integer AS {staff_id},
         NULL::text AS staff, NULL::text AS {department_name}, sum(a.n) AS n,
         sum(a.units) AS units, sum(a.value) AS value
  FROM {report_sales_by_counterparty} a JOIN {dim_counterparty} p USING ({counterparty_id})
  WHERE a.n > 0 GROUP BY a.{currency_id}, p.{counterparty_legal_name}
  UNION ALL
  SELECT 'city', a.{currency_id}, NULL, l.{city}, l.{country}, NULL, NULL, NULL, sum(a.n),
         sum(a.units), sum(a.value)
  FROM {report_sales_by_location} a
  JOIN {dim_location} l ON l.{location_id} = a.{agreed_delivery_location_id}
  WHERE a.n > 0 GROUP BY a.{currency_id}, l.{country}, l.{city}
  UNION ALL
  SELECT 'staff', a.{currency_id}, NULL, NULL, NULL, s.{staff_id},
         s.{first_name} || ' ' || s.{last_name}, s.{department_name}, sum(a.n), sum(a.units),
         sum(a.value)
  FROM {report_sales_by_staff} a JOIN {dim_staff} s ON s.{staff_id} = a.{sales_staff_id}
  WHERE a.n > 0 GROUP BY a.{currency_id}, s.{staff_id}, 7, s.{department_name}
  UNION ALL
  SELECT 'department', a.{currency_id}, NULL, NULL, NULL, NULL, NULL, s.{department_name},
         sum(a.n), sum(a.units), sum(a.value)
  FROM {report_sales_by_staff} a JOIN {dim_staff} s ON s.{staff_id} = a.{sales_staff_id}
  WHERE a.n > 0 GROUP BY a.{currency_id}, s.{department_name}
)"""


SALES_COLUMNS = (
    "created_date",
    "currency_id",
    "design_id",
    "counterparty_id",
    "agreed_delivery_location_id",
    "sales_staff_id",
    "units_sold",
    "unit_price",
)


def sales_query(summarized: bool = False) -> sql.Composed:
    """Sales, current version of each order: value by month and currency, top designs,
    counterparties and delivery cities, units and value by staff and department, lineage.

    Three grouping sets over one pass: by day and batch (months, totals, lineage), by
    design, and by counterparty, location and staff together (few combinations in a real
    business; the charts roll them up).
    """
    template = (
        """
WITH agg AS ({agg}),{people},
ranked AS (
  SELECT r.*, row_number() OVER (PARTITION BY part, {currency_id}
    ORDER BY value DESC, {counterparty_legal_name}, {country}, {city}) AS rank
  FROM rolled r WHERE part IN ('counterparty', 'city')
),
top_staff AS (
  SELECT {staff_id} FROM rolled WHERE part = 'staff'
  GROUP BY {staff_id} ORDER BY sum(units) DESC, {staff_id} LIMIT {top_staff}
)"""
        + _MONTHS_AND_TOTALS
        + "\nUNION ALL"
        + _top(
            "design",
            "a.n > 0" if summarized else "a.by_design AND a.in_window",
            "d.{design_name} || ' #' || d.{design_id}",
            "{design_id}",
            " JOIN {dim_design} d USING ({design_id})",
            source="{report_sales_by_design}" if summarized else "agg",
        )
        + """
UNION ALL
SELECT r.part, c.{currency_code}, NULL,
       CASE WHEN r.part = 'counterparty' THEN r.{counterparty_legal_name} ELSE r.{city} END,
       CASE WHEN r.part = 'city' THEN r.{country} END, r.n, r.units, r.value, NULL
FROM ranked r JOIN {dim_currency} c USING ({currency_id})
WHERE r.rank <= CASE WHEN r.part = 'city' THEN {top_cities} ELSE {top} END
UNION ALL
SELECT 'staff', c.{currency_code}, NULL, r.staff, r.{department_name}, r.n, r.units, r.value,
       NULL
FROM rolled r JOIN top_staff USING ({staff_id}) JOIN {dim_currency} c USING ({currency_id})
WHERE r.part = 'staff'
UNION ALL
SELECT 'staff_units', NULL, NULL, r.staff, r.{department_name}, sum(r.n), sum(r.units), NULL,
       NULL
FROM rolled r JOIN top_staff USING ({staff_id}) WHERE r.part = 'staff'
GROUP BY r.{staff_id}, r.staff, r.{department_name}
UNION ALL
SELECT 'department', c.{currency_code}, NULL, r.{department_name}, NULL, r.n, r.units,
       r.value, NULL
FROM rolled r JOIN {dim_currency} c USING ({currency_id}) WHERE r.part = 'department'
UNION ALL"""
        + _LINEAGE
        + "\nORDER BY 1, 2, 3, 8 DESC, 4"
    )
    window = in_window("created_date")
    agg = _grouped(
        summarized, _SALES_SUMMARY_AGG, _SALES_AGG, FACT["fact_sales_order"], SALES_COLUMNS, window
    )
    return compose(
        template,
        agg=agg,
        people=compose(_SALES_SUMMARY_PEOPLE if summarized else _SALES_PEOPLE),
        window=window,
        day=IDENT["created_date"],
        by_day=sql.SQL("a.by_day"),
        lineage=sql.SQL("a.by_day"),
        freshness=freshness(FACT["fact_sales_order"], summarized),
        top=sql.Literal(TOP),
        top_cities=sql.Literal(TOP_CITIES),
        top_staff=sql.Literal(TOP_STAFF),
    )


PURCHASE_COLUMNS = (
    "created_date",
    "currency_id",
    "counterparty_id",
    "item_code",
    "item_quantity",
    "item_unit_price",
)


_PURCHASES_AGG = """
WITH cur AS ({current})
SELECT GROUPING({created_date}) = 0 AS by_day, in_window, {currency_id}, {created_date},
       {counterparty_id}, {_loaded_batch}, {item_code}, count(*) AS n,
       sum({item_quantity}) AS units, sum({item_quantity} * {item_unit_price}) AS value,
       NULL::timestamp AS newest
FROM (SELECT cur.*, {window} AS in_window FROM cur) AS w
GROUP BY GROUPING SETS (({currency_id}, {created_date}, {counterparty_id}, {_loaded_batch}),
  ({currency_id}, {item_code}, in_window))"""

# The by-day rows from the load's summaries (items are read from theirs by `_top`).
_PURCHASES_SUMMARY_AGG = """
SELECT TRUE AS by_day, TRUE AS in_window, {currency_id}, {created_date}, {counterparty_id},
       {_loaded_batch}, NULL::text AS {item_code}, n, units, value, NULL::timestamp AS newest
FROM {report_purchases_by_day} WHERE n > 0"""


def purchases_query(summarized: bool = False) -> sql.Composed:
    """Purchases, current version of each order: value by month and currency, top items,
    top counterparties, lineage. Two grouping sets over one pass: by day, counterparty
    and batch (everything but items), and by item. `summarized`: from the load's
    summaries instead (all dates)."""
    template = (
        """
WITH agg AS ({agg})"""
        + _MONTHS_AND_TOTALS
        + "\nUNION ALL"
        + (
            _top(
                "item",
                "a.n > 0",
                "t.{item_code}",
                "{item_code}",
                source="{report_purchases_by_item}",
            )
            if summarized
            else _top("item", "NOT a.by_day AND a.in_window", "t.{item_code}", "{item_code}")
        )
        + "\nUNION ALL"
        + _top(
            "counterparty",
            "a.by_day AND {window}",
            "p.{counterparty_legal_name}",
            "{counterparty_id}",
            " JOIN {dim_counterparty} p USING ({counterparty_id})",
            regroup=True,
        )
        + "\nUNION ALL"
        + _LINEAGE
        + "\nORDER BY 1, 2, 3, 8 DESC, 4"
    )
    window = in_window("created_date")
    agg = _grouped(
        summarized,
        _PURCHASES_SUMMARY_AGG,
        _PURCHASES_AGG,
        FACT["fact_purchase_order"],
        PURCHASE_COLUMNS,
        window,
    )
    return compose(
        template,
        agg=agg,
        window=window,
        day=IDENT["created_date"],
        by_day=sql.SQL("a.by_day"),
        lineage=sql.SQL("a.by_day"),
        freshness=freshness(FACT["fact_purchase_order"], summarized),
    )


PAYMENT_COLUMNS = (
    "payment_date",
    "payment_type_id",
    "paid",
    "currency_id",
    "counterparty_id",
    "payment_amount",
)


_PAYMENTS_AGG = """
WITH cur AS ({current})
SELECT GROUPING({payment_date}) = 0 AS by_day, GROUPING({counterparty_id}) = 0 AS by_party,
       in_window, overdue, {payment_type_id}, {payment_date}, {paid}, {counterparty_id},
       {currency_id}, {_loaded_batch}, count(*) AS n, NULL::numeric AS units,
       sum({payment_amount}) AS value, NULL::timestamp AS newest
FROM (SELECT cur.*, {window} AS in_window,
             NOT {paid} AND {payment_date} < %(today)s::date AS overdue FROM cur) AS w
GROUP BY GROUPING SETS (({payment_type_id}, {payment_date}, {paid}),
  ({counterparty_id}, {currency_id}, in_window, overdue), ({_loaded_batch}))"""

# The same rows from the load's summaries (all dates); overdue is decided here, on `today`.
_PAYMENTS_SUMMARY_AGG = """
SELECT TRUE AS by_day, FALSE AS by_party, TRUE AS in_window, NULL::boolean AS overdue,
       {payment_type_id}, {payment_date}, {paid}, NULL::integer AS {counterparty_id},
       NULL::integer AS {currency_id}, NULL::text AS {_loaded_batch}, n,
       NULL::numeric AS units, value, NULL::timestamp AS newest
FROM {report_payments_by_day} WHERE n > 0
UNION ALL
SELECT FALSE, TRUE, TRUE, overdue, NULL, NULL, NULL, {counterparty_id}, {currency_id}, NULL,
       sum(n), NULL, sum(value), NULL
FROM (SELECT *, NOT {paid} AND {payment_date} < %(today)s::date AS overdue
      FROM {report_payments_by_party} WHERE n > 0) AS p
GROUP BY {counterparty_id}, {currency_id}, overdue
UNION ALL
SELECT FALSE, FALSE, TRUE, NULL, NULL, NULL, NULL, NULL, NULL, {_loaded_batch}, n, NULL,
       value, NULL
FROM {report_payments_by_batch} WHERE n > 0"""


def payments_query(summarized: bool = False) -> sql.Composed:
    """Payments, current version of each: how many were paid and unpaid by type and month
    of the payment date; what is overdue on `today` (payment date passed, not paid) by
    counterparty and currency; lineage. Three small grouping sets over one pass (one set
    over all six columns would hold a group per few payments). `summarized`: from the load's
    summaries instead (all dates)."""
    template = (
        """
WITH agg AS ({agg})
SELECT 'month' AS part, NULL AS currency, date_trunc('month', a.{payment_date})::date AS period,
       t.{payment_type_name} AS label, CASE WHEN a.{paid} THEN 'paid' ELSE 'unpaid' END AS detail,
       sum(a.n) AS n, NULL::numeric AS units, NULL::numeric AS value, NULL::timestamp AS newest
FROM agg a JOIN {dim_payment_type} t USING ({payment_type_id})
WHERE a.by_day AND {window} GROUP BY 3, 4, 5
UNION ALL"""
        + _top(
            "overdue",
            "a.by_party AND a.overdue AND a.in_window",
            "p.{counterparty_legal_name}",
            "{counterparty_id}",
            " JOIN {dim_counterparty} p USING ({counterparty_id})",
            TOP_OVERDUE,
        )
        + """
UNION ALL
SELECT 'overdue_total', c.{currency_code}, NULL, NULL, NULL, sum(a.n), NULL, sum(a.value), NULL
FROM agg a JOIN {dim_currency} c USING ({currency_id})
WHERE a.by_party AND a.overdue AND a.in_window GROUP BY 2
UNION ALL"""
        + _LINEAGE
        + "\nORDER BY 1, 2, 3, 4, 5"
    )
    window = in_window("payment_date")
    agg = _grouped(
        summarized,
        _PAYMENTS_SUMMARY_AGG,
        _PAYMENTS_AGG,
        FACT["fact_payment"],
        PAYMENT_COLUMNS,
        window,
    )
    return compose(
        template,
        agg=agg,
        window=window,
        lineage=sql.SQL("NOT a.by_day AND NOT a.by_party"),
        freshness=freshness(FACT["fact_payment"], summarized),
    )


def dimension_lineage_query(summarized: bool = False) -> sql.Composed:
    """Rows of each dimension by the load day of the batch that last wrote them
    (`summarized`: from the counts the load keeps, instead of counting every row)."""
    if summarized:
        return compose(
            """
SELECT b.table_name, l.{loaded_at}::date AS loaded_on, sum(b.n) AS n
FROM {report_dimension_rows} b LEFT JOIN {etl_load_ledger} l ON l.{batch_run_id} = b.{_loaded_batch}
WHERE b.n <> 0 GROUP BY 1, 2 ORDER BY 1, 2
"""
        )
    parts = [
        compose(
            "SELECT {name} AS table_name, {_loaded_batch} AS batch, count(*) AS n "
            "FROM {table} GROUP BY 2",
            name=sql.Literal(table.name),
            table=sql.Identifier(table.name),
        )
        for table in DIMENSIONS
    ]
    return compose(
        """
WITH b AS ({parts})
SELECT b.table_name, l.{loaded_at}::date AS loaded_on, sum(b.n) AS n
FROM b LEFT JOIN {etl_load_ledger} l ON l.{batch_run_id} = b.batch
GROUP BY 1, 2 ORDER BY 1, 2
""",
        parts=sql.SQL("\nUNION ALL\n").join(parts),
    )


def ledger_query() -> sql.Composed:
    """Rows written per load run and table, from the ledger, for runs loaded in the window."""
    return compose(
        """
SELECT l.{load_run_id} AS load_run_id, min(l.{loaded_at}) AS loaded_at, r.key AS table_name,
       sum(r.value::bigint) AS n, count(DISTINCT l.{batch_run_id}) AS batches
FROM {etl_load_ledger} l CROSS JOIN LATERAL jsonb_each_text(l.{rows}) AS r
WHERE (%(since)s::date IS NULL OR l.{loaded_at} >= %(since)s::date)
  AND (%(until)s::date IS NULL OR l.{loaded_at} < %(until)s::date + 1)
GROUP BY l.{load_run_id}, r.key
ORDER BY 2, 3
"""
    )


def ledger_summary_query() -> sql.Composed:
    """Last load, newest committed batch, and how many batches the ledger holds."""
    return compose(
        "SELECT max({loaded_at}) AS last_loaded_at, max({committed_at}) AS last_committed_at, "
        "count(*) AS batches FROM {etl_load_ledger}"
    )
