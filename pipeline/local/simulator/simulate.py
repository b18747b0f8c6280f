"""`simulate`: advance a seeded totesys database by some days, hours or minutes of business.

Each weekday, in time order: the 07:55 settlement batch marks due payments paid, then
between 08:00 and 19:00 about 21 sales orders, 9 purchase orders and ~1 design arrive
(the real daily rates, independent of the seed's scale), each order with its transaction
and payment, plus a rare edit to a staff, department, address or counterparty row.
Weekends and nights are quiet. A simulation covers a window of simulated time: from
where the last one stopped (`timeline`; the first starts the day after the latest
`last_updated` in the database, so timestamps only move forward) for the given span, and
time moves on even when nothing happens. A window shorter than a day gets that share of a
day's business (Poisson counts with the rates scaled by the business hours it covers), so
15-minute steps add up to days like the real system's. The window never goes past the
database's real clock unless asked (`allow_future`): rows stamped in the future would not
be extracted until it caught up. Each day of the window commits as one transaction,
together with the clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import psycopg
from faker import Faker
from psycopg import sql

from pipeline.catalog import TABLE_NAMES, TABLES
from pipeline.credentials import connect
from pipeline.errors import NotSeededError, SimulatorInputError
from pipeline.local.simulator import generators as gen
from pipeline.local.simulator import timeline
from pipeline.local.simulator.bulk import copy_frame, reserve_ids
from pipeline.local.simulator.clock import (
    CLOSE_MS,
    DAY_MS,
    OPEN_MS,
    batch_time_ms,
    business_times,
    day_of,
    day_to_date,
    from_ms,
    is_weekday,
    open_windows,
    to_ms,
)
from pipeline.local.simulator.reference import make_faker, phone_number
from pipeline.local.simulator.seed import existing_objects, rng_seed

DAILY_SALES_ORDERS = 21.0
DAILY_PURCHASE_ORDERS = 9.0
DAILY_DESIGNS = 0.9
MAX_DAYS = 3_660
MINUTE_MS = 60_000
BUSINESS_DAY_MS = CLOSE_MS - OPEN_MS
# Chance per weekday that one row of the table is edited (a transfer, a new manager...).
EDIT_CHANCE: dict[str, float] = {
    "staff": 0.05,
    "department": 0.02,
    "address": 0.03,
    "counterparty": 0.03,
}


@dataclass(frozen=True)
class _World:
    """What the generators need to know about the database, read once per call."""

    lookups: gen.Lookups
    departments: np.ndarray
    design_ids: np.ndarray


def _ids(conn: psycopg.Connection, table: str) -> np.ndarray:
    t = TABLES[table]
    query = sql.SQL("SELECT {pk} FROM {t} ORDER BY {pk}").format(
        pk=sql.Identifier(t.primary_key), t=sql.Identifier(t.name)
    )
    return np.array([r[0] for r in conn.execute(query)], dtype=np.int64)


def latest_timestamp_ms(conn: psycopg.Connection) -> int | None:
    """The newest `last_updated` over all totesys tables (one scan of each: production has
    no index on it)."""
    parts = [
        sql.SQL("SELECT max({c}) FROM {t}").format(
            c=sql.Identifier(TABLES[n].cursor), t=sql.Identifier(n)
        )
        for n in TABLE_NAMES
    ]
    query = sql.SQL("SELECT max(m) FROM ({}) AS per_table(m)").format(
        sql.SQL(" UNION ALL ").join(parts)
    )
    latest = conn.execute(query).fetchone()
    if latest is None or latest[0] is None:
        return None
    return to_ms(latest[0])


def _read_world(conn: psycopg.Connection) -> _World:
    types: dict[str, int] = dict(
        conn.execute("SELECT payment_type_name::text, payment_type_id FROM payment_type")
    )
    ids = {
        name: _ids(conn, name)
        for name in ("staff", "counterparty", "address", "currency", "department", "design")
    }
    problems = [f"payment type {name}" for name in gen.PAYMENT_TYPES if name not in types]
    problems += [f"{name} rows" for name, found in ids.items() if len(found) == 0]
    if problems:
        raise NotSeededError(
            f"totesys database {conn.info.dbname!r} lacks reference data "
            f"({', '.join(problems)}); seed it first with `totesys-etl seed`"
        )
    lookups = gen.Lookups(
        staff=ids["staff"],
        counterparty=ids["counterparty"],
        address=ids["address"],
        currency=ids["currency"],
        sales_receipt=types["SALES_RECEIPT"],
        purchase_payment=types["PURCHASE_PAYMENT"],
    )
    return _World(lookups, ids["department"], ids["design"])


def _settle_due_payments(conn: psycopg.Connection, day: int) -> int:
    """The morning batch (weekdays only): unpaid payments due today and created before today
    become paid, all stamped with the batch's one moment of the simulated day (never
    `now()`), as the real settlement job does (`pipeline.local.simulator.generators`)."""
    batch = from_ms(int(batch_time_ms(np.array([day]))[0]))
    cur = conn.execute(
        "UPDATE payment SET paid = true, last_updated = %(batch)s "
        "WHERE NOT paid AND payment_date = %(day)s AND created_at < %(batch)s",
        {"batch": batch, "day": day_to_date(day).isoformat()},
    )
    return cur.rowcount


def _edit(
    table: str, rng: np.random.Generator, fake: Faker, world: _World
) -> tuple[int, str, object]:
    """(row id, column, new value) of one plausible change to a static table."""
    if table == "staff":  # a transfer to another department
        return (
            int(rng.choice(world.lookups.staff)),
            "department_id",
            int(rng.choice(world.departments)),
        )
    if table == "department":  # a new manager
        return int(rng.choice(world.departments)), "manager", fake.name()
    if table == "address":  # a new phone number
        return int(rng.choice(world.lookups.address)), "phone", phone_number(fake)
    if table == "counterparty":  # a new commercial contact
        return int(rng.choice(world.lookups.counterparty)), "commercial_contact", fake.name()
    raise ValueError(f"no edit defined for table {table!r}")


def apply_lookup_edits(
    conn: psycopg.Connection,
    day: int,
    rng: np.random.Generator,
    fake: Faker,
    world: _World,
    chances: dict[str, float] = EDIT_CHANCE,
    window: tuple[int, int] | None = None,
) -> int:
    """Rare changes to static rows; each bumps `last_updated` to its simulated moment.
    `window` (epoch ms, default the whole day) scales each chance by its business time."""
    lo, hi = window or (day * DAY_MS, (day + 1) * DAY_MS)
    share = _business_share(lo, hi)
    edits = 0
    for table, chance in chances.items():
        if share == 0 or rng.random() >= chance * share:
            continue
        moment = from_ms(business_times(rng, 1, lo, hi)[0])
        row, column, value = _edit(table, rng, fake, world)
        t = TABLES[table]
        cur = conn.execute(
            sql.SQL("UPDATE {t} SET {c} = %s, {lu} = %s WHERE {pk} = %s AND {lu} < %s").format(
                t=sql.Identifier(t.name),
                c=sql.Identifier(t.column(column).name),
                lu=sql.Identifier(t.cursor),
                pk=sql.Identifier(t.primary_key),
            ),
            (value, moment, row, moment),
        )
        edits += cur.rowcount
    return edits


def _business_share(lo: int, hi: int) -> float:
    """The share of a business day's hours that lies in [lo, hi) (epoch ms)."""
    starts, ends = open_windows(lo, hi)
    return float((ends - starts).sum()) / BUSINESS_DAY_MS


def _new_orders(
    conn: psycopg.Connection, window: tuple[int, int], rng: np.random.Generator, world: _World
) -> tuple[Counter[str], _World]:
    """Insert the designs and orders (with transactions and payments) of a window of one
    day: that share of a business day's, at the real daily rates."""
    opens, closes = window
    share = _business_share(opens, closes)
    design_ms = business_times(rng, int(rng.poisson(DAILY_DESIGNS * share)), opens, closes)
    sales_ms = business_times(rng, int(rng.poisson(DAILY_SALES_ORDERS * share)), opens, closes)
    purchase_ms = business_times(
        rng, int(rng.poisson(DAILY_PURCHASE_ORDERS * share)), opens, closes
    )
    new_designs = reserve_ids(conn, TABLES["design"], len(design_ms))
    all_designs = np.concatenate([world.design_ids, new_designs])
    all_design_ms = np.concatenate([np.zeros(len(world.design_ids), np.int64), design_ms])
    sales = gen.sales_orders(
        rng,
        reserve_ids(conn, TABLES["sales_order"], len(sales_ms)),
        sales_ms,
        world.lookups,
        all_designs,
        all_design_ms,
    )
    purchases = gen.purchase_orders(
        rng, reserve_ids(conn, TABLES["purchase_order"], len(purchase_ms)), purchase_ms,
        world.lookups,
    )  # fmt: skip
    n_money = sales.height + purchases.height
    transactions, payments = gen.transactions_and_payments(
        rng,
        sales,
        purchases,
        reserve_ids(conn, TABLES["transaction"], n_money),
        reserve_ids(conn, TABLES["payment"], n_money),
        world.lookups,
        settle_until_ms=None,
    )
    frames = {
        "design": gen.designs(rng, new_designs, design_ms),
        "sales_order": gen.finish_sales(sales),
        "purchase_order": gen.finish_purchases(purchases),
        "transaction": transactions,
        "payment": payments,
    }
    counts: Counter[str] = Counter()
    for name, frame in frames.items():
        if frame.height:
            copy_frame(conn, TABLES[name], frame)
        counts[f"{name}s"] += frame.height
    return counts, replace(world, design_ids=all_designs)


def _span_ms(days: int | None, hours: int | None, minutes: int | None) -> int:
    given = {
        n: v for n, v in (("days", days), ("hours", hours), ("minutes", minutes)) if v is not None
    }
    if len(given) != 1:
        raise SimulatorInputError(
            f"give exactly one of days, hours or minutes to simulate, got {sorted(given) or 'none'}"
        )
    [(name, value)] = given.items()
    per = {"days": DAY_MS, "hours": DAY_MS // 24, "minutes": MINUTE_MS}[name]
    limit = MAX_DAYS * DAY_MS // per
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise SimulatorInputError(f"{name} must be a whole number from 1 to {limit}, got {value!r}")
    return value * per


def simulate(
    dsn: str,
    *,
    days: int | None = None,
    hours: int | None = None,
    minutes: int | None = None,
    seed: int | None = None,
    allow_future: bool = False,
) -> dict[str, object]:
    """Advance the totesys database at `dsn` by one of `days`, `hours` or `minutes` of
    simulated time (from where the last simulation stopped); return what happened.

    Without `seed`, the randomness is derived from the database's latest timestamp, so
    the same database state always continues the same way. The window stops at the
    database's real clock unless `allow_future`.
    """
    span = _span_ms(days, hours, minutes)
    with connect(dsn, what="totesys", autocommit=True) as conn:
        missing = sorted(set(TABLE_NAMES) - set(existing_objects(conn)))
        if missing:
            raise NotSeededError(
                f"totesys database {conn.info.dbname!r} has no {', '.join(missing)} table(s); "
                "seed it first with `totesys-etl seed`"
            )
        latest = latest_timestamp_ms(conn)
        if latest is None:
            raise NotSeededError(
                f"totesys database {conn.info.dbname!r} is empty; seed it first with "
                "`totesys-etl seed`"
            )
        world = _read_world(conn)
        base_seed = rng_seed(latest if seed is None else seed)
        reached = timeline.read(conn)
        start = (int(day_of(latest)) + 1) * DAY_MS if reached is None else max(reached, latest + 1)
        end = start + span
        if not allow_future:
            end = max(start, min(end, timeline.real_now_ms(conn)))
        totals: Counter[str] = Counter()
        for day in range(int(day_of(start)), int(day_of(end - 1)) + 1 if end > start else 0):
            lo, hi = max(start, day * DAY_MS), min(end, (day + 1) * DAY_MS)
            with conn.transaction():
                if is_weekday(day):
                    # per window: 96 quarter-hours of a day continue differently from one day
                    rng = np.random.default_rng([base_seed, day, lo - day * DAY_MS])
                    fake, _ = make_faker(base_seed * 7_919 + day)
                    if lo <= int(batch_time_ms(np.array([day]))[0]) < hi:
                        totals["payments_paid"] += _settle_due_payments(conn, day)
                    edits = apply_lookup_edits(conn, day, rng, fake, world, window=(lo, hi))
                    totals["lookup_edits"] += edits
                    counts, world = _new_orders(conn, (lo, hi), rng, world)
                    totals.update(counts)
                    totals["business_days"] += _business_share(lo, hi) > 0
                timeline.write(conn, from_ms(hi))
        if end == start and reached is None:
            with conn.transaction():
                timeline.write(conn, from_ms(start))
    keys = (
        *("business_days", "designs", "sales_orders", "purchase_orders"),
        *("transactions", "payments", "payments_paid", "lookup_edits"),
    )
    return {
        "days": (end - start) // DAY_MS,
        "minutes": (end - start) // MINUTE_MS,
        **{key: int(totals[key]) for key in keys},
        "from": from_ms(start).isoformat(timespec="milliseconds"),
        "until": from_ms(end).isoformat(timespec="milliseconds"),
        "stopped_at_real_clock": end < start + span,
    }
