"""Helpers and fixtures shared by the extract integration tests (no tests of its own).

Tests create the totesys schema themselves and insert their own rows with explicit
`last_updated` values, so every boundary case is exact and needs no simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.extract import watermark
from pipeline.extract.run import extract_table, read_batch
from pipeline.lake import Lake
from pipeline.local.simulator.schema import create_source_schema
from pipeline.settings import Settings

PARENTS = [
    "INSERT INTO address (address_line_1, city, postal_code, country, phone, last_updated) "
    "VALUES ('1 Road', 'Leeds', 'LS1', 'UK', '0113', '2024-01-01')",
    "INSERT INTO currency (currency_code, last_updated) VALUES ('GBP', '2024-01-01')",
    "INSERT INTO department (department_name, last_updated) VALUES ('Sales', '2024-01-01')",
    "INSERT INTO design (design_name, file_location, file_name, last_updated) "
    "VALUES ('Wooden', '/d', 'wooden.json', '2024-01-01')",
    "INSERT INTO counterparty (counterparty_legal_name, legal_address_id, last_updated) "
    "VALUES ('Fahey', 1, '2024-01-01')",
    "INSERT INTO staff (first_name, last_name, department_id, email_address, last_updated) "
    "VALUES ('Jo', 'Doe', 1, 'jo@example.com', '2024-01-01')",
]


@pytest.fixture
def source(pg_dsn: str) -> str:
    """A totesys database with the schema and one row in each parent of sales_order."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        create_source_schema(conn)
        for statement in PARENTS:
            conn.execute(statement)  # type: ignore[arg-type]
    return pg_dsn


@pytest.fixture
def lake_url(tmp_path: Path) -> str:
    return str(tmp_path / "ingest")


def add_currencies(dsn: str, stamps: Iterable[str]) -> list[int]:
    """Insert one currency row per `last_updated` text; returns the new ids."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [
            conn.execute(
                "INSERT INTO currency (currency_code, created_at, last_updated) "
                "VALUES ('EUR', %s, %s) RETURNING currency_id",
                (stamp, stamp),
            ).fetchone()[0]  # type: ignore[index]
            for stamp in stamps
        ]


def add_sales_orders(dsn: str, count: int, start: str, step_ms: int = 1) -> None:
    """`count` sales orders with last_updated = start + i * step_ms (one SQL statement)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, "
            "unit_price, currency_id, agreed_delivery_date, agreed_payment_date, "
            "agreed_delivery_location_id, created_at, last_updated) "
            "SELECT 1, 1, 1, g, (g %% 1000) / 100.0 + 1, 1, '2024-11-10', '2024-11-12', 1, ts, ts "
            "FROM generate_series(0, %s - 1) g, "
            "LATERAL (SELECT %s::timestamp + g * %s * interval '1 millisecond') t(ts)",
            (count, start, step_ms),
        )


def source_versions(dsn: str, table: str = "currency") -> set[tuple[int, str]]:
    """(id, last_updated ISO ms) of every current row of a source table."""
    from psycopg import sql

    from pipeline.catalog import TABLES

    spec = TABLES[table]
    query = sql.SQL("SELECT {}, to_char({}, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS') FROM {}").format(
        sql.Identifier(spec.primary_key), sql.Identifier(spec.cursor), sql.Identifier(table)
    )
    with psycopg.connect(dsn) as conn:
        return {(r[0], r[1]) for r in conn.execute(query)}


def batch_versions(lake_url: str, table: str, run_id: str) -> list[tuple[int, str]]:
    """(id, last_updated ISO ms) of the rows one committed batch holds, in file order."""
    lake = Lake(lake_url)
    manifest = lake.read_json(f"_manifests/{table}/{run_id}.json")
    data = read_batch(lake, manifest)
    from pipeline.catalog import TABLES

    ids = data.column(TABLES[table].primary_key).to_pylist()
    stamps = data.column("last_updated").to_pylist()
    return [(i, s.isoformat(timespec="milliseconds")) for i, s in zip(ids, stamps, strict=True)]


def all_versions(lake_url: str, table: str) -> set[tuple[int, str]]:
    """Union of every committed batch of `table` (manifest-listed files only)."""
    lake = Lake(lake_url)
    out: set[tuple[int, str]] = set()
    for key in lake.list(f"_manifests/{table}/"):
        out |= set(batch_versions(lake_url, table, key.rsplit("/", 1)[1].removesuffix(".json")))
    return out


def mark(lake_url: str, table: str = "currency") -> watermark.Watermark | None:
    return watermark.load(Lake(lake_url), table)


def run(
    source: str,
    lake_url: str,
    run_id: str,
    table: str = "currency",
    *,
    since: str | None = None,
    until: str | None = None,
    stop: Callable[[], bool] | None = None,
    **knobs: Any,
):
    """Extract `table` from `source` into `lake_url` under `run_id`; `knobs` are settings."""
    settings = Settings(ingest_url=lake_url, source_dsn=source, **knobs)
    return extract_table(table, run_id, settings, since=since, until=until, stop=stop)
