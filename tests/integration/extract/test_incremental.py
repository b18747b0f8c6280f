"""Extract against a real PostgreSQL: the cursor, overlap window, types, backfill, large tables.

Reliability scenarios R1, R2, R3, R4, R14, R20 of docs/RELIABILITY.md.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import psycopg
import pyarrow.parquet as pq
import pytest

import pipeline.extract.parts as extract_module
from pipeline.catalog import TABLES
from pipeline.extract import extract_table
from pipeline.extract import source as source_module
from pipeline.lake import Lake
from pipeline.settings import Settings
from tests.integration.extract.helpers import (
    add_currencies,
    add_sales_orders,
    all_versions,
    batch_versions,
    lake_url,
    mark,
    run,
    source,
    source_versions,
)

__all__ = ["lake_url", "source"]  # fixtures


def test_first_run_is_full_and_typed_exactly_as_the_catalog(source: str, lake_url: str) -> None:
    """R4: ms timestamps (.000, .999, around DST changes) and numerics round-trip exactly."""
    stamps = [
        "2024-03-31 00:59:59.999",  # UK clocks go forward at 01:00 UTC
        "2024-03-31 01:00:00.000",
        "2024-10-27 00:59:59.999",  # and back
        "2024-10-27 01:00:00.001",
        "2024-11-03 14:20:52.186",
    ]
    with psycopg.connect(source, autocommit=True) as conn:
        for i, stamp in enumerate(stamps):
            conn.execute(
                "INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, "
                "unit_price, currency_id, agreed_delivery_date, agreed_payment_date, "
                "agreed_delivery_location_id, created_at, last_updated) "
                "VALUES (1, 1, 1, %s, %s, 1, '2024-11-10', '2024-11-12', 1, %s, %s)",
                (i, Decimal("99999999.99") if i == 0 else Decimal("0.01"), stamp, stamp),
            )
    result = run(source, lake_url, "r1", table="sales_order")

    assert (result.status, result.mode, result.rows) == ("ok", "full", 5)
    assert result.to_dict()["cursor"] == {
        "from": "2024-03-31T00:59:59.999",
        "to": "2024-11-03T14:20:52.186",
    }
    lake = Lake(lake_url)
    [part] = result.files
    assert part.startswith("sales_order/date=") and part.endswith("/r1/part-00000.parquet")
    data = pq.read_table(lake.path(part), filesystem=lake.fs)
    assert data.schema.equals(TABLES["sales_order"].arrow_schema)
    assert (
        pq.ParquetFile(lake.path(part), filesystem=lake.fs)
        .metadata.row_group(0)
        .column(0)
        .compression
        == "ZSTD"
    )
    got = [s.isoformat(timespec="milliseconds") for s in data.column("last_updated").to_pylist()]
    assert got == [s.replace(" ", "T") for s in stamps]
    assert data.column("unit_price").to_pylist()[0] == Decimal("99999999.99")
    wm = mark(lake_url, "sales_order")
    assert wm is not None
    assert wm.last_updated == dt.datetime(2024, 11, 3, 14, 20, 52, 186000)  # never rounded up


def test_rows_at_the_watermark_timestamp_arrive_next_run(
    source: str, lake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R1: rows committed after a run with last_updated equal to the stored watermark.

    Without any overlap window, so the inclusive boundary alone must deliver them.
    """
    no_lag = dt.timedelta(0)
    add_currencies(source, ["2024-11-04 09:00:00.500"])
    run(source, lake_url, "r1", extract_lag=no_lag)
    wm = mark(lake_url)
    assert wm is not None and wm.last_updated.isoformat() == "2024-11-04T09:00:00.500000"
    late = add_currencies(source, ["2024-11-04 09:00:00.500", "2024-11-04 09:00:00.500"])

    second = run(source, lake_url, "r2", extract_lag=no_lag)

    got = batch_versions(lake_url, "currency", "r2")
    assert {(i, "2024-11-04T09:00:00.500") for i in late} <= set(got)
    assert second.mode == "incremental"
    assert all_versions(lake_url, "currency") == source_versions(source)


def test_late_commit_with_an_earlier_timestamp_arrives_next_run(source: str, lake_url: str) -> None:
    """R2: transaction A stamps its row, stays open while a run saves a later watermark."""
    with psycopg.connect(source) as slow:  # transaction A
        late_id = slow.execute(
            "INSERT INTO currency (currency_code, last_updated) "
            "VALUES ('USD', localtimestamp) RETURNING currency_id"
        ).fetchone()[0]  # type: ignore[index]
        with psycopg.connect(source, autocommit=True) as fast:
            fast.execute("SELECT pg_sleep(0.01)")
            fast.execute(
                "INSERT INTO currency (currency_code, last_updated) VALUES ('JPY', localtimestamp)"
            )
        first = run(source, lake_url, "r1")
        slow.commit()
    late_lu = dict(source_versions(source))[late_id]
    wm = mark(lake_url)
    assert wm is not None and wm.last_updated.isoformat(timespec="milliseconds") > late_lu
    assert (late_id, late_lu) not in set(batch_versions(lake_url, "currency", "r1"))
    assert first.rows == 2  # the seed row and JPY

    run(source, lake_url, "r2")

    assert (late_id, late_lu) in set(batch_versions(lake_url, "currency", "r2"))
    assert all_versions(lake_url, "currency") == source_versions(source)


def test_concurrent_writes_during_extraction_are_never_skipped(
    source: str, lake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R3: while a run streams, other sessions update read and unread rows and insert rows.

    The run delivers exactly its snapshot (the unread row's old version included) and saves
    a watermark no later than what it read; the next run delivers every change.
    """
    ids = add_currencies(source, [f"2024-11-04 09:00:{s:02d}.000" for s in range(40)])
    before = source_versions(source)
    monkeypatch.setattr(source_module, "BATCH_BYTES", 256)  # many batches: a long stream
    real = extract_module.to_catalog
    calls = []

    def to_catalog_while_others_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # mid-stream: first batch read, the rest not yet
            with psycopg.connect(source, autocommit=True) as other:
                other.execute(
                    "UPDATE currency SET last_updated = localtimestamp WHERE currency_id = ANY(%s)",
                    ([ids[0], ids[-1]],),
                )
                other.execute(
                    "INSERT INTO currency (currency_code, last_updated) "
                    "VALUES ('CHF', localtimestamp)"
                )
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_module, "to_catalog", to_catalog_while_others_write)
    run(source, lake_url, "r1")

    assert len(calls) > 2
    assert set(batch_versions(lake_url, "currency", "r1")) == before  # the snapshot, whole
    wm = mark(lake_url)
    assert wm is not None and wm.last_updated == max(
        dt.datetime.fromisoformat(lu) for _, lu in before
    )
    monkeypatch.setattr(extract_module, "to_catalog", real)
    run(source, lake_url, "r2")
    assert all_versions(lake_url, "currency") == before | source_versions(source)


def test_backfill_reloads_a_window_and_leaves_the_watermark_alone(
    source: str, lake_url: str
) -> None:
    """R14: an explicit [since, until) window, twice: same rows, watermark untouched."""
    add_currencies(source, [f"2024-11-0{d} 12:00:00.000" for d in range(1, 8)])
    run(source, lake_url, "r1")
    lake = Lake(lake_url)
    state_before = {k: lake.read_bytes(k) for k in lake.list("_state/currency/")}

    first = run(source, lake_url, "b1", since="2024-11-03", until=dt.datetime(2024, 11, 5))
    again = run(source, lake_url, "b2", since="2024-11-03T00:00:00", until="2024-11-05")

    assert first.mode == "backfill" and first.rows == 2
    expected = {(i, lu) for i, lu in source_versions(source) if "2024-11-03" <= lu < "2024-11-05"}
    assert set(batch_versions(lake_url, "currency", "b1")) == expected
    assert batch_versions(lake_url, "currency", "b2") == batch_versions(lake_url, "currency", "b1")
    add_currencies(source, ["2024-11-08 12:00:00.000"])  # newer than the watermark
    open_ended = run(source, lake_url, "b3", since="2024-11-06")
    assert (
        open_ended.rows == 3 and open_ended.to_dict()["cursor"]["to"] == "2024-11-08T12:00:00.000"
    )
    watermark_files = {k for k in lake.list("_state/currency/") if "watermark" in k}
    assert {k: lake.read_bytes(k) for k in watermark_files} == {
        k: v for k, v in state_before.items() if "watermark" in k
    }
    assert again.status == "ok"


def test_max_rows_splits_a_large_table_into_continuations(source: str, lake_url: str) -> None:
    """R20: each call stops at max_rows on a (last_updated, key) boundary and says `more`.

    Equal timestamps straddle the cut on purpose: continuations resume after the exact key.
    """
    add_sales_orders(source, 25, "2024-11-04 09:00:00.000", step_ms=0)  # all one timestamp
    calls, run_id = [], "big"
    while run_id:
        result = run(source, lake_url, run_id, table="sales_order", extract_max_rows=10)
        calls.append((result.run_id, result.rows, result.more))
        run_id = result.next_run_id
    assert calls == [("big", 10, True), ("big.2", 10, True), ("big.3", 5, False)]
    rows = [
        v for rid in ("big", "big.2", "big.3") for v in batch_versions(lake_url, "sales_order", rid)
    ]
    assert len(rows) == len(set(rows)) == 25  # no overlap between continuations, no gap
    assert set(rows) == source_versions(source, "sales_order")
    wm = mark(lake_url, "sales_order")
    assert wm is not None and (wm.key, wm.more) == (25, False)

    nothing_new = run(source, lake_url, "next", table="sales_order", extract_max_rows=10)
    assert (nothing_new.rows, nothing_new.more) == (10, True)  # the overlap window re-read


def test_a_stop_signal_hands_over_between_batches_like_max_rows(
    source: str, lake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Lambda's remaining time running low (`stop`) ends a call after the current
    streamed batch: `more`, then the continuation resumes exactly after the last row.

    Tiny ADBC batches make the 300 rows arrive in several batches; `stop` says yes from
    the second question on, so the first call keeps what it streamed by then.
    """
    monkeypatch.setattr(source_module, "BATCH_BYTES", 1024)
    add_sales_orders(source, 300, "2024-11-04 09:00:00.000", step_ms=0)  # all one timestamp
    asked: list[int] = []

    def stop_after_two_batches() -> bool:
        asked.append(1)
        return len(asked) >= 2

    first = run(source, lake_url, "slow", table="sales_order", stop=stop_after_two_batches)
    assert first.more and first.next_run_id == "slow.2"
    assert 0 < first.rows < 300
    rest = run(source, lake_url, "slow.2", table="sales_order")
    assert (rest.rows, rest.more) == (300 - first.rows, False)
    rows = batch_versions(lake_url, "sales_order", "slow") + batch_versions(
        lake_url, "sales_order", "slow.2"
    )
    assert len(rows) == len(set(rows)) == 300  # no overlap, no gap
    assert set(rows) == source_versions(source, "sales_order")
    wm = mark(lake_url, "sales_order")
    assert wm is not None and (wm.key, wm.more) == (300, False)


def test_a_stop_signal_on_the_last_batch_is_not_more(source: str, lake_url: str) -> None:
    add_sales_orders(source, 5, "2024-11-04 09:00:00.000")
    result = run(source, lake_url, "r1", table="sales_order", stop=lambda: True)
    assert (result.rows, result.more, result.next_run_id) == (5, False, None)


def test_a_cut_off_run_is_resumed_by_the_next_run(source: str, lake_url: str) -> None:
    """R20: if nobody follows `next_run_id`, the next scheduled run resumes exactly."""
    add_sales_orders(source, 12, "2024-11-04 09:00:00.000", step_ms=1)
    first = run(source, lake_url, "r1", table="sales_order", extract_max_rows=5)
    second = run(source, lake_url, "r2", table="sales_order")
    assert first.more and not second.more
    assert second.rows == 7
    both = batch_versions(lake_url, "sales_order", "r1") + batch_versions(
        lake_url, "sales_order", "r2"
    )
    assert sorted(both) == sorted(source_versions(source, "sales_order"))


def test_a_backfill_continues_within_its_window(source: str, lake_url: str) -> None:
    add_currencies(source, [f"2024-11-04 09:00:{s:02d}.000" for s in range(9)])
    first = run(
        source,
        lake_url,
        "b",
        since="2024-11-04 09:00:02",
        until="2024-11-04 09:00:07",
        extract_max_rows=3,
    )
    second = run(source, lake_url, first.next_run_id, extract_max_rows=3)
    assert (first.rows, first.more, second.rows, second.more) == (3, True, 2, False)
    assert second.mode == "backfill"
    got = {lu for _, lu in all_versions(lake_url, "currency")}
    assert got == {f"2024-11-04T09:00:{s:02d}.000" for s in range(2, 7)}
    assert mark(lake_url) is None


def test_one_structured_log_line_per_call_without_secrets(
    source: str, lake_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE currency ADD COLUMN currency_name text")
    with caplog.at_level("INFO", logger="pipeline.extract.run"):
        run(source, lake_url, "r1")
    [done] = [r for r in caplog.records if r.getMessage() == "extract done"]
    assert (done.table, done.run_id, done.rows, done.status) == ("currency", "r1", 1, "ok")  # type: ignore[attr-defined]
    assert done.duration_s >= 0  # type: ignore[attr-defined]
    assert any(
        "currency_name" in r.getMessage() for r in caplog.records if r.levelname == "WARNING"
    )
    password = psycopg.conninfo.conninfo_to_dict(source).get("password")
    assert password and all(password not in r.getMessage() for r in caplog.records)


def test_every_catalog_table_extracts_with_its_exact_schema(source: str, lake_url: str) -> None:
    """Enums, booleans, nullable references: the live DDL of all 11 tables passes the drift
    check and every column lands with the catalog's Arrow type."""
    add_sales_orders(source, 1, "2024-11-04 09:00:00.000")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO purchase_order (staff_id, counterparty_id, item_code, item_quantity, "
            "item_unit_price, currency_id, agreed_delivery_date, agreed_payment_date, "
            "agreed_delivery_location_id, last_updated) "
            "VALUES (1, 1, 'ZDOI5EA', 3, 361.39, 1, '2024-11-09', '2024-11-08', 1, localtimestamp)"
        )
        conn.execute(
            "INSERT INTO payment_type (payment_type_name, last_updated) "
            "VALUES ('SALES_RECEIPT', localtimestamp), ('PURCHASE_REFUND', localtimestamp)"
        )
        conn.execute(
            "INSERT INTO transaction (transaction_type, sales_order_id, last_updated) "
            "VALUES ('SALE', 1, localtimestamp)"
        )
        conn.execute(
            "INSERT INTO payment (transaction_id, counterparty_id, payment_amount, currency_id, "
            "payment_type_id, paid, payment_date, company_ac_number, counterparty_ac_number, "
            "last_updated) VALUES (1, 1, 250.00, 1, 1, true, '2024-11-12', 1, 2, localtimestamp)"
        )
    lake = Lake(lake_url)
    for name, spec in TABLES.items():
        result = run(source, lake_url, "r1", table=name)
        data = lake.read_parquet(result.files)
        assert data.schema.equals(spec.arrow_schema), name
        assert result.rows == data.num_rows == len(source_versions(source, name)) > 0, name
    payment = lake.read_parquet(run(source, lake_url, "r1", table="payment").files)
    assert payment.column("paid").to_pylist() == [True]
    kinds = lake.read_parquet(run(source, lake_url, "r1", table="payment_type").files)
    assert kinds.column("payment_type_name").to_pylist() == ["SALES_RECEIPT", "PURCHASE_REFUND"]
    sales = lake.read_parquet(run(source, lake_url, "r1", table="transaction").files)
    assert sales.column("purchase_order_id").to_pylist() == [None]


def test_reads_in_one_repeatable_read_read_only_transaction(source: str) -> None:
    from pipeline.extract.source import SourceSnapshot

    with SourceSnapshot.open(source, TABLES["currency"]) as snapshot:
        settings = snapshot._one(
            "SELECT current_setting('transaction_isolation'), "
            "current_setting('transaction_read_only'), localtimestamp",
            (),
        )
    assert settings == ("repeatable read", "on", snapshot.now)


def test_source_dsn_defaults_to_the_environment(
    source: str, lake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOTESYS_DSN", source)
    result = extract_table("currency", "r1", Settings.from_env().replace(ingest_url=lake_url))
    assert result.rows == 1
