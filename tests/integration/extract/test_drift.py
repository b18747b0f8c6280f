"""Schema drift against a real PostgreSQL (R12): one test per case of the policy in
docs/CONTRACTS.md. The source starts as the production schema (the simulator's DDL, which
tests/integration/local/test_source_schema.py proves equal to the production file) and
is then altered the way a Prisma migration would alter it."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pyarrow.parquet as pq
import pytest

from pipeline.catalog import TABLES
from pipeline.errors import DataQualityError, SchemaDriftError
from pipeline.extract.run import read_batch
from pipeline.lake import Lake
from tests.integration.extract.helpers import add_sales_orders, lake_url, mark, run, source

__all__ = ["lake_url", "source"]  # fixtures

pytestmark = pytest.mark.postgres


def _alter(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def _files(lake_url: str) -> dict[str, bytes]:
    lake = Lake(lake_url)
    return {k: lake.read_bytes(k) for k in lake.list()}


def _add_transaction(dsn: str, kind: str) -> None:
    _alter(
        dsn,
        "INSERT INTO transaction (transaction_type, sales_order_id, last_updated) "
        f"VALUES ('{kind}', NULL, '2024-11-04 09:00:00')",
    )


def test_an_enum_type_renamed_or_moved_to_another_schema_is_no_drift(
    source: str, lake_url: str
) -> None:
    _alter(
        source,
        'ALTER TYPE "TransactionType" RENAME TO "TransactionKind"',
        "CREATE SCHEMA audit",
        'ALTER TYPE "TransactionKind" SET SCHEMA audit',
    )
    _add_transaction(source, "PURCHASE")
    result = run(source, lake_url, "r1", table="transaction")
    assert result.warnings == []
    data = read_batch(Lake(lake_url), Lake(lake_url).read_json(result.manifest))
    assert data.column("transaction_type").to_pylist() == ["PURCHASE"]


def test_an_enum_label_added_warns_and_its_values_flow_as_text(source: str, lake_url: str) -> None:
    _alter(source, "ALTER TYPE \"TransactionType\" ADD VALUE 'REFUND'")
    _add_transaction(source, "REFUND")
    _add_transaction(source, "SALE")
    result = run(source, lake_url, "r1", table="transaction")
    [warning] = result.warnings
    assert "transaction.transaction_type" in warning and "REFUND" in warning
    data = read_batch(Lake(lake_url), Lake(lake_url).read_json(result.manifest))
    assert sorted(data.column("transaction_type").to_pylist()) == ["REFUND", "SALE"]


def test_an_enum_label_removed_is_fine(source: str, lake_url: str) -> None:
    """PostgreSQL cannot drop a label: a migration recreates the type without it."""
    _alter(
        source,
        'ALTER TYPE "PaymentTypeName" RENAME TO "PaymentTypeName_old"',
        "CREATE TYPE \"PaymentTypeName\" AS ENUM ('SALES_RECEIPT', 'PURCHASE_PAYMENT')",
        'ALTER TABLE payment_type ALTER COLUMN payment_type_name TYPE "PaymentTypeName" '
        'USING payment_type_name::text::"PaymentTypeName"',
        'DROP TYPE "PaymentTypeName_old"',
        "INSERT INTO payment_type (payment_type_name, last_updated) "
        "VALUES ('SALES_RECEIPT', '2024-11-04 09:00')",
    )
    result = run(source, lake_url, "r1", table="payment_type")
    assert (result.rows, result.warnings) == (1, [])


def test_a_varchar_widened_warns_and_longer_values_flow(source: str, lake_url: str) -> None:
    _alter(source, "ALTER TABLE currency ALTER COLUMN currency_code TYPE varchar(10)")
    _alter(source, "INSERT INTO currency (currency_code, last_updated) VALUES ('USDT', now())")
    result = run(source, lake_url, "r1")
    [warning] = result.warnings
    assert "currency.currency_code" in warning and "character varying(10)" in warning
    _alter(source, "ALTER TABLE currency ALTER COLUMN currency_code TYPE text")
    again = run(source, lake_url, "r2")
    assert "widened from character varying(3) to text" in again.warnings[0]
    data = read_batch(Lake(lake_url), Lake(lake_url).read_json(again.manifest))
    assert "USDT" in data.column("currency_code").to_pylist()


def test_integer_to_bigint_warns_and_a_value_beyond_int32_stops_the_table(
    source: str, lake_url: str
) -> None:
    add_sales_orders(source, 3, "2024-11-04 09:00:00.000")
    _alter(source, "ALTER TABLE sales_order ALTER COLUMN units_sold TYPE bigint")
    result = run(source, lake_url, "r1", table="sales_order")
    [warning] = result.warnings
    assert "sales_order.units_sold: widened from integer to bigint" in warning
    lake = Lake(lake_url)
    [part] = result.files
    assert pq.read_schema(lake.path(part)).field("units_sold").type == "int32"  # catalog type
    [units] = [c for c in lake.read_json(result.manifest)["schema"] if c["name"] == "units_sold"]
    assert (units["type"], units["source_type"]) == ("int32", "bigint")
    before, watermark = _files(lake_url), mark(lake_url, "sales_order")
    _alter(source, "UPDATE sales_order SET units_sold = 3000000000, last_updated = now()")
    with pytest.raises(DataQualityError, match=r"'sales_order', column 'units_sold'.*int32"):
        run(source, lake_url, "r2", table="sales_order")
    assert mark(lake_url, "sales_order") == watermark
    assert not lake.exists("_manifests/sales_order/r2.json")  # nothing committed
    after = _files(lake_url)
    assert {k: after[k] for k in before} == before
    assert all("/r2/" in k or k.endswith("/runs/r2.json") for k in set(after) - set(before))


def test_a_numeric_widened_keeps_every_value(source: str, lake_url: str) -> None:
    add_sales_orders(source, 2, "2024-11-04 09:00:00.000")
    _alter(source, "ALTER TABLE sales_order ALTER COLUMN unit_price TYPE numeric(14,4)")
    result = run(source, lake_url, "r1", table="sales_order")
    assert "widened from numeric(10,2) to numeric(14,4)" in result.warnings[0]
    data = read_batch(Lake(lake_url), Lake(lake_url).read_json(result.manifest))
    assert data.column("unit_price").to_pylist() == [Decimal("1.00"), Decimal("1.01")]


def test_a_dropped_column_fails_that_table_only_and_writes_nothing(
    source: str, lake_url: str
) -> None:
    run(source, lake_url, "r0")
    before = _files(lake_url)
    _alter(source, "ALTER TABLE currency DROP COLUMN currency_code")
    with pytest.raises(SchemaDriftError, match="dropped") as info:
        run(source, lake_url, "r1")
    error = info.value
    assert (error.table, error.column) == ("currency", "currency_code")
    assert (error.old_type, error.new_type) == ("character varying(3)", None)
    assert _files(lake_url) == before
    assert run(source, lake_url, "r1", table="department").rows == 1  # the others carry on


@pytest.mark.parametrize(
    ("change", "table", "column", "old", "new"),
    [
        (
            "ALTER TABLE sales_order ALTER COLUMN agreed_delivery_date TYPE date "
            "USING agreed_delivery_date::date",
            "sales_order",
            "agreed_delivery_date",
            "text",
            "date",
        ),
        (
            "ALTER TABLE currency ALTER COLUMN last_updated TYPE text",
            "currency",
            "last_updated",
            "timestamp(3) without time zone",
            "text",
        ),
        (
            "ALTER TABLE currency ALTER COLUMN last_updated TYPE timestamp(6)",
            "currency",
            "last_updated",
            "timestamp(3) without time zone",
            "timestamp(6) without time zone",
        ),
        (  # narrowing
            "ALTER TABLE currency ALTER COLUMN currency_code TYPE varchar(2) "
            "USING left(currency_code, 2)",
            "currency",
            "currency_code",
            "character varying(3)",
            "character varying(2)",
        ),
    ],
)
def test_a_column_retyped_to_another_kind_or_narrowed_fails_naming_both_types(
    source: str, lake_url: str, change: str, table: str, column: str, old: str, new: str
) -> None:
    run(source, lake_url, "r0", table=table)
    before = _files(lake_url)
    _alter(source, change)
    with pytest.raises(SchemaDriftError) as info:
        run(source, lake_url, "r1", table=table)
    error = info.value
    assert (error.table, error.column, error.old_type, error.new_type) == (table, column, old, new)
    assert f"from {old} to {new}" in str(error)
    assert _files(lake_url) == before


def test_an_added_column_is_captured_typed_in_the_same_files_and_the_manifest(
    source: str, lake_url: str
) -> None:
    _alter(
        source,
        "ALTER TABLE currency ADD COLUMN currency_name text",
        "ALTER TABLE currency ADD COLUMN rate numeric(12,4) DEFAULT 1.2345",
        "ALTER TABLE currency ADD COLUMN checked_at timestamptz",
        "ALTER TABLE currency ADD COLUMN meta jsonb",
        "UPDATE currency SET currency_name = 'Pound', meta = '{\"a\": 1}', "
        "checked_at = '2024-11-04 09:00:00+00', last_updated = now()",
    )
    result = run(source, lake_url, "r1")
    assert len(result.warnings) == 4 and "'currency_name'" in result.warnings[0]
    lake = Lake(lake_url)
    manifest = lake.read_json(result.manifest)
    assert manifest["added_columns"] == ["currency_name", "rate", "checked_at", "meta"]
    schema = {c["name"]: c for c in manifest["schema"]}
    assert [c["name"] for c in manifest["schema"]] == [
        *TABLES["currency"].column_names,
        *manifest["added_columns"],
    ]
    assert schema["rate"] == {
        "name": "rate",
        "type": "decimal128(12, 4)",
        "nullable": True,
        "source_type": "numeric(12,4)",
        "in_catalog": False,
    }
    assert schema["currency_code"]["source_type"] == "character varying(3)"
    [part] = manifest["files"]
    raw = pq.read_table(lake.path(part)).to_pylist()[0]
    assert raw["currency_name"] == "Pound" and raw["rate"] == Decimal("1.2345")
    assert (
        raw["meta"] == '{"a": 1}' and raw["checked_at"].isoformat() == "2024-11-04T09:00:00+00:00"
    )
    assert read_batch(lake, manifest).schema == TABLES["currency"].arrow_schema
