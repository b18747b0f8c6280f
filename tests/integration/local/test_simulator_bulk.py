"""The bulk writer: binary and CSV COPY store exactly the same values, including edge
cases of numeric(10,2), NULLs and empty strings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import polars as pl
import psycopg
import pytest

from pipeline.catalog import TABLE_NAMES, TABLES
from pipeline.local.simulator import binary_copy
from pipeline.local.simulator.bulk import copy_frame
from pipeline.local.simulator.schema import create_source_schema
from pipeline.local.simulator.seed import DEFAULT_START, generate_history
from tests.integration.local.test_simulator_seed import table_checksums

pytestmark = pytest.mark.postgres


def _load(dsn: str, frames: dict[str, pl.DataFrame]) -> None:
    with psycopg.connect(dsn) as conn:
        create_source_schema(conn)
        for name in TABLE_NAMES:
            if name in frames:
                copy_frame(conn, TABLES[name], frames[name])


def test_binary_and_csv_copies_store_identical_rows(
    make_database: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = generate_history(scale=0.05, seed=17, start=DEFAULT_START)
    assert binary_copy.supports(frames["payment"], TABLES["payment"])
    assert binary_copy.supports(frames["transaction"], TABLES["transaction"])
    binary_db, csv_db = make_database("binary"), make_database("csv")
    _load(binary_db, frames)
    monkeypatch.setattr(binary_copy, "supports", lambda frame, table: False)
    _load(csv_db, frames)
    assert table_checksums(binary_db) == table_checksums(csv_db)


def test_edge_values_round_trip_through_binary_copy(pg_dsn: str) -> None:
    stamp = datetime(1999, 12, 31, 23, 59, 59, 999000)  # before the PostgreSQL epoch
    amounts = [0.0, 0.01, 0.1, 9999.99, 10000.0, 12345678.9, 99999999.99, -42.5]
    n = len(amounts)
    payment = pl.DataFrame(
        {
            "payment_id": range(1, n + 1),
            "transaction_id": range(1, n + 1),
            "counterparty_id": [1] * n,
            "payment_amount": amounts,
            "currency_id": [1] * n,
            "payment_type_id": [1] * n,
            "paid": [True, False] * (n // 2),
            "payment_date": ["2024-01-01"] * n,
            "company_ac_number": [2**31 - 1] * n,
            "counterparty_ac_number": [-(2**31)] * n,
            "created_at": [stamp] * n,
            "last_updated": [datetime(2024, 2, 29, 8, 0, 0, 1000)] * n,
        },
        schema_overrides={"created_at": pl.Datetime("ms"), "last_updated": pl.Datetime("ms")},
    )
    address = pl.DataFrame(
        {
            "address_id": [1, 2],
            "address_line_1": ["1 Main St", "Ünïcode Straße 5"],
            "address_line_2": [None, ""],
            "district": ["", None],
            "city": ["X", "Y"],
            "postal_code": ["0", "1"],
            "country": ["A", "B"],
            "phone": ["1", "2"],
            "created_at": [stamp, stamp],
            "last_updated": [stamp, stamp],
        },
        schema_overrides={"created_at": pl.Datetime("ms"), "last_updated": pl.Datetime("ms")},
    )
    assert binary_copy.supports(payment, TABLES["payment"])
    assert binary_copy.supports(address, TABLES["address"])
    with psycopg.connect(pg_dsn) as conn:
        create_source_schema(conn)
        conn.execute("ALTER TABLE payment DROP CONSTRAINT payment_transaction_id_fkey")
        for name in ("currency", "payment_type", "counterparty"):
            conn.execute(f"ALTER TABLE payment DROP CONSTRAINT payment_{name}_id_fkey")
        copy_frame(conn, TABLES["payment"], payment)
        copy_frame(conn, TABLES["address"], address)
        stored = conn.execute(
            "SELECT payment_amount, paid, company_ac_number, counterparty_ac_number, "
            "created_at, last_updated FROM payment ORDER BY payment_id"
        ).fetchall()
        lines = conn.execute(
            "SELECT address_line_1, address_line_2, district FROM address ORDER BY address_id"
        ).fetchall()
    assert [r[0] for r in stored] == [Decimal(f"{a:.2f}") for a in amounts]
    assert [r[1] for r in stored] == payment["paid"].to_list()
    assert {(r[2], r[3]) for r in stored} == {(2**31 - 1, -(2**31))}
    assert {r[4] for r in stored} == {stamp}
    assert {r[5] for r in stored} == {datetime(2024, 2, 29, 8, 0, 0, 1000)}
    assert lines == [("1 Main St", None, ""), ("Ünïcode Straße 5", "", None)]


def test_out_of_range_integers_fall_back_to_csv_and_fail_loudly(pg_dsn: str) -> None:
    frame = pl.DataFrame({"currency_id": [2**31], "currency_code": ["GBP"]}).with_columns(
        created_at=pl.lit(datetime(2024, 1, 1)).cast(pl.Datetime("ms")),
        last_updated=pl.lit(datetime(2024, 1, 1)).cast(pl.Datetime("ms")),
    )
    assert not binary_copy.supports(frame, TABLES["currency"])
    with psycopg.connect(pg_dsn) as conn:
        create_source_schema(conn)
        with pytest.raises(psycopg.errors.NumericValueOutOfRange):
            copy_frame(conn, TABLES["currency"], frame)
