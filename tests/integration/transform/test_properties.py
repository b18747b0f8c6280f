"""Property checks over random deliveries of sales rows across batches and runs (and state
buckets): rows in = rows out + quarantined + duplicates; each version emitted exactly once;
every date a fact references is in the same run's dim_date."""

from __future__ import annotations

import tempfile
from decimal import Decimal
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.transform import state as transform_state
from pipeline.transform import transform
from tests.lake_builders import read_outputs, read_quarantine, row, write_batch, write_lookups

KINDS = ("good", "good", "negative", "missing_staff", "bad_date", "far_future")
TIMES = ("2024-11-04 09:00:00.000", "2024-11-04 09:00:00.001", "2024-11-04 17:30:00.250")

versions_strategy = st.lists(
    st.tuples(st.integers(1, 6), st.integers(0, len(TIMES) - 1), st.sampled_from(KINDS)),
    min_size=1,
    max_size=12,
    unique_by=lambda v: (v[0], v[1]),
)


def sales_row(order_id: int, time_index: int, kind: str) -> dict:
    values: dict = {"sales_order_id": order_id, "units_sold": order_id * 10}
    if kind == "negative":
        values["unit_price"] = Decimal("-0.01")
    elif kind == "missing_staff":
        values["staff_id"] = 99
    elif kind == "bad_date":
        values["agreed_payment_date"] = "2024-13-01"
    elif kind == "far_future":
        values["agreed_delivery_date"] = "2026-11-30"
    return row("sales_order", created="2024-11-01 08:00:00.000", at=TIMES[time_index], **values)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), versions=versions_strategy)
def test_accounting_and_exactly_once(data, versions):
    deliveries = data.draw(st.lists(st.sampled_from(versions), min_size=1, max_size=20))
    runs = data.draw(st.integers(1, 3))
    cuts = sorted(
        data.draw(st.lists(st.integers(0, len(deliveries)), min_size=runs - 1, max_size=runs - 1))
    )
    chunks = [deliveries[a:b] for a, b in zip([0, *cuts], [*cuts, len(deliveries)], strict=True)]
    width = data.draw(st.sampled_from([2, transform_state.BUCKET_IDS]))  # ids per state bucket

    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(transform_state, "BUCKET_IDS", width),
    ):
        ingest, processed = Lake(f"{tmp}/in"), Lake(f"{tmp}/out")
        write_lookups(ingest, "lookups")
        emitted: list[tuple[int, object]] = []
        handled: set[tuple[int, int]] = set()
        for n, chunk in enumerate(chunks):
            if chunk:
                write_batch(ingest, "sales_order", f"e{n}", [sales_row(*v) for v in chunk])
            result = transform(
                f"t{n}", Settings(ingest_url=ingest.url, processed_url=processed.url)
            )
            if not chunk and n > 0:
                assert result.status == "nothing_to_do"
                continue
            new = {(v[0], v[1]): v[2] for v in chunk if (v[0], v[1]) not in handled}
            handled |= set(new)
            good = sum(kind in ("good", "far_future") for kind in new.values())

            facts = read_outputs(processed, f"t{n}")
            sales = facts["fact_sales_order"]
            bad = read_quarantine(processed, f"t{n}", "sales_order")
            assert result.rows_in.get("sales_order", 0) == len(chunk)
            assert sales.height == good
            assert bad.height == len(new) - good
            assert result.duplicates.get("sales_order", 0) == len(chunk) - len(new)
            assert sales.height + bad.height + result.duplicates.get("sales_order", 0) == len(chunk)
            emitted += list(zip(sales["sales_order_id"], sales["last_updated_time"], strict=True))

            dates = set(facts["dim_date"]["date_id"].to_list())
            for col in (
                "created_date",
                "last_updated_date",
                "agreed_payment_date",
                "agreed_delivery_date",
            ):
                assert set(sales[col].to_list()) <= dates, col
        assert len(emitted) == len(set(emitted))
        good_versions = {(v[0], v[1]) for v in deliveries if v[2] in ("good", "far_future")}
        assert len(emitted) == len(good_versions)


update = st.one_of(
    st.tuples(st.just("department"), st.integers(1, 3), st.sampled_from(["Leeds", "Hull", None])),
    st.tuples(st.just("staff"), st.integers(1, 4), st.integers(1, 3)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=st.lists(st.lists(update, max_size=5), min_size=1, max_size=4))
def test_dim_staff_upserts_converge_to_the_latest_join(runs):
    """Applying each run's dim_staff rows as upserts, in run order, gives exactly the join
    of the latest staff and department versions, whichever side changed when."""
    with tempfile.TemporaryDirectory() as tmp:
        ingest, processed = Lake(f"{tmp}/in"), Lake(f"{tmp}/out")
        departments = {d: "Manchester" for d in (1, 2, 3)}
        staff = {s: 1 for s in (1, 2, 3, 4)}
        clock = iter(range(1, 10_000))

        def at() -> str:
            return f"2024-11-04 09:00:{next(clock) / 1000:06.3f}"

        write_batch(
            ingest,
            "department",
            "e0",
            [
                row("department", department_id=d, location=loc, at=at())
                for d, loc in departments.items()
            ],
        )
        write_batch(
            ingest,
            "staff",
            "e0",
            [row("staff", staff_id=s, department_id=d, at=at()) for s, d in staff.items()],
        )
        warehouse: dict[int, str | None] = {}
        for n, updates in enumerate([[], *runs]):
            dept_rows, staff_rows = [], []
            for table, key, value in updates:
                if table == "department":
                    departments[key] = value
                    dept_rows.append(row("department", department_id=key, location=value, at=at()))
                else:
                    staff[key] = value
                    staff_rows.append(row("staff", staff_id=key, department_id=value, at=at()))
            if dept_rows:
                write_batch(ingest, "department", f"e{n + 1}", dept_rows)
            if staff_rows:
                write_batch(ingest, "staff", f"e{n + 1}", staff_rows)
            result = transform(
                f"t{n}", Settings(ingest_url=ingest.url, processed_url=processed.url)
            )
            if result.status == "ok":
                dim = read_outputs(processed, f"t{n}")["dim_staff"]
                warehouse.update(zip(dim["staff_id"], dim["location"], strict=True))
        assert warehouse == {s: departments[d] for s, d in staff.items()}
