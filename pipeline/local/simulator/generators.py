"""Vectorised generators for the tables that grow: design, sales_order, purchase_order,
transaction and payment. Each takes ids and creation times (epoch ms) and returns a Polars
frame with exactly the catalog's columns, so seed and simulate share one definition of
what a realistic row looks like.

Calibration (real snapshot, Nov 2024): units_sold 1,000-100,000 at 2.00-4.00; purchase
quantities 1-999 at 1.00-999.99; currencies evenly GBP/USD/EUR; delivery agreed 0-7 days
out (0.7% long-lead orders up to 650 days); payment agreed 0-6 days out; one transaction and
one payment per order, created with the order. A payment is paid by the morning batch of
its agreed payment date when that is a weekday after the order's day; payments due on a
weekend or on the order's own day stay unpaid, as in the real data (61% paid overall).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.local.simulator.clock import DAY_MS, batch_time_ms, is_weekday
from pipeline.local.simulator.reference import DIRECTORIES, MATERIALS

ALPHANUMERIC_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
ALPHANUMERIC_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
LONG_LEAD_SHARE = 0.007
LONG_LEAD_DAYS = (8, 650)
PAYMENT_TERMS_DAYS = 6
PAYMENT_TYPES = ("SALES_RECEIPT", "PURCHASE_PAYMENT")  # the types orders are paid with


@dataclass(frozen=True)
class Lookups:
    """Ids the growing tables point at (all sorted ascending)."""

    staff: np.ndarray
    counterparty: np.ndarray
    address: np.ndarray
    currency: np.ndarray
    sales_receipt: int  # payment_type_id of SALES_RECEIPT
    purchase_payment: int  # payment_type_id of PURCHASE_PAYMENT


def random_codes(rng: np.random.Generator, n: int, length: int, alphabet: str) -> np.ndarray:
    """`n` random strings of `length` characters, built as one numpy unicode array."""
    points = np.frombuffer(alphabet.encode("utf-32-le"), dtype=np.uint32)
    chars = points[rng.integers(0, len(points), size=(n, length))]
    return np.ascontiguousarray(chars).view(f"<U{length}").ravel()


def _timestamps(ms: np.ndarray) -> pl.Series:
    return pl.Series(ms, dtype=pl.Int64).cast(pl.Datetime("ms"))


def _iso_dates(days: np.ndarray) -> pl.Series:
    """Epoch day numbers -> 'YYYY-MM-DD' text, the source's date format."""
    return pl.Series(days.astype(np.int32)).cast(pl.Date).cast(pl.String)


def _pick(rng: np.random.Generator, ids: np.ndarray, n: int) -> np.ndarray:
    return ids[rng.integers(0, len(ids), size=n)].astype(np.int32)


def designs(rng: np.random.Generator, ids: np.ndarray, created_ms: np.ndarray) -> pl.DataFrame:
    """Designs named after materials, with files like `steel-20230412-x9q1.json`."""
    n = len(ids)
    names = np.array(MATERIALS)[rng.integers(0, len(MATERIALS), n)]
    drawn_days = created_ms // DAY_MS - rng.integers(30, 800, n)
    stamp = pl.Series(drawn_days.astype(np.int32)).cast(pl.Date).dt.strftime("%Y%m%d")
    frame = pl.DataFrame(
        {
            "design_id": ids.astype(np.int32),
            "design_name": names,
            "file_location": np.array(DIRECTORIES)[rng.integers(0, len(DIRECTORIES), n)],
            "stamp": stamp,
            "suffix": random_codes(rng, n, 4, ALPHANUMERIC_LOWER),
            "created_at": _timestamps(created_ms),
        }
    )
    return frame.select(
        "design_id",
        "design_name",
        "file_location",
        pl.concat_str(pl.col("design_name").str.to_lowercase(), "stamp", "suffix", separator="-")
        .add(".json")
        .alias("file_name"),
        "created_at",
        pl.col("created_at").alias("last_updated"),
    )


def _agreed_days(rng: np.random.Generator, created_ms: np.ndarray) -> tuple[np.ndarray, ...]:
    """(delivery day, payment day) as epoch days: mostly within a week of the order."""
    n = len(created_ms)
    day = created_ms // DAY_MS
    delivery = np.rint(rng.random(n) * 7).astype(np.int64)
    long_lead = rng.random(n) < LONG_LEAD_SHARE
    delivery[long_lead] = rng.integers(*LONG_LEAD_DAYS, size=int(long_lead.sum()), endpoint=True)
    # rint of a uniform: the first and last day get half a share, as in the real data
    # (payment due 0 days out: 7% of orders, 1-5 days: 16-17% each, 6 days: 10%).
    payment = np.rint(rng.random(n) * PAYMENT_TERMS_DAYS).astype(np.int64)
    return day + delivery, day + payment


def sales_orders(
    rng: np.random.Generator,
    ids: np.ndarray,
    created_ms: np.ndarray,
    lookups: Lookups,
    design_ids: np.ndarray,
    design_created_ms: np.ndarray,
) -> pl.DataFrame:
    """Sales of existing designs: each order's design was created before the order."""
    n = len(ids)
    available = np.searchsorted(design_created_ms, created_ms, side="right")
    if n and available.min() < 1:
        raise ValueError("a sales order would precede every design; create designs first")
    design = design_ids[(rng.random(n) * available).astype(np.int64)].astype(np.int32)
    delivery, payment = _agreed_days(rng, created_ms)
    stamp = _timestamps(created_ms)
    return pl.DataFrame(
        {
            "sales_order_id": ids.astype(np.int32),
            "design_id": design,
            "staff_id": _pick(rng, lookups.staff, n),
            "counterparty_id": _pick(rng, lookups.counterparty, n),
            "units_sold": rng.integers(1_000, 100_000, n, endpoint=True).astype(np.int32),
            "unit_price_cents": rng.integers(200, 400, n, endpoint=True),
            "currency_id": _pick(rng, lookups.currency, n),
            "agreed_delivery_date": _iso_dates(delivery),
            "agreed_payment_date": _iso_dates(payment),
            "agreed_delivery_location_id": _pick(rng, lookups.address, n),
            "created_at": stamp,
            "last_updated": stamp,
        }
    )


def purchase_orders(
    rng: np.random.Generator, ids: np.ndarray, created_ms: np.ndarray, lookups: Lookups
) -> pl.DataFrame:
    """Purchases of raw materials identified by 7-character item codes."""
    n = len(ids)
    delivery, payment = _agreed_days(rng, created_ms)
    stamp = _timestamps(created_ms)
    return pl.DataFrame(
        {
            "purchase_order_id": ids.astype(np.int32),
            "staff_id": _pick(rng, lookups.staff, n),
            "counterparty_id": _pick(rng, lookups.counterparty, n),
            "item_code": random_codes(rng, n, 7, ALPHANUMERIC_UPPER),
            "item_quantity": rng.integers(1, 999, n, endpoint=True).astype(np.int32),
            "item_unit_price_cents": rng.integers(100, 99_999, n, endpoint=True),
            "currency_id": _pick(rng, lookups.currency, n),
            "agreed_delivery_date": _iso_dates(delivery),
            "agreed_payment_date": _iso_dates(payment),
            "agreed_delivery_location_id": _pick(rng, lookups.address, n),
            "created_at": stamp,
            "last_updated": stamp,
        }
    )


def _as_price(frame: pl.DataFrame, cents: str, name: str) -> pl.DataFrame:
    return frame.with_columns((pl.col(cents) / 100).alias(name)).drop(cents)


def finish_sales(frame: pl.DataFrame) -> pl.DataFrame:
    """Replace integer cents by the `unit_price` column (written with 2 decimals)."""
    return _as_price(frame, "unit_price_cents", "unit_price")


def finish_purchases(frame: pl.DataFrame) -> pl.DataFrame:
    return _as_price(frame, "item_unit_price_cents", "item_unit_price")


def _order_events(sales: pl.DataFrame, purchases: pl.DataFrame) -> pl.DataFrame:
    """Sales and purchases as one stream of money events, in creation order."""
    common = ["counterparty_id", "currency_id", "agreed_payment_date", "created_at"]
    sale = sales.select(
        pl.lit("SALE").alias("transaction_type"),
        pl.col("sales_order_id").alias("order_id"),
        (pl.col("units_sold").cast(pl.Int64) * pl.col("unit_price_cents")).alias("amount"),
        *common,
    )
    purchase = purchases.select(
        pl.lit("PURCHASE").alias("transaction_type"),
        pl.col("purchase_order_id").alias("order_id"),
        (pl.col("item_quantity").cast(pl.Int64) * pl.col("item_unit_price_cents")).alias("amount"),
        *common,
    )
    return pl.concat([sale, purchase]).sort(["created_at", "transaction_type", "order_id"])


def transactions_and_payments(
    rng: np.random.Generator,
    sales: pl.DataFrame,
    purchases: pl.DataFrame,
    transaction_ids: np.ndarray,
    payment_ids: np.ndarray,
    lookups: Lookups,
    settle_until_ms: int | None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One transaction and one payment per order (amount = quantity x price, in cents).

    With `settle_until_ms`, the payments whose morning batch (see the module docstring) ran
    by that moment are already paid, stamped with that batch's moment (the seed's history);
    without it, all start unpaid (simulate pays them in its own morning batches).
    """
    events = _order_events(sales, purchases).with_columns(
        pl.Series("transaction_id", transaction_ids.astype(np.int32)),
        pl.Series("payment_id", payment_ids.astype(np.int32)),
    )
    n = events.height
    created = events["created_at"].cast(pl.Int64).to_numpy()
    paid = np.zeros(n, dtype=bool)
    updated = created
    if settle_until_ms is not None and n:
        due = events["agreed_payment_date"].str.to_date().cast(pl.Int32).to_numpy()
        due = due.astype(np.int64)
        paid_at = batch_time_ms(due)
        paid = is_weekday(due) & (due > created // DAY_MS) & (paid_at <= settle_until_ms)
        updated = np.where(paid, paid_at, created)
    is_sale = pl.col("transaction_type") == "SALE"
    transactions = events.select(
        "transaction_id",
        "transaction_type",
        pl.when(is_sale).then("order_id").alias("sales_order_id"),
        pl.when(~is_sale).then("order_id").alias("purchase_order_id"),
        "created_at",
        pl.col("created_at").alias("last_updated"),
    )
    payments = events.select(
        "payment_id",
        "transaction_id",
        "counterparty_id",
        (pl.col("amount") / 100).alias("payment_amount"),
        "currency_id",
        pl.when(is_sale)
        .then(lookups.sales_receipt)
        .otherwise(lookups.purchase_payment)
        .cast(pl.Int32)
        .alias("payment_type_id"),
        pl.Series("paid", paid),
        pl.col("agreed_payment_date").alias("payment_date"),
        pl.Series("company_ac_number", _account_numbers(rng, n)),
        pl.Series("counterparty_ac_number", _account_numbers(rng, n)),
        "created_at",
        _timestamps(updated).alias("last_updated"),
    )
    return transactions, payments


def _account_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """8-digit bank account numbers."""
    return rng.integers(10_000_000, 99_999_999, n, endpoint=True).astype(np.int32)
