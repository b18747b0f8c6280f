"""Data-quality rules: bad rows are quarantined with a rule and a reason; good rows go on."""

from __future__ import annotations

from decimal import Decimal

from tests.lake_builders import (
    read_quarantine,
    row,
    run_transform,
    write_batch,
    write_lookups,
)


def test_each_sales_rule_quarantines_with_its_reason(lakes):
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    write_batch(
        ingest,
        "sales_order",
        "e1",
        [
            row("sales_order", sales_order_id=1),
            row("sales_order", sales_order_id=2, units_sold=None),
            row("sales_order", sales_order_id=3, agreed_payment_date="2024-02-30"),
            row("sales_order", sales_order_id=4, unit_price=Decimal("-1.00")),
            row("sales_order", sales_order_id=5, staff_id=99),
            row("sales_order", sales_order_id=6, agreed_delivery_location_id=77),
            row("sales_order", sales_order_id=7, agreed_delivery_date="next week"),
            row("sales_order", sales_order_id=None),
        ],
    )
    out = run_transform(lakes)
    assert out["fact_sales_order"]["sales_order_id"].to_list() == [1]
    bad = read_quarantine(processed, "t1", "sales_order").sort("sales_order_id", nulls_last=True)
    assert bad.select("sales_order_id", "_rule", "_reason").to_dicts() == [
        {
            "sales_order_id": 2,
            "_rule": "not_null",
            "_reason": "sales_order sales_order_id=2: required column units_sold is null",
        },
        {
            "sales_order_id": 3,
            "_rule": "unparseable_date",
            "_reason": "sales_order sales_order_id=3: agreed_payment_date 2024-02-30 "
            "is not a YYYY-MM-DD date",
        },
        {
            "sales_order_id": 4,
            "_rule": "negative_value",
            "_reason": "sales_order sales_order_id=4: unit_price -1.00 is negative",
        },
        {
            "sales_order_id": 5,
            "_rule": "missing_dimension",
            "_reason": "sales_order sales_order_id=5: staff_id 99 not found in staff",
        },
        {
            "sales_order_id": 6,
            "_rule": "missing_dimension",
            "_reason": "sales_order sales_order_id=6: agreed_delivery_location_id 77 "
            "not found in address",
        },
        {
            "sales_order_id": 7,
            "_rule": "unparseable_date",
            "_reason": "sales_order sales_order_id=7: agreed_delivery_date next week "
            "is not a YYYY-MM-DD date",
        },
        {
            "sales_order_id": None,
            "_rule": "not_null",
            "_reason": "sales_order sales_order_id=null: required column sales_order_id is null",
        },
    ]
    result = out["result"]
    assert result.rows_in["sales_order"] == 8
    assert result.quarantined["sales_order"] == 7
    assert result.duplicates["sales_order"] == 0


def test_payment_and_purchase_rules(lakes):
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    write_batch(
        ingest,
        "payment",
        "e1",
        [
            row("payment", payment_id=1, payment_amount=Decimal("-5.00")),
            row("payment", payment_id=2, transaction_id=404),
            row("payment", payment_id=3, payment_type_id=9),
            row("payment", payment_id=4, paid=None),
        ],
    )
    write_batch(
        ingest,
        "purchase_order",
        "e1",
        [
            row("purchase_order", purchase_order_id=1, item_quantity=-3),
            row("purchase_order", purchase_order_id=2, currency_id=8),
        ],
    )
    run_transform(lakes)
    pay = read_quarantine(processed, "t1", "payment").sort("payment_id")
    assert pay["_rule"].to_list() == [
        "negative_value",
        "missing_dimension",
        "missing_dimension",
        "not_null",
    ]
    assert pay["_reason"][1] == "payment payment_id=2: transaction_id 404 not found in transaction"
    assert pay["_reason"][2] == "payment payment_id=3: payment_type_id 9 not found in payment_type"
    po = read_quarantine(processed, "t1", "purchase_order").sort("purchase_order_id")
    assert po["_reason"].to_list() == [
        "purchase_order purchase_order_id=1: item_quantity -3 is negative",
        "purchase_order purchase_order_id=2: currency_id 8 not found in currency",
    ]


def test_lookup_rows_with_bad_values_are_quarantined(lakes):
    ingest, processed = lakes
    write_batch(
        ingest,
        "payment_type",
        "e1",
        [
            row("payment_type", payment_type_id=1),
            row("payment_type", payment_type_id=2, payment_type_name="BARTER"),
        ],
    )
    write_batch(ingest, "address", "e1", [row("address", address_id=3, city=None)])
    out = run_transform(lakes)
    assert out["dim_payment_type"]["payment_type_id"].to_list() == [1]
    assert read_quarantine(processed, "t1", "payment_type")["_reason"].to_list() == [
        "payment_type payment_type_id=2: payment_type_name BARTER is not one of "
        "SALES_RECEIPT|SALES_REFUND|PURCHASE_PAYMENT|PURCHASE_REFUND"
    ]
    assert read_quarantine(processed, "t1", "address")["_rule"].to_list() == ["not_null"]
    assert out["dim_location"].height == 0


def test_fact_waiting_for_a_missing_dimension_is_emitted_when_it_arrives(lakes):
    """The staff table failed to extract in run 1: the sale is quarantined and kept pending."""
    ingest, processed = lakes
    for table in ("address", "counterparty", "currency", "design", "department"):
        write_batch(ingest, table, "e1", [row(table)])
    write_batch(ingest, "sales_order", "e1", [row("sales_order", sales_order_id=8)])
    first = run_transform(lakes, "t1")
    assert first["fact_sales_order"].height == 0
    assert read_quarantine(processed, "t1", "sales_order")["_rule"].to_list() == [
        "missing_dimension"
    ]
    assert first["result"].pending["sales_order"]["new"] == 1

    write_batch(ingest, "staff", "e2", [row("staff")])
    second = run_transform(lakes, "t2")
    assert second["fact_sales_order"]["sales_order_id"].to_list() == [8]
    assert second["result"].pending["sales_order"] == {
        "retried": 1,
        "resolved": 1,
        "expired": 0,
        "new": 0,
        "kept": 0,
    }
    assert second["dim_date"].height > 0
