"""Processed batches for load tests, written exactly as docs/CONTRACTS.md lays them out.

`star_batch` builds a small, referentially complete set of dimension and fact rows;
`write_batch` writes any tables as Parquet parts plus the processed manifest.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa

from pipeline import layout, processed_log
from pipeline.lake import Lake
from pipeline.warehouse_schema import HISTORIES, PROCESSED_TABLES, WAREHOUSE_TABLES

Rows = list[dict[str, Any]]
BASE_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def arrow(table: str, rows: Rows) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PROCESSED_TABLES[table].arrow_schema)


def write_batch(
    lake: Lake,
    run_id: str,
    tables: dict[str, Rows | pa.Table],
    *,
    committed_at: dt.datetime | None = None,
    parts: int = 1,
    legacy: bool = False,
) -> dict[str, Any]:
    """Write each table as `parts` Parquet files and commit the batch (`commit`)."""
    outputs: dict[str, Any] = {}
    for name, rows in tables.items():
        data = rows if isinstance(rows, pa.Table) else arrow(name, rows)
        size = -(-data.num_rows // parts) if data.num_rows else 0
        keys = []
        for i in range(parts if data.num_rows else 0):
            key = f"{name}/run={run_id}/part-{i:05d}.parquet"
            lake.write_parquet(key, data.slice(i * size, size))
            keys.append(key)
        outputs[name] = {"files": keys, "rows": data.num_rows}
    return commit(lake, run_id, outputs, committed_at=committed_at, legacy=legacy)


def commit(
    lake: Lake,
    run_id: str,
    outputs: dict[str, Any],
    *,
    committed_at: dt.datetime | None = None,
    legacy: bool = False,
) -> dict[str, Any]:
    """Commit a batch as the transform does: head, manifest, batch log entry (`legacy`:
    the manifest only, as versions before the batch log did)."""
    base, _ = processed_log.read_head(lake)
    seq = int(base.get("log_seq") or 0) + 1
    when = (committed_at or dt.datetime.now(dt.UTC)).isoformat(timespec="microseconds")
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "inputs": [],
        "outputs": outputs,
        "rows_in": {},
        "quarantined": {},
        "committed_at": when,
    }
    key = layout.processed_manifest(run_id)
    if lake.exists(key):  # committed already: as a transform replaying its run id
        recorded: dict[str, Any] = lake.read_json(key)
        return recorded
    if legacy:
        lake.write_json(key, manifest)
        return manifest
    pointers = {"run_id": run_id, "files": {}, "log_seq": seq, "committed_at": when}
    manifest.update(seq=seq, previous=base.get("run_id"), released=[], state=pointers)
    lake.write_json(layout.STATE_HEAD, {"current": pointers, "previous": base})
    lake.write_json(key, manifest)
    processed_log.log_commit(lake, key, manifest)  # type: ignore[arg-type]
    return manifest


def date_rows(*days: dt.date) -> Rows:
    return [
        {
            "date_id": d,
            "year": d.year,
            "month": d.month,
            "day": d.day,
            "day_of_week": d.isoweekday(),
            "day_name": d.strftime("%A"),
            "month_name": d.strftime("%B"),
            "quarter": (d.month - 1) // 3 + 1,
        }
        for d in sorted(set(days))
    ]


def dimension_rows(n: int = 3, *, suffix: str = "") -> dict[str, Rows]:
    """Ids 1..n in every dimension but dim_date (names carry `suffix` to mark changes)."""
    ids = range(1, n + 1)
    return {
        "dim_staff": [
            {
                "staff_id": i,
                "first_name": f"First{i}{suffix}",
                "last_name": f"Last{i}",
                "department_name": "Sales",
                "location": None if i % 2 else "Manchester",
                "email_address": f"s{i}@example.com",
            }
            for i in ids
        ],
        "dim_location": [
            {
                "location_id": i,
                "address_line_1": f"{i} High St{suffix}",
                "address_line_2": None,
                "district": "Ürban" if i == 1 else None,
                "city": "Leeds",
                "postal_code": f"LS{i}",
                "country": "UK",
                "phone": "0113",
            }
            for i in ids
        ],
        "dim_design": [
            {"design_id": i, "design_name": f"D{i}", "file_location": "/x", "file_name": f"d{i}"}
            for i in ids
        ],
        "dim_currency": [
            {"currency_id": i, "currency_code": c, "currency_name": name}
            for i, (c, name) in zip(
                ids,
                [("GBP", "Pound Sterling"), ("USD", "US Dollar"), ("EUR", "Euro")],
                strict=False,
            )
        ],
        "dim_counterparty": [
            {
                "counterparty_id": i,
                "counterparty_legal_name": f"Co {i}",
                "counterparty_legal_address_line_1": "1 Road",
                "counterparty_legal_address_line_2": None,
                "counterparty_legal_district": None,
                "counterparty_legal_city": "York",
                "counterparty_legal_postal_code": "Y1",
                "counterparty_legal_country": "UK",
                "counterparty_legal_phone_number": "01904",
            }
            for i in ids
        ],
        "dim_transaction": [
            {
                "transaction_id": i,
                "transaction_type": "SALE" if i % 2 else "PURCHASE",
                "sales_order_id": i if i % 2 else None,
                "purchase_order_id": None if i % 2 else i,
            }
            for i in ids
        ],
        "dim_payment_type": [{"payment_type_id": i, "payment_type_name": f"TYPE_{i}"} for i in ids],
    }


def sales_rows(ids: range, when: dt.datetime, *, units: int = 10, ref: int = 1) -> Rows:
    """One `fact_sales_order` version per id, last updated at `when` (millisecond precision)."""
    return [
        {
            "sales_order_id": i,
            "created_date": dt.date(2025, 12, 1),
            "created_time": dt.time(9, 0, 0, 1000),
            "last_updated_date": when.date(),
            "last_updated_time": when.time(),
            "sales_staff_id": ref,
            "counterparty_id": ref,
            "units_sold": units,
            "unit_price": Decimal("-12345678.99") if i == 1 else Decimal(i) / 100,
            "currency_id": ref,
            "design_id": ref,
            "agreed_payment_date": dt.date(2025, 12, 1),
            "agreed_delivery_date": when.date(),
            "agreed_delivery_location_id": ref,
        }
        for i in ids
    ]


def purchase_rows(ids: range, when: dt.datetime) -> Rows:
    return [
        {
            "purchase_order_id": i,
            "created_date": dt.date(2025, 12, 1),
            "created_time": dt.time(10, 30),
            "last_updated_date": when.date(),
            "last_updated_time": when.time(),
            "staff_id": 1,
            "counterparty_id": 2,
            "item_code": f"ITEM-{i}-é",
            "item_quantity": i,
            "item_unit_price": Decimal("0.01") * i,
            "currency_id": 1,
            "agreed_delivery_date": when.date(),
            "agreed_payment_date": dt.date(2025, 12, 1),
            "agreed_delivery_location_id": 3,
        }
        for i in ids
    ]


def payment_rows(ids: range, when: dt.datetime, *, paid: bool = False) -> Rows:
    return [
        {
            "payment_id": i,
            "created_date": dt.date(2025, 12, 1),
            "created_time": dt.time(23, 59, 59, 999000),
            "last_updated_date": when.date(),
            "last_updated_time": when.time(),
            "transaction_id": 1 + i % 3,
            "counterparty_id": 1,
            "payment_amount": Decimal("100.50"),
            "currency_id": 2,
            "payment_type_id": 3,
            "paid": paid,
            "payment_date": dt.date(2025, 12, 1),
        }
        for i in ids
    ]


def history_batch(*versions: tuple[dt.datetime, dict[str, Rows]]) -> dict[str, Rows]:
    """Every history table's full history of the keys, one version per (start, dimension
    rows) given, oldest first: what a transform emits for them."""
    out: dict[str, Rows] = {}
    for history in HISTORIES:
        dim, key = str(history.history_of), WAREHOUSE_TABLES[str(history.history_of)].primary_key
        rows: Rows = []
        for i, (start, dims) in enumerate(versions):
            end = versions[i + 1][0] if i + 1 < len(versions) else None
            for r in dims[dim]:
                rows.append({**r, "valid_from": start.replace(tzinfo=None),
                             "valid_to": end and end.replace(tzinfo=None),
                             "is_current": end is None, "is_deleted": False})  # fmt: skip
        out[history.name] = sorted(rows, key=lambda r: (r[key], r["valid_from"]))
    return out


def star_batch(
    when: dt.datetime, *, ids: range = range(1, 6), suffix: str = "", units: int = 10
) -> dict[str, Rows]:
    """A complete batch: every dimension, dates covering the facts, all three facts."""
    days = [dt.date(2025, 12, 1), when.date()]
    return {
        "dim_date": date_rows(*days),
        **dimension_rows(suffix=suffix),
        "fact_sales_order": sales_rows(ids, when, units=units),
        "fact_purchase_order": purchase_rows(ids, when),
        "fact_payment": payment_rows(ids, when),
    }


def full_contents(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every column of every warehouse table but `_deleted_at` (record ids and lineage
    included, lineage last), in key order."""
    import psycopg
    from psycopg import sql

    from pipeline.load import ddl

    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(dsn) as conn:
        for name, table in WAREHOUSE_TABLES.items():
            columns = [
                *([table.primary_key] if table.is_fact else []),
                *table.column_names,
                ddl.LINEAGE_COLUMN,
            ]
            out[name] = conn.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                    sql.Identifier(name),
                    sql.Identifier(table.primary_key),
                )
            ).fetchall()
    return out


def row_versions(dsn: str, table: str) -> dict[Any, str]:
    """Primary key -> xmin: changes exactly when the row is rewritten."""
    import psycopg
    from psycopg import sql

    pk = WAREHOUSE_TABLES[table].primary_key
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT {}, xmin::text FROM {}").format(
                sql.Identifier(pk), sql.Identifier(table)
            )
        ).fetchall()
    return dict(rows)
