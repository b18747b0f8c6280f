"""Dimension joins and lookups from hand-made rows, with the expected rows written out."""

from __future__ import annotations

from tests.lake_builders import (
    read_quarantine,
    row,
    run_transform,
    write_batch,
    write_lookups,
)


def test_dim_staff_joins_department_name_and_location(lakes):
    ingest = lakes[0]
    write_batch(
        ingest,
        "department",
        "e1",
        [
            row("department", department_id=2, department_name="Purchasing", location="Leeds"),
            row("department", department_id=3, department_name="Dispatch", location=None),
        ],
    )
    write_batch(
        ingest,
        "staff",
        "e1",
        [
            row(
                "staff",
                staff_id=10,
                first_name="Pierre",
                last_name="Sauer",
                department_id=2,
                email_address="pierre.sauer@terrifictotes.com",
            ),
            row(
                "staff",
                staff_id=11,
                first_name="Flavio",
                last_name="Kulas",
                department_id=3,
                email_address="flavio.kulas@terrifictotes.com",
            ),
        ],
    )
    out = run_transform(lakes)
    assert out["dim_staff"].sort("staff_id").to_dicts() == [
        {
            "staff_id": 10,
            "first_name": "Pierre",
            "last_name": "Sauer",
            "department_name": "Purchasing",
            "location": "Leeds",
            "email_address": "pierre.sauer@terrifictotes.com",
        },
        {
            "staff_id": 11,
            "first_name": "Flavio",
            "last_name": "Kulas",
            "department_name": "Dispatch",
            "location": None,
            "email_address": "flavio.kulas@terrifictotes.com",
        },
    ]


def test_dim_counterparty_takes_its_legal_address(lakes):
    ingest = lakes[0]
    write_batch(
        ingest,
        "address",
        "e1",
        [
            row(
                "address",
                address_id=15,
                address_line_1="605 Haskell Trafficway",
                address_line_2="Axel Freeway",
                district=None,
                city="East Bobbie",
                postal_code="88253-4257",
                country="Heard Island and McDonald Islands",
                phone="9687 937447",
            ),
        ],
    )
    write_batch(
        ingest,
        "counterparty",
        "e1",
        [
            row(
                "counterparty",
                counterparty_id=4,
                counterparty_legal_name="Kohler Inc",
                legal_address_id=15,
            ),
        ],
    )
    out = run_transform(lakes)
    assert out["dim_counterparty"].to_dicts() == [
        {
            "counterparty_id": 4,
            "counterparty_legal_name": "Kohler Inc",
            "counterparty_legal_address_line_1": "605 Haskell Trafficway",
            "counterparty_legal_address_line_2": "Axel Freeway",
            "counterparty_legal_district": None,
            "counterparty_legal_city": "East Bobbie",
            "counterparty_legal_postal_code": "88253-4257",
            "counterparty_legal_country": "Heard Island and McDonald Islands",
            "counterparty_legal_phone_number": "9687 937447",
        }
    ]
    assert out["dim_location"].to_dicts() == [
        {
            "location_id": 15,
            "address_line_1": "605 Haskell Trafficway",
            "address_line_2": "Axel Freeway",
            "district": None,
            "city": "East Bobbie",
            "postal_code": "88253-4257",
            "country": "Heard Island and McDonald Islands",
            "phone": "9687 937447",
        },
    ]


def test_straight_dimensions(lakes):
    write_lookups(lakes[0], "e1")
    out = run_transform(lakes)
    assert out["dim_design"].to_dicts() == [
        {
            "design_id": 1,
            "design_name": "Wooden",
            "file_location": "/home/user/dir",
            "file_name": "wooden-20220717-npgz.json",
        }
    ]
    assert out["dim_transaction"].to_dicts() == [
        {
            "transaction_id": 1,
            "transaction_type": "SALE",
            "sales_order_id": 1,
            "purchase_order_id": None,
        }
    ]
    assert out["dim_payment_type"].to_dicts() == [
        {"payment_type_id": 1, "payment_type_name": "SALES_RECEIPT"}
    ]


def test_currency_names_come_from_iso_4217_and_unknown_codes_are_quarantined(lakes):
    write_batch(
        lakes[0],
        "currency",
        "e1",
        [
            row("currency", currency_id=1, currency_code="GBP"),
            row("currency", currency_id=2, currency_code="USD"),
            row("currency", currency_id=3, currency_code="EUR"),
            row("currency", currency_id=4, currency_code="XQZ"),
        ],
    )
    out = run_transform(lakes)
    assert out["dim_currency"].sort("currency_id").to_dicts() == [
        {"currency_id": 1, "currency_code": "GBP", "currency_name": "Pound Sterling"},
        {"currency_id": 2, "currency_code": "USD", "currency_name": "US Dollar"},
        {"currency_id": 3, "currency_code": "EUR", "currency_name": "Euro"},
    ]
    bad = read_quarantine(lakes[1], "t1", "currency")
    assert bad.select("currency_id", "_rule", "_reason").to_dicts() == [
        {
            "currency_id": 4,
            "_rule": "unknown_currency",
            "_reason": "currency currency_id=4: currency_code XQZ is not an ISO 4217 code",
        }
    ]
    assert out["result"].quarantined["currency"] == 1


def test_staff_whose_department_is_missing_is_quarantined_then_emitted_when_it_arrives(lakes):
    ingest, processed = lakes
    write_batch(ingest, "staff", "e1", [row("staff", staff_id=5, department_id=9)])
    out = run_transform(lakes, "t1")
    assert out["dim_staff"].height == 0
    bad = read_quarantine(processed, "t1", "staff")
    assert bad.select("_rule", "_reason").to_dicts() == [
        {
            "_rule": "missing_dimension",
            "_reason": "staff staff_id=5: department_id 9 not found in department",
        }
    ]
    write_batch(
        ingest,
        "department",
        "e2",
        [row("department", department_id=9, department_name="Finance", location="Leeds")],
    )
    out = run_transform(lakes, "t2")
    assert out["dim_staff"].select("staff_id", "department_name", "location").to_dicts() == [
        {"staff_id": 5, "department_name": "Finance", "location": "Leeds"}
    ]


def test_an_older_version_arriving_late_does_not_overwrite_the_dimension(lakes):
    ingest = lakes[0]
    write_batch(ingest, "department", "e1", [row("department")])
    write_batch(
        ingest, "staff", "e1", [row("staff", first_name="Newer", at="2024-11-05 10:00:00.000")]
    )
    run_transform(lakes, "t1")
    write_batch(
        ingest, "staff", "e2", [row("staff", first_name="Older", at="2024-11-05 09:59:59.999")]
    )
    out = run_transform(lakes, "t2")
    assert out["dim_staff"].height == 0
    assert out["result"].duplicates["staff"] == 1
