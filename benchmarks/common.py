"""Shared helpers for the benchmarks: bulk test data and timing.

Data is generated inside PostgreSQL with `generate_series` so that building millions of
rows takes seconds and measures the server, not a Python loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

from pipeline.local.simulator.schema import create_source_schema

# Small parent tables, sized like the real totesys lookups.
PARENT_ROWS = {"address": 30, "counterparty": 20, "currency": 3, "department": 8, "staff": 20}
DESIGNS = 500
BASE_TIME = "2022-11-03 14:20:52.186"

_PARENTS_SQL = [
    """INSERT INTO address (address_line_1, address_line_2, district, city, postal_code,
                            country, phone, last_updated)
       SELECT 'line ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'flat ' || g END,
              CASE WHEN g % 2 = 0 THEN 'district ' || g END, 'city ' || g, 'PC' || g,
              'Country ' || (g % 7), '0' || (1000000 + g), now()
       FROM generate_series(1, 30) g""",
    """INSERT INTO currency (currency_code, last_updated)
       SELECT unnest(ARRAY['GBP', 'USD', 'EUR']), now()""",
    """INSERT INTO department (department_name, location, manager, last_updated)
       SELECT 'dept ' || g, 'floor ' || g, 'manager ' || g, now() FROM generate_series(1, 8) g""",
    """INSERT INTO counterparty (counterparty_legal_name, legal_address_id, commercial_contact,
                                 delivery_contact, last_updated)
       SELECT 'company ' || g, 1 + g % 30, 'contact ' || g, NULL, now()
       FROM generate_series(1, 20) g""",
    """INSERT INTO staff (first_name, last_name, department_id, email_address, last_updated)
       SELECT 'first' || g, 'last' || g, 1 + g % 8, 'staff' || g || '@example.com', now()
       FROM generate_series(1, 20) g""",
    f"""INSERT INTO design (design_name, file_location, file_name, last_updated)
       SELECT 'design ' || g, '/usr/share/design', 'design-' || g || '.json', now()
       FROM generate_series(1, {DESIGNS}) g""",
]

_SALES_ORDER_SQL = f"""
INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, unit_price,
                         currency_id, agreed_delivery_date, agreed_payment_date,
                         agreed_delivery_location_id, created_at, last_updated)
SELECT 1 + g %% {DESIGNS}, 1 + g %% 20, 1 + (g * 7) %% 20, 1000 + (g * 13) %% 99000,
       ((200 + (g * 31) %% 800) / 100.0)::numeric(10, 2), 1 + g %% 3,
       to_char(date '2022-11-05' + (g / 2000), 'YYYY-MM-DD'),
       to_char(date '2022-11-08' + (g / 2000), 'YYYY-MM-DD'),
       1 + g %% 30, ts, ts
FROM generate_series(%(first)s::int, %(last)s::int) g,
     LATERAL (SELECT timestamp '{BASE_TIME}' + g * interval '9 seconds 7 milliseconds') t(ts)
"""


def create_sales_orders(dsn: str, rows: int, *, chunk: int = 500_000) -> None:
    """Create the totesys schema in `dsn` with small parents and `rows` sales orders.

    The generated keys are valid by construction, so as a superuser the per-row foreign key
    triggers are skipped (`session_replication_role = replica`): 3-4x faster to build.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_source_schema(conn)
        for statement in _PARENTS_SQL:
            conn.execute(statement)  # type: ignore[arg-type]
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET session_replication_role = replica")
        for first in range(1, rows + 1, chunk):
            last = min(first + chunk - 1, rows)
            conn.execute(_SALES_ORDER_SQL, {"first": first, "last": last})  # type: ignore[arg-type]
        conn.execute("VACUUM ANALYZE")


@dataclass
class Timing:
    seconds: float = 0.0


@contextlib.contextmanager
def timed() -> Iterator[Timing]:
    result = Timing()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - start


def best_of(repeat: int, func: Callable[[], object]) -> float:
    """The fastest of `repeat` timed calls of `func`, in seconds (least disturbed by noise)."""
    times = []
    for _ in range(repeat):
        with timed() as t:
            func()
        times.append(t.seconds)
    return min(times)
