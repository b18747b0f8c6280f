"""Each fact from hand-made source rows: the expected warehouse rows are written out in full."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from tests.lake_builders import row, run_transform, write_batch, write_lookups


def test_sales_order_fact_row(lakes):
    write_lookups(lakes[0], "e1")
    sale = row(
        "sales_order",
        sales_order_id=7,
        units_sold=42972,
        unit_price=Decimal("3.94"),
        agreed_delivery_date="2024-11-07",
        agreed_payment_date="2024-11-08",
        created="2024-11-03 14:20:52.186",
        at="2024-11-04 10:00:00.000",
    )
    write_batch(lakes[0], "sales_order", "e1", [sale])
    out = run_transform(lakes)
    assert out["fact_sales_order"].to_dicts() == [
        {
            "sales_order_id": 7,
            "created_date": dt.date(2024, 11, 3),
            "created_time": dt.time(14, 20, 52, 186000),
            "last_updated_date": dt.date(2024, 11, 4),
            "last_updated_time": dt.time(10, 0, 0),
            "sales_staff_id": 1,
            "counterparty_id": 1,
            "units_sold": 42972,
            "unit_price": Decimal("3.94"),
            "currency_id": 1,
            "design_id": 1,
            "agreed_payment_date": dt.date(2024, 11, 8),
            "agreed_delivery_date": dt.date(2024, 11, 7),
            "agreed_delivery_location_id": 1,
        }
    ]


def test_purchase_order_fact_row(lakes):
    write_lookups(lakes[0], "e1")
    po = row(
        "purchase_order",
        purchase_order_id=3,
        item_code="ZDOI5EA",
        item_quantity=371,
        item_unit_price=Decimal("361.39"),
        agreed_delivery_date="2024-11-09",
        agreed_payment_date="2024-11-08",
        at="2024-11-04 23:59:59.999",
    )
    write_batch(lakes[0], "purchase_order", "e1", [po])
    out = run_transform(lakes)
    assert out["fact_purchase_order"].to_dicts() == [
        {
            "purchase_order_id": 3,
            "created_date": dt.date(2024, 11, 4),
            "created_time": dt.time(23, 59, 59, 999000),
            "last_updated_date": dt.date(2024, 11, 4),
            "last_updated_time": dt.time(23, 59, 59, 999000),
            "staff_id": 1,
            "counterparty_id": 1,
            "item_code": "ZDOI5EA",
            "item_quantity": 371,
            "item_unit_price": Decimal("361.39"),
            "currency_id": 1,
            "agreed_delivery_date": dt.date(2024, 11, 9),
            "agreed_payment_date": dt.date(2024, 11, 8),
            "agreed_delivery_location_id": 1,
        }
    ]


def test_payment_fact_keeps_every_version(lakes):
    """A payment flipped to paid is a second version: two fact rows, one per last_updated."""
    write_lookups(lakes[0], "e1")
    unpaid = row("payment", payment_id=5, at="2024-11-04 09:00:00.000")
    paid = row(
        "payment",
        payment_id=5,
        paid=True,
        created="2024-11-04 09:00:00.000",
        at="2024-11-12 06:00:00.001",
    )
    write_batch(lakes[0], "payment", "e1", [unpaid, paid])
    out = run_transform(lakes)
    common = {
        "payment_id": 5,
        "created_date": dt.date(2024, 11, 4),
        "created_time": dt.time(9, 0),
        "transaction_id": 1,
        "counterparty_id": 1,
        "payment_amount": Decimal("250.00"),
        "currency_id": 1,
        "payment_type_id": 1,
        "payment_date": dt.date(2024, 11, 12),
    }
    assert out["fact_payment"].sort("last_updated_date").to_dicts() == [
        {
            **common,
            "last_updated_date": dt.date(2024, 11, 4),
            "last_updated_time": dt.time(9, 0),
            "paid": False,
        },
        {
            **common,
            "last_updated_date": dt.date(2024, 11, 12),
            "last_updated_time": dt.time(6, 0, 0, 1000),
            "paid": True,
        },
    ]
    assert [c for c in out["fact_payment"].columns] == [
        "payment_id",
        "created_date",
        "created_time",
        "last_updated_date",
        "last_updated_time",
        "transaction_id",
        "counterparty_id",
        "payment_amount",
        "currency_id",
        "payment_type_id",
        "paid",
        "payment_date",
    ]


def test_duplicate_versions_within_a_run_are_dropped_and_counted(lakes):
    write_lookups(lakes[0], "e1")
    sale = row("sales_order", sales_order_id=2)
    write_batch(lakes[0], "sales_order", "e1", [sale, sale])
    write_batch(lakes[0], "sales_order", "e2", [sale, row("sales_order", sales_order_id=3)])
    out = run_transform(lakes)
    assert sorted(out["fact_sales_order"]["sales_order_id"].to_list()) == [2, 3]
    assert out["result"].rows_in["sales_order"] == 4
    assert out["result"].duplicates["sales_order"] == 2
    assert out["result"].quarantined["sales_order"] == 0


def test_fact_dates_are_all_in_dim_date(lakes):
    write_lookups(lakes[0], "e1")
    sale = row(
        "sales_order",
        agreed_delivery_date="2026-12-31",
        agreed_payment_date="2027-01-02",
        created="2024-10-31 12:00:00.000",
        at="2024-11-01 08:00:00.000",
    )
    write_batch(lakes[0], "sales_order", "e1", [sale])
    out = run_transform(lakes)
    assert sorted(out["dim_date"]["date_id"].to_list()) == [
        dt.date(2024, 10, 31),
        dt.date(2024, 11, 1),
        dt.date(2026, 12, 31),
        dt.date(2027, 1, 2),
    ]


def test_pending_rows_expire_after_the_ttl():
    import polars as pl

    from pipeline.transform.facts import (
        FACT_SPECS,
        PENDING_TTL,
        empty_pending,
        empty_seen,
        transform_fact,
    )
    from tests.lake_builders import to_catalog_table

    now = dt.datetime(2024, 11, 20, tzinfo=dt.UTC)
    raw_rows = pl.from_arrow(
        to_catalog_table(
            "sales_order",
            [row("sales_order", sales_order_id=1), row("sales_order", sales_order_id=2)],
        )
    )
    since = pl.Series([now - PENDING_TTL - dt.timedelta(seconds=1), now - dt.timedelta(days=1)])
    pending = pl.concat(
        [empty_pending("sales_order"), raw_rows.with_columns(since.alias("_pending_since"))],
        how="vertical_relaxed",
    )
    empty_raw = (
        empty_pending("sales_order")
        .drop("_pending_since")
        .with_columns(pl.lit(0, pl.Int32).alias("_batch"))
    )
    out = transform_fact(
        FACT_SPECS[0],
        empty_raw.lazy(),
        seen=empty_seen("sales_order"),
        pending=pending,
        valid_keys={
            t: pl.Series([], dtype=pl.Int32)
            for t in ("staff", "counterparty", "currency", "design", "address")
        },
        now=now,
    )
    assert out.rows.height == 0
    assert out.pending["sales_order_id"].to_list() == [2]
    assert out.pending_counts == {"retried": 2, "resolved": 0, "expired": 1, "new": 0, "kept": 1}
    assert out.quarantine.height == 0  # already quarantined when first seen


def test_seen_versions_are_capped_per_bucket_keeping_the_newest(monkeypatch):
    import polars as pl

    from pipeline.transform import facts

    monkeypatch.setattr(facts, "SEEN_MAX_PER_BUCKET", 2)
    at = [dt.datetime(2024, 11, 1, 9, 0, s) for s in range(4)]
    seen = pl.DataFrame(
        {"sales_order_id": [1, 1, 11], "last_updated": at[:3], "_content": [7, 8, 9]},
        schema=facts.seen_schema("sales_order"),
    )
    added = pl.DataFrame(
        {"sales_order_id": [2], "last_updated": [at[3]], "_content": [10]},
        schema=facts.seen_schema("sales_order"),
    )
    bucket = (pl.col("sales_order_id") // 10).alias("__bucket")
    grown = facts.grow_seen(seen, added, bucket, "last_updated")
    assert sorted(grown.rows()) == [(1, at[1], 8), (2, at[3], 10), (11, at[2], 9)]  # newest 2
    assert facts.grow_seen(seen.head(2), added.clear(), bucket, "last_updated").height == 2
    spread = seen.with_columns(pl.Series("sales_order_id", [1, 21, 11], pl.Int32))
    assert facts.grow_seen(spread, added, bucket, "last_updated").height == 4  # 3 buckets
    # A correction replaces the fingerprint of the version held instead of adding a row.
    fixed = seen.head(1).with_columns(pl.lit(99, pl.UInt64).alias("_content"))
    replaced = facts.grow_seen(seen, fixed, bucket, "last_updated", replace=True)
    assert sorted(replaced.rows()) == [(1, at[0], 99), (1, at[1], 8), (11, at[2], 9)]
