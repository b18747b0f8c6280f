"""Transform step throughput: one synthetic sales_order batch (2,000,000 rows by default).

Run: `.venv/bin/python -m benchmarks.transform_bench [--rows N]`

Builds an ingestion zone in a temp dir (CONTRACTS.md layout: catalog-typed Parquet + a
manifest per table: the small lookup tables and one big sales_order batch, 1% of it
re-delivered to exercise de-duplication), then measures, each in a fresh process so peak
RSS is its own:
- `polars`: `pipeline.transform.transform` (all stars; only sales has rows here);
- `pandas`: the same sales work written pandas-style (read, de-duplicate, check, split
  timestamps, parse dates, look up dimensions, write Parquet).
- `no-change`: a second transform after the overlap window re-delivered the newest 500 rows;
- `delta`: a third one after 10,000 old orders changed (ids 1..10,000, a new version each).
The incremental runs read and rewrite only the state buckets of the ids they touch
(pipeline/transform/state.py), so their cost should not grow with the table.
Prints seconds, CPU seconds, rows/s, peak RSS and the pandas/polars ratio. Not a test:
numbers vary (compare CPU time and ratios on a busy host).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.lake import Lake
from pipeline.settings import Settings
from tests.lake_builders import write_batch

LOOKUPS = {
    "address": 30,
    "counterparty": 20,
    "currency": 3,
    "department": 8,
    "staff": 20,
    "design": 500,
    "payment_type": 4,
}
START = dt.datetime(2024, 1, 1, 8, 0, 0)


def _audit(n: int, rng: np.random.Generator) -> dict[str, Any]:
    offsets = np.sort(rng.integers(0, 365 * 86_400_000, n))
    created = np.datetime64(START, "ms") + offsets.astype("timedelta64[ms]")
    return {"created_at": created, "last_updated": created}


def _lookup_rows(table: str, n: int) -> list[dict[str, Any]]:
    now = START - dt.timedelta(days=1)
    ids = range(1, n + 1)
    base = [{"created_at": now, "last_updated": now} for _ in ids]
    make = {
        "address": lambda i: {
            "address_id": i,
            "address_line_1": f"{i} Road",
            "city": "Leeds",
            "postal_code": "LS1",
            "country": "UK",
            "phone": "0113",
        },
        "counterparty": lambda i: {
            "counterparty_id": i,
            "counterparty_legal_name": f"C{i}",
            "legal_address_id": i,
        },
        "currency": lambda i: {"currency_id": i, "currency_code": ("GBP", "USD", "EUR")[i - 1]},
        "department": lambda i: {"department_id": i, "department_name": f"D{i}"},
        "staff": lambda i: {
            "staff_id": i,
            "first_name": "A",
            "last_name": "B",
            "department_id": 1 + i % 8,
            "email_address": f"s{i}@t.com",
        },
        "design": lambda i: {
            "design_id": i,
            "design_name": "d",
            "file_location": "/x",
            "file_name": f"d{i}.json",
        },
        "payment_type": lambda i: {
            "payment_type_id": i,
            "payment_type_name": (
                "SALES_RECEIPT",
                "SALES_REFUND",
                "PURCHASE_PAYMENT",
                "PURCHASE_REFUND",
            )[i - 1],
        },
    }[table]
    return [{**b, **make(i)} for b, i in zip(base, ids, strict=True)]


def sales_batch(rows: int, seed: int = 7) -> pa.Table:
    """`rows` sales_order rows (ids 1..rows), plus 1% of them again (overlap re-delivery)."""
    rng = np.random.default_rng(seed)
    audit = _audit(rows, rng)
    agreed = (
        audit["created_at"].astype("datetime64[D]")
        + rng.integers(1, 30, rows).astype("timedelta64[D]")
    ).astype(str)
    table = pa.table(
        {
            "sales_order_id": pa.array(np.arange(1, rows + 1, dtype=np.int32)),
            "design_id": pa.array(rng.integers(1, 501, rows, dtype=np.int32)),
            "staff_id": pa.array(rng.integers(1, 21, rows, dtype=np.int32)),
            "counterparty_id": pa.array(rng.integers(1, 21, rows, dtype=np.int32)),
            "units_sold": pa.array(rng.integers(1000, 100_000, rows, dtype=np.int32)),
            "unit_price": pa.array(rng.integers(200, 400, rows) / 100.0),
            "currency_id": pa.array(rng.integers(1, 4, rows, dtype=np.int32)),
            "agreed_delivery_date": pa.array(agreed),
            "agreed_payment_date": pa.array(agreed),
            "agreed_delivery_location_id": pa.array(rng.integers(1, 31, rows, dtype=np.int32)),
            "created_at": pa.array(audit["created_at"]),
            "last_updated": pa.array(audit["last_updated"]),
        }
    )
    return pa.concat_tables([table, table.slice(rows - rows // 100)])


def build_lake(root: Path, rows: int) -> Lake:
    ingest = Lake(str(root / "ingest"))
    for table, n in LOOKUPS.items():
        write_batch(ingest, table, "bench", _lookup_rows(table, n), mode="full")
    write_batch(ingest, "sales_order", "bench", sales_batch(rows), parts=4)
    return ingest


def _cpu() -> float:
    """CPU seconds of this process (all threads): steadier than wall time on a busy host."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def incremental_batches(ingest: Lake, rows: int, step: str) -> int:
    """Write the batch of an incremental step; returns its row count."""
    full = sales_batch(rows).slice(0, rows)
    if step == "no-change":  # the overlap window re-delivers the newest versions
        batch = full.slice(max(0, rows - 500))
    else:  # 10,000 old orders change: a new version each, one second after the newest
        batch = full.slice(0, min(rows, 10_000))
        newest = pc.max(full.column("last_updated")).as_py() + dt.timedelta(seconds=1)
        stamp = pa.array([newest] * batch.num_rows, batch.schema.field("last_updated").type)
        units = pc.add(batch.column("units_sold"), 1).cast(pa.int32())
        batch = batch.set_column(
            batch.schema.get_field_index("last_updated"), "last_updated", stamp
        )
        batch = batch.set_column(batch.schema.get_field_index("units_sold"), "units_sold", units)
    write_batch(ingest, "sales_order", f"bench-{step}", batch)
    return batch.num_rows


def run_polars(root: str, run_id: str = "bench-t") -> dict[str, Any]:
    from pipeline.transform import transform

    start, cpu = time.perf_counter(), _cpu()
    result = transform(
        run_id, Settings(ingest_url=f"{root}/ingest", processed_url=f"{root}/polars")
    )
    seconds = time.perf_counter() - start
    return {
        "cpu": _cpu() - cpu,
        "seconds": seconds,
        "rows_out": result.rows_out["fact_sales_order"],
        "duplicates": result.duplicates["sales_order"],
    }


def run_pandas(root: str) -> dict[str, Any]:
    """The same sales transform, pandas-style: eager frames, merges, per-column conversions."""
    import pandas as pd

    from benchmarks.baselines import pandas_sales_fact

    ingest = Lake(f"{root}/ingest")
    start, cpu = time.perf_counter(), _cpu()

    def read(table: str) -> pd.DataFrame:
        m = ingest.read_json(f"_manifests/{table}/bench.json")
        return pd.concat([pd.read_parquet(ingest.path(f)) for f in m["files"]], ignore_index=True)

    sales = read("sales_order").drop_duplicates(["sales_order_id", "last_updated"])
    staff, department = read("staff"), read("department")
    valid = {
        "staff_id": set(staff.merge(department, on="department_id")["staff_id"]),
        "counterparty_id": set(read("counterparty")["counterparty_id"]),
        "currency_id": set(read("currency")["currency_id"]),
        "design_id": set(read("design")["design_id"]),
        "agreed_delivery_location_id": set(read("address")["address_id"]),
    }
    for col in ("agreed_delivery_date", "agreed_payment_date"):
        sales[col] = pd.to_datetime(sales[col], format="%Y-%m-%d", errors="coerce").dt.date
    ok = sales[["agreed_delivery_date", "agreed_payment_date"]].notna().all(axis=1)
    ok &= (sales["units_sold"] >= 0) & (sales["unit_price"] >= 0)
    for col, keys in valid.items():
        ok &= sales[col].isin(keys)
    good = sales[ok]
    fact = pandas_sales_fact(good)
    Path(f"{root}/pandas").mkdir(exist_ok=True)
    fact.to_parquet(f"{root}/pandas/fact_sales_order.parquet", compression="zstd")
    sales[~ok].to_parquet(f"{root}/pandas/quarantine.parquet", compression="zstd")
    return {
        "seconds": time.perf_counter() - start,
        "cpu": _cpu() - cpu,
        "rows_out": len(fact),
        "duplicates": None,
    }


def peak_rss_mb() -> float:
    """This process's peak RSS: `VmHWM` on Linux (`ru_maxrss` survives exec, so a spawned
    child would report the parent's peak if it is higher, e.g. after generating the data)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(name: str, root: str, queue: Any) -> None:
    steps = {
        "polars": run_polars,
        "pandas": run_pandas,
        "no-change": lambda r: run_polars(r, "bench-t2"),
        "delta": lambda r: run_polars(r, "bench-t3"),
    }
    out = steps[name](root)
    out["peak_rss_mb"] = peak_rss_mb()
    queue.put(out)


def measure(name: str, root: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, root, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="transform-bench-") as tmp:
        start = time.perf_counter()
        build_lake(Path(tmp), args.rows)
        print(
            f"generated {args.rows:,} sales_order rows (+1% re-delivered) "
            f"in {time.perf_counter() - start:.1f}s"
        )
        results = {name: measure(name, tmp) for name in ("polars", "pandas")}
        rows_in = {"polars": args.rows, "pandas": args.rows}
        for step in ("no-change", "delta"):
            rows_in[step] = incremental_batches(Lake(f"{tmp}/ingest"), args.rows, step)
            results[step] = measure(step, tmp)
    for name, r in results.items():
        print(
            f"{name:9} {r['seconds']:6.2f} s (cpu {r['cpu']:5.2f} s)  "
            f"{rows_in[name]:>9,} rows in {rows_in[name] / r['seconds']:>10,.0f} rows/s  "
            f"peak RSS {r['peak_rss_mb']:6.0f} MB  fact rows {r['rows_out']:,}"
        )
    ratio = results["pandas"]["seconds"] / results["polars"]["seconds"]
    print(f"pandas / polars time: {ratio:.1f}x  (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
