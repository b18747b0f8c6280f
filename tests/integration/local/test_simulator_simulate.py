"""`simulate` against a real PostgreSQL: time only moves forward, changes bump
`last_updated`, weekends are quiet, results are reproducible."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from psycopg import sql

from pipeline.catalog import TABLE_NAMES, TABLES
from pipeline.errors import NotSeededError, SimulatorInputError
from pipeline.local.simulator import clock
from pipeline.local.simulator import seed as seed_module
from pipeline.local.simulator.reference import make_faker
from pipeline.local.simulator.seed import seed
from pipeline.local.simulator.simulate import (
    _read_world,
    apply_lookup_edits,
    latest_timestamp_ms,
    simulate,
)
from tests.integration.local.test_simulator_seed import table_checksums

pytestmark = pytest.mark.postgres


def _latest(dsn: str) -> datetime:
    with psycopg.connect(dsn) as conn:
        latest = latest_timestamp_ms(conn)
    assert latest is not None
    return clock.from_ms(latest)


@pytest.fixture
def seeded(pg_dsn: str) -> str:
    seed(pg_dsn, scale=0.05, seed=21)
    return pg_dsn


def _audit_columns(dsn: str) -> dict[tuple[str, int], tuple[datetime, datetime]]:
    """(table, id) -> (created_at, last_updated) for every row of every totesys table."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for name in TABLE_NAMES:
            query = sql.SQL("SELECT {pk}, created_at, last_updated FROM {t}").format(
                pk=sql.Identifier(TABLES[name].primary_key), t=sql.Identifier(name)
            )
            for pk, created, updated in conn.execute(query):
                out[name, pk] = (created, updated)
    return out


def test_simulate_only_moves_time_forward(seeded: str) -> None:
    before, old = _latest(seeded), _audit_columns(seeded)
    summary = simulate(seeded, days=14, seed=5)
    new = _audit_columns(seeded)
    assert _latest(seeded) > before
    changed = 0
    for key, (created, updated) in new.items():
        assert updated >= created, key
        if key in old:
            assert created == old[key][0], key  # history is never rewritten
            if updated != old[key][1]:
                assert updated > before, key  # changes happen after the latest moment
                changed += 1
        else:
            assert created > before, key  # new rows are newer than anything before
            changed += updated > created  # a new payment already paid by a later batch
    assert changed == summary["payments_paid"] + summary["lookup_edits"]
    added = Counter(table for table, _ in new.keys() - old.keys())
    assert added == {
        t: summary[f"{t}s"]
        for t in ("design", "sales_order", "purchase_order", "transaction", "payment")
        if summary[f"{t}s"]
    }


def test_simulate_adds_weekday_business_at_the_real_daily_rate(seeded: str) -> None:
    before = _latest(seeded)
    with psycopg.connect(seeded) as conn:
        max_ids = conn.execute(
            "SELECT (SELECT max(sales_order_id) FROM sales_order), "
            "(SELECT max(payment_id) FROM payment)"
        ).fetchone()
    assert max_ids is not None
    summary = simulate(seeded, days=14, seed=5)
    assert summary["days"] == 14 and summary["business_days"] == 10
    assert 10 * 21 * 0.7 < summary["sales_orders"] < 10 * 21 * 1.3
    assert 10 * 9 * 0.5 < summary["purchase_orders"] < 10 * 9 * 1.5
    assert summary["transactions"] == summary["payments"]
    assert summary["payments"] == summary["sales_orders"] + summary["purchase_orders"]
    with psycopg.connect(seeded) as conn:
        new = conn.execute(
            "SELECT count(*), min(sales_order_id), "
            "count(*) FILTER (WHERE extract(isodow FROM created_at) > 5 "
            "  OR created_at::time < '08:00' OR created_at::time >= '19:00') "
            "FROM sales_order WHERE created_at > %s",
            (before,),
        ).fetchone()
        assert new is not None
        assert new[0] == summary["sales_orders"]
        assert new[1] > max_ids[0]  # fresh ids from the sequence
        assert new[2] == 0  # weekdays, office hours only
        unbalanced = conn.execute(
            "SELECT count(*) FROM payment p JOIN transaction t USING (transaction_id) "
            "LEFT JOIN sales_order s USING (sales_order_id) "
            "LEFT JOIN purchase_order o USING (purchase_order_id) "
            "WHERE p.payment_id > %s AND (p.payment_amount <> "
            "coalesce(s.units_sold * s.unit_price, o.item_quantity * o.item_unit_price) "
            "OR p.created_at <> coalesce(s.created_at, o.created_at))",
            (max_ids[1],),
        ).fetchone()
        assert unbalanced == (0,)


def test_morning_batch_pays_due_payments_at_simulated_time(seeded: str) -> None:
    before = _latest(seeded)
    with psycopg.connect(seeded) as conn:
        due = conn.execute(
            "SELECT payment_id, payment_date FROM payment WHERE NOT paid ORDER BY payment_id"
        ).fetchall()
    summary = simulate(seeded, days=10, seed=6)
    assert summary["payments_paid"] > 0
    with psycopg.connect(seeded) as conn:
        flipped = conn.execute(
            "SELECT payment_id, payment_date, last_updated, created_at FROM payment "
            "WHERE paid AND last_updated > %s",
            (before,),
        ).fetchall()
        still_due = conn.execute(
            "SELECT count(*) FROM payment WHERE NOT paid "
            "AND payment_date < (SELECT max(created_at)::date FROM payment)::text "
            "AND extract(isodow FROM payment_date::date) < 6 "
            "AND payment_date::date > created_at::date"
        ).fetchone()
        per_batch = conn.execute(
            "SELECT count(DISTINCT last_updated) = count(DISTINCT last_updated::date) "
            "FROM payment WHERE paid AND last_updated > %s",
            (before,),
        ).fetchone()
    assert len(flipped) == summary["payments_paid"]
    old_unpaid = {pid for pid, _ in due}
    assert any(pid in old_unpaid for pid, *_ in flipped)  # seeded payments got paid too
    for pid, payment_date, last_updated, created_at in flipped:
        assert last_updated.time().strftime("%H:%M") == "07:55", pid  # batch time, not now()
        assert last_updated.date().isoformat() == payment_date  # paid on the due date
        assert last_updated.date() > created_at.date()
        assert last_updated.weekday() < 5
    assert per_batch == (True,)  # one moment per morning batch, as the real job stamps them
    assert still_due == (0,)


def test_same_seed_same_continuation(make_database: Callable[[str], str]) -> None:
    a, b = make_database("a"), make_database("b")
    for dsn in (a, b):
        seed(dsn, scale=0.02, seed=8)
        simulate(dsn, days=4, seed=3)
        simulate(dsn, days=3)  # default seed: derived from the data, so also reproducible
    assert table_checksums(a) == table_checksums(b)


def test_lookup_edits_bump_last_updated_to_the_simulated_moment(seeded: str) -> None:
    day = clock.day_of(clock.to_ms(_latest(seeded))) + 1
    while not clock.is_weekday(day):  # lookup edits happen in business hours
        day += 1
    with psycopg.connect(seeded, autocommit=True) as conn:
        world = _read_world(conn)
        fake, _ = make_faker(1)
        chances = dict.fromkeys(("staff", "department", "address", "counterparty"), 1.0)
        edits = apply_lookup_edits(conn, day, np.random.default_rng(1), fake, world, chances)
        rows = conn.execute(
            "SELECT 'staff', last_updated FROM staff WHERE last_updated > created_at UNION ALL "
            "SELECT 'department', last_updated FROM department WHERE last_updated > created_at "
            "UNION ALL SELECT 'address', last_updated FROM address "
            "WHERE last_updated > created_at UNION ALL SELECT 'counterparty', last_updated "
            "FROM counterparty WHERE last_updated > created_at"
        ).fetchall()
    assert edits == 4
    assert sorted(r[0] for r in rows) == ["address", "counterparty", "department", "staff"]
    for _, moment in rows:
        assert moment.date() == clock.day_to_date(day) and 8 <= moment.hour < 19


def test_weekend_only_simulation_changes_nothing(pg_dsn: str) -> None:
    seed(pg_dsn, scale=0.02, seed=2)
    next_day = clock.day_to_date(clock.day_of(clock.to_ms(_latest(pg_dsn))) + 1)
    if next_day.weekday() < 5:  # run up to Friday, so the next simulated day is Saturday
        simulate(pg_dsn, days=5 - next_day.weekday(), seed=1)
    before = table_checksums(pg_dsn)
    summary = simulate(pg_dsn, days=2, seed=1)
    assert summary["business_days"] == 0 and summary["sales_orders"] == 0
    assert table_checksums(pg_dsn) == before


def test_simulate_refuses_bad_days_and_unseeded_databases(pg_dsn: str) -> None:
    for days in (0, -3, 1.5, True):
        with pytest.raises(SimulatorInputError, match="days"):
            simulate(pg_dsn, days=days)  # type: ignore[arg-type]
    with pytest.raises(SimulatorInputError, match="exactly one of"):
        simulate(pg_dsn, days=1, minutes=15)
    with pytest.raises(SimulatorInputError, match="exactly one of"):
        simulate(pg_dsn)
    with pytest.raises(NotSeededError, match="seed it first"):
        simulate(pg_dsn, days=1)


def _counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            t: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
            ).fetchone()[0]  # type: ignore[index]
            for t in ("sales_order", "payment")
        }


def test_quarter_hour_steps_cross_a_weekend_and_produce_mondays_business(seeded: str) -> None:
    """Every 15-minute step advances the clock, whether or not it writes anything: the
    steps from Friday evening reach Monday, whose morning settles payments at 07:55 and
    whose business hours bring orders."""
    first = simulate(seeded, minutes=15, seed=1)  # starts the day after the latest row
    start = datetime.fromisoformat(str(first["from"]))
    to_friday = (4 - start.weekday()) % 7 * 24 * 60 + 18 * 60  # minutes to Friday 18:00
    simulate(seeded, minutes=to_friday - 15, seed=1)
    steps = [simulate(seeded, minutes=15, seed=1) for _ in range(4 * (6 + 24 + 24 + 10))]
    assert datetime.fromisoformat(str(steps[0]["from"])).strftime("%a %H:%M") == "Fri 18:00"
    assert datetime.fromisoformat(str(steps[-1]["until"])).strftime("%a %H:%M") == "Mon 10:00"
    for before, after in itertools.pairwise(steps):
        assert after["from"] == before["until"] and after["minutes"] == 15  # time moves on
    at = {datetime.fromisoformat(str(s["from"])).strftime("%a %H:%M"): s for s in steps}

    def quiet(key: str) -> bool:  # nights and the weekend (but the 07:55 batch)
        day, hour = key.split()[0], int(key.split()[1][:2])
        return (
            day in {"Sat", "Sun"}
            or (day, hour >= 19) == ("Fri", True)
            or (day == "Mon" and hour < 8 and key != "Mon 07:45")
        )

    assert all(s["sales_orders"] == s["payments_paid"] == 0 for k, s in at.items() if quiet(k))
    assert at["Mon 07:45"]["payments_paid"] > 0  # the 07:55 settlement batch
    monday = [s for key, s in at.items() if key.startswith(("Mon 08", "Mon 09"))]
    assert sum(int(s["sales_orders"]) for s in monday) > 0


def _utc_now() -> datetime:
    """Naive UTC, as the source's timestamps are."""
    return datetime.now(UTC).replace(tzinfo=None)


def test_simulated_time_stops_at_the_real_clock_unless_asked(pg_dsn: str) -> None:
    now = _utc_now()
    seed(pg_dsn, scale=0.02, seed=3, start=now - seed_module.HISTORY - timedelta(days=2))
    summary = simulate(pg_dsn, days=5, seed=1)
    assert summary["stopped_at_real_clock"] and summary["days"] < 5
    reached = datetime.fromisoformat(str(summary["until"]))
    assert abs(reached - _utc_now()) < timedelta(minutes=5)
    assert _latest(pg_dsn) <= reached
    idle = simulate(pg_dsn, minutes=15)
    assert idle["minutes"] <= 1 and idle["sales_orders"] == 0
    future = simulate(pg_dsn, days=3, allow_future=True)
    assert future["days"] == 3 and not future["stopped_at_real_clock"]
