"""dim_date: one row per calendar date any emitted fact row references.

The load inserts with ON CONFLICT DO NOTHING, so each run emits just the dates its own
facts need (created, last updated, agreed delivery/payment, payment dates).
"""

from __future__ import annotations

import calendar

import polars as pl

from pipeline.warehouse_schema import WAREHOUSE_TABLES

DAY_NAMES = list(calendar.day_name)  # Monday first, English regardless of locale
MONTH_NAMES = list(calendar.month_name)[1:]


def date_columns(fact: str) -> list[str]:
    """The columns of a warehouse fact that reference dim_date."""
    return [c.name for c in WAREHOUSE_TABLES[fact].columns if c.references == "dim_date"]


def referenced_dates(facts: dict[str, pl.DataFrame]) -> pl.Series:
    """Distinct non-null dates across the date columns of the given fact frames."""
    parts = [
        df.select(pl.col(c).alias("date_id"))
        for name, df in facts.items()
        for c in date_columns(name)
    ]
    if not parts:
        return pl.Series("date_id", [], pl.Date)
    return pl.concat(parts)["date_id"].drop_nulls().unique().sort()


def build_dim_date(dates: pl.Series) -> pl.DataFrame:
    """Calendar attributes of each date: ISO weekday (Monday=1..Sunday=7), names, quarter."""
    d = pl.col("date_id")
    return pl.DataFrame({"date_id": dates.cast(pl.Date)}).select(
        d,
        d.dt.year().cast(pl.Int32).alias("year"),
        d.dt.month().cast(pl.Int32).alias("month"),
        d.dt.day().cast(pl.Int32).alias("day"),
        d.dt.weekday().cast(pl.Int32).alias("day_of_week"),
        (d.dt.weekday() - 1).replace_strict(list(range(7)), DAY_NAMES).alias("day_name"),
        (d.dt.month() - 1).replace_strict(list(range(12)), MONTH_NAMES).alias("month_name"),
        d.dt.quarter().cast(pl.Int32).alias("quarter"),
    )
