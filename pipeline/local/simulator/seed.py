"""`seed`: create the production totesys schema and fill it with a realistic, reproducible
history.

Scale 1 matches the real November 2024 snapshot: fixed-size lookup tables, about 473
designs, 11,187 sales orders and 4,649 purchase orders (each with its transaction and
payment) spread over weekday business hours from 3 Nov 2022 to 15 Nov 2024. Scale X
multiplies the growing tables over the same period (X may be fractional). The history is
generated in memory with numpy/Polars, then bulk-loaded with `COPY` in one transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from pipeline.catalog import ENUMS, PRISMA_MIGRATIONS, SCHEMA_TABLES, TABLE_NAMES, TABLES
from pipeline.credentials import connect
from pipeline.errors import AlreadySeededError, NotSeededError, SimulatorInputError
from pipeline.local.simulator import generators as gen
from pipeline.local.simulator.bulk import constraints_built_after, copy_frame, sync_sequences
from pipeline.local.simulator.clock import business_times, to_ms
from pipeline.local.simulator.reference import lookup_tables, make_faker
from pipeline.local.simulator.schema import (
    create_source_schema,
    cursor_index_statements,
    ddl_text,
)

DEFAULT_START = datetime(2022, 11, 3, 14, 20, 49, 962000)
HISTORY = timedelta(days=743, seconds=1200, milliseconds=226)  # to 2024-11-15 14:40:10.188
PEOPLE_DELAY_MS = 1_601  # counterparty and staff rows follow the other lookups
FIRST_ORDER_DELAY_MS = 2_224
# Rows per table at scale 1 (the real snapshot).
SALES_ORDERS = 11_187
PURCHASE_ORDERS = 4_649
DESIGNS = 473
LAUNCH_DESIGNS = 10  # designs that exist from the first moment
MAX_SCALE = 1_000.0  # about 11 million sales orders; generation is in memory


def _check_scale(scale: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise SimulatorInputError(
            f"scale must be a positive number (1 = the real snapshot's size), got {scale!r}"
        )
    if scale > MAX_SCALE:
        raise SimulatorInputError(
            f"scale {scale} is above the supported maximum {MAX_SCALE:g} "
            f"(about {int(SALES_ORDERS * MAX_SCALE):,} sales orders built in memory)"
        )


def _scaled(count: int, scale: float, minimum: int = 0) -> int:
    return max(minimum, round(count * scale))


def rng_seed(seed: int) -> int:
    """Any Python int (negative too) as the non-negative 64-bit seed numpy requires."""
    return int(seed) & (2**64 - 1)


def _check_start(start: datetime) -> None:
    if not isinstance(start, datetime) or not 1900 <= start.year <= 9000:
        raise SimulatorInputError(
            f"start must be a datetime between the years 1900 and 9000, got {start!r}"
        )


def generate_history(*, scale: float, seed: int, start: datetime) -> dict[str, pl.DataFrame]:
    """Every totesys table as a Polars frame (catalog columns), from `start` for HISTORY.

    Pure function of (scale, seed, start): the same inputs give identical frames.
    """
    _check_scale(scale)
    _check_start(start)
    rng = np.random.default_rng(rng_seed(seed))
    fake, gb = make_faker(rng_seed(seed))
    start_ms = to_ms(start)
    end_ms = start_ms + HISTORY // timedelta(milliseconds=1)
    frames = lookup_tables(fake, gb, rng, start_ms, start_ms + PEOPLE_DELAY_MS)
    lookups = gen.Lookups(
        staff=frames["staff"]["staff_id"].to_numpy(),
        counterparty=frames["counterparty"]["counterparty_id"].to_numpy(),
        address=frames["address"]["address_id"].to_numpy(),
        currency=frames["currency"]["currency_id"].to_numpy(),
        sales_receipt=ENUMS["PaymentTypeName"].index("SALES_RECEIPT") + 1,
        purchase_payment=ENUMS["PaymentTypeName"].index("PURCHASE_PAYMENT") + 1,
    )
    n_designs = _scaled(DESIGNS, scale, minimum=1)
    launch = min(n_designs, LAUNCH_DESIGNS)
    design_ms = np.concatenate(
        [
            np.full(launch, start_ms, dtype=np.int64),
            business_times(rng, n_designs - launch, start_ms + 1, end_ms),
        ]
    )
    design_ids = np.arange(1, n_designs + 1, dtype=np.int64)
    frames["design"] = gen.designs(rng, design_ids, design_ms)

    first_order_ms = start_ms + FIRST_ORDER_DELAY_MS
    n_sales = _scaled(SALES_ORDERS, scale)
    sales_ms = business_times(rng, n_sales, first_order_ms, end_ms)
    sales = gen.sales_orders(
        rng, np.arange(1, n_sales + 1), sales_ms, lookups, design_ids, design_ms
    )
    n_purchases = _scaled(PURCHASE_ORDERS, scale)
    purchase_ms = business_times(rng, n_purchases, first_order_ms, end_ms)
    purchases = gen.purchase_orders(rng, np.arange(1, n_purchases + 1), purchase_ms, lookups)
    money_ids = np.arange(1, n_sales + n_purchases + 1)
    frames["transaction"], frames["payment"] = gen.transactions_and_payments(
        rng, sales, purchases, money_ids, money_ids, lookups, settle_until_ms=end_ms
    )
    frames["sales_order"] = gen.finish_sales(sales)
    frames["purchase_order"] = gen.finish_purchases(purchases)
    return {name: frames[name] for name in TABLE_NAMES}


def existing_objects(conn: psycopg.Connection) -> list[str]:
    """Names of totesys tables and enum types already present in the current schema."""
    names = [t.name for t in SCHEMA_TABLES] + list(ENUMS)
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relname = ANY(%(n)s) "
        "AND c.relnamespace = current_schema()::regnamespace "
        "UNION SELECT t.typname FROM pg_type t WHERE t.typname = ANY(%(n)s) "
        "AND t.typnamespace = current_schema()::regnamespace ORDER BY 1",
        {"n": names},
    ).fetchall()
    return [r[0] for r in rows]


def seed(
    dsn: str,
    *,
    scale: float = 1.0,
    seed: int = 42,
    force: bool = False,
    start: datetime | None = None,
    cursor_indexes: bool = False,
    into_existing: bool = False,
) -> dict[str, int]:
    """Create the totesys schema in `dsn`'s database and fill it; return rows per table.

    Refuses a database that already has totesys tables unless `force` (which replaces
    them), or `into_existing` (see `load_frames`). `cursor_indexes` adds the opt-in
    `(last_updated, <key>)` indexes production lacks. Connection problems surface as
    `AuthenticationError`/`SourceUnavailableError` without the password.
    """
    _check_scale(scale)
    _check_start(start or DEFAULT_START)
    first = start or DEFAULT_START
    return load_frames(
        dsn,
        lambda: generate_history(scale=scale, seed=seed, start=first),
        force=force,
        cursor_indexes=cursor_indexes,
        into_existing=into_existing,
        schema_created_at=first,
    )


def _empty_tables(conn: psycopg.Connection) -> None:
    """`into_existing` needs every catalog table present and empty (checked, not assumed)."""
    present = set(existing_objects(conn))
    missing = [name for name in TABLE_NAMES if name not in present]
    if missing:
        raise NotSeededError(
            f"totesys database {conn.info.dbname!r} has no {', '.join(missing)} table(s) to "
            "load into; create the schema first (for example from the production DDL), or "
            "seed without --into-existing"
        )
    filled = [
        name
        for name in TABLE_NAMES
        if conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(name))
        ).fetchone()
        == (True,)
    ]
    if filled:
        raise AlreadySeededError(
            f"totesys database {conn.info.dbname!r} already has rows in {', '.join(filled)}; "
            "--into-existing loads only into empty tables"
        )


def _record_migration(conn: psycopg.Connection, moment: datetime) -> None:
    """One plausible row in `_prisma_migrations`, as Prisma leaves after its first migration
    (the table is bookkeeping, never extracted: a filled one proves that)."""
    name = f"{moment:%Y%m%d%H%M%S}_init"
    applied = moment.replace(tzinfo=UTC)
    checksum = hashlib.sha256(ddl_text(conn).encode()).hexdigest()
    values = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"totesys/{name}")),
        "checksum": checksum,
        "finished_at": applied + timedelta(milliseconds=87),
        "migration_name": name,
        "started_at": applied,
        "applied_steps_count": 1,
    }
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(PRISMA_MIGRATIONS.name),
            sql.SQL(", ").join(sql.Identifier(PRISMA_MIGRATIONS.column(c).name) for c in values),
            sql.SQL(", ").join(sql.Placeholder(c) for c in values),
        ),
        values,
    )


def load_frames(
    dsn: str,
    make_frames: Callable[[], dict[str, pl.DataFrame]],
    *,
    force: bool = False,
    cursor_indexes: bool = False,
    into_existing: bool = False,
    schema_created_at: datetime = DEFAULT_START,
) -> dict[str, int]:
    """Create the schema and bulk-load one frame per table (catalog columns) in one go.

    `into_existing`: the totesys tables exist already (a database made from the production
    DDL, say) and must be empty; rows go into them as they are, nothing is created or
    replaced. Either way the sequences end past the loaded ids, so later inserts (by
    `simulate` or by hand) get fresh keys. `make_frames` runs only after the target
    database passed its checks, so a refused database costs no generation time.
    """
    with connect(dsn, what="totesys", autocommit=True) as conn:
        existing = existing_objects(conn)
        if into_existing:
            _empty_tables(conn)
        elif existing and not force:
            raise AlreadySeededError(
                f"totesys database {conn.info.dbname!r} already has {', '.join(existing)}; "
                "pass force=True (CLI: --force) to replace it, into_existing=True "
                "(--into-existing) to fill its empty tables, or seed another database"
            )
        frames = make_frames()
        with conn.transaction():
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")  # faster FK/index builds
            if not into_existing:
                create_source_schema(conn, replace=bool(existing))
                _record_migration(conn, schema_created_at)
            if cursor_indexes:
                for statement in cursor_index_statements(if_not_exists=into_existing):
                    conn.execute(statement)
            with constraints_built_after(conn):
                for name in TABLE_NAMES:
                    copy_frame(conn, TABLES[name], frames[name], freeze=not into_existing)
            sync_sequences(conn)
        conn.execute(  # fresh statistics for the extract's first queries
            sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLE_NAMES)))
        )
    return {name: frames[name].height for name in TABLE_NAMES}
