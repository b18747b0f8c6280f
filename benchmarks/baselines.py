"""The alternatives totesys-etl is measured against, in the same run.

- `pandas_baseline`: the original project's style (fetchall into pandas, pandas merges,
  one INSERT per row) for the Sales star on a subset of sales orders; its time per source
  row is extrapolated linearly to the full size (row-by-row work scales linearly).
- `dlt_baseline`: dlt's `sql_database` source with the pyarrow backend into the same
  PostgreSQL: what a team would otherwise pick for the EL part (it builds no stars).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pipeline.catalog import TABLES
from pipeline.local import pgserver


def _frame(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    import pandas as pd

    cur = conn.execute(query, params)  # type: ignore[arg-type]
    return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description or []])


def _insert_rows(conn: psycopg.Connection, table: str, frame: Any) -> None:
    """One INSERT per row, as the original project did."""
    cols = ", ".join(frame.columns)
    marks = ", ".join(["%s"] * len(frame.columns))
    query = f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"
    with conn.cursor() as cur:
        for row in frame.itertuples(index=False, name=None):
            cur.execute(query, row)  # type: ignore[arg-type]


def pandas_sales_fact(sales: Any) -> Any:
    """fact_sales_order from sales_order rows (agreed dates already parsed), pandas-style."""
    import pandas as pd

    return pd.DataFrame(
        {
            "sales_order_id": sales["sales_order_id"],
            "created_date": sales["created_at"].dt.date,
            "created_time": sales["created_at"].dt.time,
            "last_updated_date": sales["last_updated"].dt.date,
            "last_updated_time": sales["last_updated"].dt.time,
            "sales_staff_id": sales["staff_id"],
            "counterparty_id": sales["counterparty_id"],
            "units_sold": sales["units_sold"],
            "unit_price": sales["unit_price"],
            "currency_id": sales["currency_id"],
            "design_id": sales["design_id"],
            "agreed_payment_date": sales["agreed_payment_date"],
            "agreed_delivery_date": sales["agreed_delivery_date"],
            "agreed_delivery_location_id": sales["agreed_delivery_location_id"],
        }
    )


def pandas_baseline(source_dsn: str, admin_dsn: str, *, rows_limit: int) -> dict[str, Any]:
    import pandas as pd

    from pipeline.load.migrations import migrate

    target = pgserver.create_database(admin_dsn, "bench_baseline")
    migrate(target)
    start = time.perf_counter()
    with psycopg.connect(source_dsn) as src:
        staff = _frame(src, "SELECT * FROM staff")
        department = _frame(src, "SELECT * FROM department")
        address = _frame(src, "SELECT * FROM address")
        design = _frame(src, "SELECT * FROM design")
        currency = _frame(src, "SELECT * FROM currency")
        counterparty = _frame(src, "SELECT * FROM counterparty")
        sales = _frame(
            src, "SELECT * FROM sales_order ORDER BY sales_order_id LIMIT %s", (rows_limit,)
        )
    dim_staff = staff.merge(department, on="department_id")[
        ["staff_id", "first_name", "last_name", "department_name", "location", "email_address"]
    ]
    dim_location = address.rename(columns={"address_id": "location_id"}).drop(
        columns=["created_at", "last_updated"]
    )
    dim_design = design[["design_id", "design_name", "file_location", "file_name"]]
    names = {"GBP": "Pound Sterling", "USD": "US Dollar", "EUR": "Euro"}
    dim_currency = currency[["currency_id", "currency_code"]].assign(
        currency_name=lambda d: d["currency_code"].map(names)
    )
    cp = counterparty.merge(address, left_on="legal_address_id", right_on="address_id")
    dim_counterparty = pd.DataFrame(
        {
            "counterparty_id": cp["counterparty_id"],
            "counterparty_legal_name": cp["counterparty_legal_name"],
            "counterparty_legal_address_line_1": cp["address_line_1"],
            "counterparty_legal_address_line_2": cp["address_line_2"],
            "counterparty_legal_district": cp["district"],
            "counterparty_legal_city": cp["city"],
            "counterparty_legal_postal_code": cp["postal_code"],
            "counterparty_legal_country": cp["country"],
            "counterparty_legal_phone_number": cp["phone"],
        }
    )
    for col in ("agreed_delivery_date", "agreed_payment_date"):
        sales[col] = pd.to_datetime(sales[col]).dt.date
    fact = pandas_sales_fact(sales)
    dates = pd.Series(
        pd.concat(
            [
                fact[c]
                for c in (
                    "created_date",
                    "last_updated_date",
                    "agreed_payment_date",
                    "agreed_delivery_date",
                )
            ]
        ).unique()
    )
    stamps = pd.to_datetime(dates)
    dim_date = pd.DataFrame(
        {
            "date_id": dates,
            "year": stamps.dt.year,
            "month": stamps.dt.month,
            "day": stamps.dt.day,
            "day_of_week": stamps.dt.dayofweek + 1,
            "day_name": stamps.dt.day_name(),
            "month_name": stamps.dt.month_name(),
            "quarter": stamps.dt.quarter,
        }
    )
    with psycopg.connect(target) as conn:
        for table, frame in (
            ("dim_date", dim_date),
            ("dim_staff", dim_staff),
            ("dim_location", dim_location),
            ("dim_design", dim_design),
            ("dim_currency", dim_currency),
            ("dim_counterparty", dim_counterparty),
            ("fact_sales_order", fact),
        ):
            _insert_rows(conn, table, frame)
    seconds = time.perf_counter() - start
    rows = len(sales) + len(staff) + len(department) + len(address) + len(design) + len(currency)
    rows += len(counterparty)
    pgserver.drop_database(admin_dsn, "bench_baseline")
    return {"rows": rows, "seconds": seconds, "seconds_per_source_row": seconds / rows}


def _url(dsn: str, scheme: str) -> str:
    d = conninfo_to_dict(dsn)
    return (
        f"{scheme}://{d.get('user')}:{d.get('password')}@{d.get('host')}:{d.get('port')}"
        f"/{d.get('dbname')}"
    )


def dlt_baseline(source_dsn: str, admin_dsn: str, workdir: Path) -> dict[str, Any] | None:
    """dlt EL of every source table; None when dlt is not installed."""
    try:
        import dlt
        from dlt.sources.sql_database import sql_database
    except ImportError:
        return None
    target = pgserver.create_database(admin_dsn, "bench_dlt")
    start = time.perf_counter()
    source = sql_database(
        credentials=_url(source_dsn, "postgresql+psycopg2"),
        table_names=list(TABLES),
        backend="pyarrow",
    )
    pipeline = dlt.pipeline(
        pipeline_name="totesys_bench",
        destination=dlt.destinations.postgres(credentials=_url(target, "postgresql")),
        dataset_name="totesys_raw",
        pipelines_dir=str(workdir / "dlt"),
    )
    pipeline.run(source)
    seconds = time.perf_counter() - start
    rows = sum(
        psycopg.connect(target).execute(f'SELECT count(*) FROM totesys_raw."{t}"').fetchone()[0]  # type: ignore[index]
        for t in TABLES
    )
    pgserver.drop_database(admin_dsn, "bench_dlt")
    return {"rows": rows, "seconds": seconds}
