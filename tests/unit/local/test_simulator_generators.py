"""The simulator's generators without a database: calendar, determinism, invariants and
calibration against the real snapshot."""

from __future__ import annotations

import math
import os
from datetime import date, datetime

import numpy as np
import polars as pl
import pytest

from pipeline.catalog import TABLES
from pipeline.errors import SimulatorInputError
from pipeline.local.simulator import clock
from pipeline.local.simulator import generators as gen
from pipeline.local.simulator.seed import DEFAULT_START, generate_history

SNAPSHOT_ROWS = {
    "address": 30,
    "counterparty": 20,
    "currency": 3,
    "department": 8,
    "design": 473,
    "payment": 15836,
    "payment_type": 4,
    "purchase_order": 4649,
    "sales_order": 11187,
    "staff": 20,
    "transaction": 15836,
}
LOOKUPS = ("address", "counterparty", "currency", "department", "staff", "payment_type")
GROWING = ("design", "sales_order", "purchase_order", "transaction", "payment")


@pytest.fixture(scope="module")
def history() -> dict[str, pl.DataFrame]:
    return generate_history(scale=1.0, seed=42, start=DEFAULT_START)


def _ms(text: str) -> int:
    return clock.to_ms(datetime.fromisoformat(text))


def test_weekday_arithmetic_matches_the_calendar() -> None:
    days = np.arange(clock.day_of(_ms("2024-01-01T00:00")), clock.day_of(_ms("2024-01-15")))
    expected = [clock.day_to_date(d).weekday() < 5 for d in days]
    assert list(clock.is_weekday(days)) == expected


def test_each_morning_batch_has_one_moment_between_07_55_10_915_and_12_380() -> None:
    days = np.arange(clock.day_of(_ms("2024-01-01T00:00")), clock.day_of(_ms("2025-01-01")))
    moments = [clock.from_ms(t) for t in clock.batch_time_ms(days)]
    assert all(m.date() == clock.day_to_date(d) for m, d in zip(moments, days, strict=True))
    times = {m.time().isoformat(timespec="milliseconds") for m in moments}
    assert min(times) >= "07:55:10.915" and max(times) <= "07:55:12.380"
    assert len(times) > 200  # days differ, as in the real data


def test_business_times_are_sorted_weekday_office_hours() -> None:
    rng = np.random.default_rng(0)
    times = clock.business_times(rng, 5_000, _ms("2024-11-13T17:30"), _ms("2024-11-20T09:00"))
    assert len(times) == 5_000 and np.all(np.diff(times) >= 0)
    moments = [clock.from_ms(t) for t in times]
    assert all(m.weekday() < 5 and 8 <= m.hour < 19 for m in moments)
    assert min(moments) >= datetime(2024, 11, 13, 17, 30)
    assert max(moments) < datetime(2024, 11, 20, 9, 0)
    assert {m.date() for m in moments} == {
        date(2024, 11, d) for d in (13, 14, 15, 18, 19, 20)
    }  # no weekend


def test_scale_one_counts_match_the_snapshot_within_ten_percent(history) -> None:
    for table, expected in SNAPSHOT_ROWS.items():
        assert abs(history[table].height - expected) <= 0.1 * expected, table


@pytest.mark.parametrize("scale", [0.1, 3.7])
def test_lookups_stay_fixed_and_growing_tables_scale(scale: float) -> None:
    frames = generate_history(scale=scale, seed=1, start=DEFAULT_START)
    for table in LOOKUPS:
        assert frames[table].height == SNAPSHOT_ROWS[table], table
    for table in GROWING:
        assert frames[table].height == pytest.approx(SNAPSHOT_ROWS[table] * scale, rel=0.03)


def test_frames_have_exactly_the_catalog_columns(history) -> None:
    for name, frame in history.items():
        assert set(frame.columns) == set(TABLES[name].column_names), name


def test_same_seed_same_history_and_other_seed_differs() -> None:
    first = generate_history(scale=0.2, seed=9, start=DEFAULT_START)
    again = generate_history(scale=0.2, seed=9, start=DEFAULT_START)
    other = generate_history(scale=0.2, seed=10, start=DEFAULT_START)
    assert all(first[t].equals(again[t]) for t in first)
    assert not first["sales_order"].equals(other["sales_order"])
    assert not first["staff"].equals(other["staff"])


@pytest.mark.parametrize("scale", [0, -1, math.nan, math.inf, 1e6, "2", True])
def test_bad_scale_is_a_typed_error(scale: object) -> None:
    with pytest.raises(SimulatorInputError, match="scale"):
        generate_history(scale=scale, seed=1, start=DEFAULT_START)  # type: ignore[arg-type]


@pytest.mark.parametrize("start", ["2022-11-03", datetime(1, 1, 1), None])
def test_bad_start_is_a_typed_error(start: object) -> None:
    with pytest.raises(SimulatorInputError, match="start"):
        generate_history(scale=0.01, seed=1, start=start)  # type: ignore[arg-type]


def test_negative_and_huge_seeds_are_accepted_and_distinct() -> None:
    a = generate_history(scale=0.01, seed=-1, start=DEFAULT_START)
    b = generate_history(scale=0.01, seed=2**64 + 5, start=DEFAULT_START)
    assert not a["sales_order"].equals(b["sales_order"])


def test_history_can_start_on_a_weekend_and_still_trades_on_weekdays() -> None:
    frames = generate_history(scale=0.05, seed=1, start=datetime(2030, 6, 1, 12, 0))  # Sat
    created = frames["sales_order"]["created_at"]
    assert created.min() >= datetime(2030, 6, 3, 8) and (created.dt.weekday() <= 5).all()


def test_every_payment_is_its_order_amount_in_exact_cents(history) -> None:
    sales = history["sales_order"].select(
        "sales_order_id", (pl.col("unit_price") * 100).round().cast(pl.Int64).alias("cents"),
        "units_sold", "counterparty_id", "currency_id", "agreed_payment_date", "created_at",
    )  # fmt: skip
    joined = (
        history["payment"]
        .join(history["transaction"], on="transaction_id", suffix="_t")
        .join(sales, on="sales_order_id", suffix="_o")
    )
    assert joined.height == history["sales_order"].height
    amount_cents = (joined["payment_amount"] * 100).round().cast(pl.Int64)
    assert (amount_cents == joined["units_sold"].cast(pl.Int64) * joined["cents"]).all()
    assert (joined["counterparty_id"] == joined["counterparty_id_o"]).all()
    assert (joined["currency_id"] == joined["currency_id_o"]).all()
    assert (joined["payment_date"] == joined["agreed_payment_date"]).all()
    assert (joined["created_at"] == joined["created_at_o"]).all()
    assert (joined["created_at_t"] == joined["created_at_o"]).all()
    assert set(joined["payment_type_id"]) == {1}  # SALES_RECEIPT


def test_one_transaction_and_payment_per_order(history) -> None:
    tx = history["transaction"]
    sales_ids = tx["sales_order_id"].drop_nulls()
    purchase_ids = tx["purchase_order_id"].drop_nulls()
    assert sales_ids.sort().to_list() == history["sales_order"]["sales_order_id"].to_list()
    assert purchase_ids.sort().to_list() == (
        history["purchase_order"]["purchase_order_id"].to_list()
    )
    assert history["payment"]["transaction_id"].is_unique().all()
    assert history["payment"].height == tx.height
    kinds = tx.select(
        ((pl.col("transaction_type") == "SALE") == pl.col("sales_order_id").is_not_null()).all()
    ).item()
    assert kinds


def test_timestamps_are_consistent_and_in_business_hours(history) -> None:
    for name, frame in history.items():
        assert (frame["last_updated"] >= frame["created_at"]).all(), name
    for name in ("sales_order", "purchase_order"):
        created = history[name]["created_at"]
        assert (created.dt.weekday() <= 5).all() and created.dt.hour().is_between(8, 18).all()
        assert created.min() > DEFAULT_START
        assert created.max() < datetime(2024, 11, 16)


def test_paid_payments_were_settled_by_the_morning_batch_of_their_due_date(history) -> None:
    """As in the real data: paid exactly on the due date if that is a weekday after the
    order's day, all of a day's payments stamped with the batch's one moment."""
    pay = history["payment"].with_columns(
        due=pl.col("payment_date").str.to_date(), created=pl.col("created_at").dt.date()
    )
    payable = (pl.col("due").dt.weekday() <= 5) & (pl.col("due") > pl.col("created"))
    settled_by_end = payable & (pl.col("due") < date(2024, 11, 15))
    assert pay.filter(settled_by_end)["paid"].all()
    assert not pay.filter(~payable)["paid"].any()
    paid = pay.filter(pl.col("paid"))
    flip = paid["last_updated"]
    assert (flip.dt.hour() == 7).all() and (flip.dt.minute() == 55).all()
    assert (flip.dt.date() == paid["due"]).all()
    per_day = paid.group_by("due").agg(pl.col("last_updated").n_unique())
    assert (per_day["last_updated"] == 1).all()
    unpaid = pay.filter(~pl.col("paid"))
    assert (unpaid["last_updated"] == unpaid["created_at"]).all()
    assert 0.55 < pay["paid"].mean() < 0.65  # the snapshot: 61%


def test_agreed_dates_are_iso_text_after_the_order(history) -> None:
    for name in ("sales_order", "purchase_order"):
        frame = history[name]
        created = frame["created_at"].dt.date()
        delivery = (frame["agreed_delivery_date"].str.to_date() - created).dt.total_days()
        payment = (frame["agreed_payment_date"].str.to_date() - created).dt.total_days()
        assert delivery.min() >= 0 and delivery.max() <= 650
        assert payment.min() >= 0 and payment.max() <= 6
        assert frame["agreed_payment_date"].str.contains(r"^\d{4}-\d{2}-\d{2}$").all()
        assert 0.98 < (delivery <= 7).mean() < 1  # long-lead orders exist but are rare


def test_text_values_look_like_the_real_system(history) -> None:
    codes = history["purchase_order"]["item_code"]
    assert codes.str.contains(r"^[A-Z0-9]{7}$").all()
    design = history["design"]
    pattern = r"^[a-z]+-\d{8}-[a-z0-9]{4}\.json$"
    assert design["file_name"].str.contains(pattern).all()
    assert (
        design["file_name"].str.split("-").list.first() == design["design_name"].str.to_lowercase()
    ).all()
    staff = history["staff"]
    assert staff["email_address"].str.contains(r"^[a-z]+\.[a-z]+@terrifictotes\.com$").all()
    assert history["currency"]["currency_code"].to_list() == ["GBP", "USD", "EUR"]
    accounts = history["payment"]["company_ac_number"]
    assert accounts.min() >= 10_000_000 and accounts.max() <= 99_999_999


def test_random_codes_use_the_alphabet() -> None:
    codes = gen.random_codes(np.random.default_rng(1), 1000, 5, "AB")
    assert len(codes) == 1000 and {len(c) for c in codes} == {5}
    assert set("".join(codes)) == {"A", "B"}


def test_distributions_are_calibrated_on_the_snapshot(history, snapshot_dir: str) -> None:
    real = {
        t: pl.read_parquet(os.path.join(snapshot_dir, f"{t}.parquet"))
        for t in ("sales_order", "purchase_order", "payment")
    }
    for table, column in [
        ("sales_order", "units_sold"),
        ("sales_order", "unit_price"),
        ("purchase_order", "item_quantity"),
        ("purchase_order", "item_unit_price"),
        ("payment", "payment_amount"),
    ]:
        ours, theirs = history[table][column], real[table][column]
        assert ours.mean() == pytest.approx(theirs.mean(), rel=0.05), column
        spread = theirs.max() - theirs.min()
        for q in (0.05, 0.5, 0.95):
            assert ours.quantile(q) == pytest.approx(theirs.quantile(q), abs=0.05 * spread), column
    for table in ("sales_order", "payment"):
        ours = history[table]["created_at"].dt.hour().value_counts(normalize=True)
        theirs = real[table]["created_at"].dt.hour().value_counts(normalize=True)
        assert set(ours["created_at"]) == set(theirs["created_at"]) == set(range(8, 19))
    assert history["payment"]["paid"].mean() == pytest.approx(
        real["payment"]["paid"].mean(), abs=0.03
    )
    currency_share = history["sales_order"]["currency_id"].value_counts(normalize=True)
    assert currency_share["proportion"].min() > 0.3
