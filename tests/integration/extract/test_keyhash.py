"""The reconciliation's fingerprints: numpy computes exactly PostgreSQL's own hash, and the
lake side of a freshly extracted table equals the source side bucket for bucket."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from pipeline.catalog import TABLES
from pipeline.errors import ConfigurationError
from pipeline.extract import keyhash
from pipeline.extract.held import HeldState
from pipeline.lake import Lake
from tests.integration.extract.helpers import add_sales_orders, lake_url, run, source

pytestmark = pytest.mark.postgres
__all__ = ["lake_url", "source"]  # fixtures


def test_numpy_hashes_equal_postgresql_s_timestamp_hash_extended(pg_dsn: str) -> None:
    rng = np.random.default_rng(14)
    keys = np.r_[
        [0, 1, -1, 2_147_483_647, -2_147_483_648], rng.integers(-(2**31), 2**31, 300)
    ].astype(np.int64)
    stamps = np.r_[  # milliseconds since 1970: before 1970 and 2000, now, far future
        [-86_400_000 * 365 * 30, 0, 946_684_799_999, 946_684_800_000, 1_700_000_000_123],
        rng.integers(-(2**40), 2**42, 300),
    ].astype(np.int64)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT timestamp_hash_extended(timestamp '1970-01-01' + s * interval '1 ms', k) "
            "FROM unnest(%s::bigint[], %s::bigint[]) WITH ORDINALITY AS u(k, s, n) ORDER BY n",
            (keys.tolist(), stamps.tolist()),
        ).fetchall()
        probe = conn.execute(keyhash.probe_sql()).fetchone()[0]  # type: ignore[index]
    theirs = np.array([r[0] for r in rows], dtype=np.int64).view(np.uint64)
    assert (keyhash.row_hashes(keys, stamps) == theirs).all()
    keyhash.check_source_hash(probe)
    with pytest.raises(ConfigurationError, match="RECONCILE_EVERY=off"):
        keyhash.check_source_hash(probe + 1)


def test_a_fresh_extraction_s_held_summary_equals_the_source_s(source: str, lake_url: str) -> None:
    add_sales_orders(source, 5_000, "2024-11-04 09:00:00", step_ms=7)
    with psycopg.connect(source, autocommit=True) as conn:  # gaps and a far key
        conn.execute("DELETE FROM sales_order WHERE sales_order_id % 17 = 0")
        conn.execute("UPDATE sales_order SET sales_order_id = 900000 WHERE sales_order_id = 3")
    result = run(source, lake_url, "r1", "sales_order")
    assert result.reconcile and result.reconcile["buckets_differed"] == 0
    held = HeldState.open(Lake(lake_url), TABLES["sales_order"])
    hash_sql = keyhash.row_hash_sql(TABLES["sales_order"]).as_string(None)
    with psycopg.connect(source) as conn:
        theirs = conn.execute(
            f"SELECT sales_order_id >> 10, count(*), bit_xor({hash_sql}) FROM sales_order "
            "GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert [(b, n, x & (2**64 - 1)) for b, n, x in theirs] == list(
        zip(
            held.summary.bucket.tolist(),
            held.summary.rows.tolist(),
            held.summary.xor.tolist(),
            strict=True,
        )
    )
    assert result.reconcile["buckets_compared"] == len(theirs) == 6  # 5 dense + the far key
