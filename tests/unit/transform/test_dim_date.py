"""dim_date fields for known calendar dates (ISO weekday, English names, quarter)."""

from __future__ import annotations

import datetime as dt

import polars as pl

from pipeline.transform.dim_date import build_dim_date, referenced_dates
from pipeline.warehouse_schema import WAREHOUSE_TABLES


def test_dim_date_fields():
    dates = pl.Series([dt.date(2024, 11, 3), dt.date(2024, 1, 1), dt.date(2023, 7, 15)])
    rows = build_dim_date(dates).sort("date_id").to_dicts()
    assert rows == [
        {
            "date_id": dt.date(2023, 7, 15),
            "year": 2023,
            "month": 7,
            "day": 15,
            "day_of_week": 6,
            "day_name": "Saturday",
            "month_name": "July",
            "quarter": 3,
        },
        {
            "date_id": dt.date(2024, 1, 1),
            "year": 2024,
            "month": 1,
            "day": 1,
            "day_of_week": 1,
            "day_name": "Monday",
            "month_name": "January",
            "quarter": 1,
        },
        {
            "date_id": dt.date(2024, 11, 3),
            "year": 2024,
            "month": 11,
            "day": 3,
            "day_of_week": 7,
            "day_name": "Sunday",
            "month_name": "November",
            "quarter": 4,
        },
    ]


def test_dim_date_columns_match_the_warehouse_schema():
    df = build_dim_date(pl.Series([dt.date(2024, 2, 29)]))
    assert tuple(df.columns) == WAREHOUSE_TABLES["dim_date"].column_names
    assert df.to_arrow().cast(WAREHOUSE_TABLES["dim_date"].arrow_schema).num_rows == 1


def test_referenced_dates_cover_every_date_column_once():
    d = dt.date
    payment = pl.DataFrame(
        {
            "created_date": [d(2024, 1, 1), d(2024, 1, 1)],
            "last_updated_date": [d(2024, 1, 2), d(2024, 1, 1)],
            "payment_date": [d(2026, 5, 1), None],
        }
    )
    assert referenced_dates({"fact_payment": payment}).to_list() == [
        d(2024, 1, 1),
        d(2024, 1, 2),
        d(2026, 5, 1),
    ]
