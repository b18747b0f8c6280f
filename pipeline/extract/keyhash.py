"""Order-independent fingerprints of (primary key, last_updated) sets, equal in SQL and numpy.

Reconciliation (`pipeline.extract.reconcile`) compares, per bucket of primary keys, the
rows the source has with the rows the lake holds: a row count and the XOR of one 64-bit
hash per row. XOR makes the fingerprint independent of row order and lets a bucket's
fingerprint be maintained incrementally; the keys are unique, so no two equal hashes ever
cancel out.

The per-row hash is PostgreSQL's own `timestamp_hash_extended(last_updated, key)`: one
built-in C call per row, so the source side is a single cheap scan of the key and cursor
columns (`bit_xor` needs PostgreSQL 14 or later). `row_hashes` computes the very same
function in numpy for the lake side: PostgreSQL's `hashint8extended` folds the timestamp's
64-bit value (microseconds since 2000-01-01) to 32 bits and hashes it with Bob Jenkins'
lookup3 `mix`/`final` seeded by the key (src/common/hashfn.c). Extended hash functions are
what hash partitioning stores rows by, so PostgreSQL keeps them stable across versions and
platforms; `check_source_hash` still verifies the function against the source before each
pass (a typed error instead of a wrong comparison).
"""

from __future__ import annotations

import numpy as np
from psycopg import sql

from pipeline.catalog import Table
from pipeline.errors import ConfigurationError

_U32 = np.uint32
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970
_INIT = (0x9E3779B9 + 4 + 3923095) & 0xFFFFFFFF


def _rot(x: np.ndarray, k: int, out: np.ndarray) -> np.ndarray:
    """x rotated left by k bits, into the scratch array `out`."""
    np.left_shift(x, _U32(k), out=out)
    out |= x >> _U32(32 - k)
    return out


def _mix(a: np.ndarray, b: np.ndarray, c: np.ndarray, t: np.ndarray) -> None:
    """lookup3's mix(a, b, c), in place (`t` is scratch)."""
    for x, y, z, k in ((a, c, b, 4), (b, a, c, 6), (c, b, a, 8), (a, c, b, 16), (b, a, c, 19)):
        x -= y
        x ^= _rot(y, k, t)
        y += z
    c -= b
    c ^= _rot(b, 4, t)
    b += a


def _final(a: np.ndarray, b: np.ndarray, c: np.ndarray, t: np.ndarray) -> None:
    """lookup3's final(a, b, c), in place (`t` is scratch)."""
    for x, y, k in ((c, b, 14), (a, c, 11), (b, a, 25), (c, b, 16), (a, c, 4), (b, a, 14)):
        x ^= y
        x -= _rot(y, k, t)
    c ^= b
    c -= _rot(b, 24, t)


def row_hashes(keys: np.ndarray, stamps_ms: np.ndarray) -> np.ndarray:
    """`timestamp_hash_extended(last_updated, key)` for each row, as uint64.

    `keys`: the integer primary keys; `stamps_ms`: `last_updated` as milliseconds since
    1970 (int64, what Arrow's timestamp("ms") stores).
    """
    with np.errstate(over="ignore"):
        value = stamps_ms.astype(np.int64) * 1000 - _PG_EPOCH_US  # PostgreSQL's timestamp
        hi = (value >> 32).astype(_U32)  # arithmetic shift, as in C
        hi[value < 0] ^= _U32(0xFFFFFFFF)  # the complement for negative values
        folded = value.astype(_U32) ^ hi
        seed = keys.astype(np.int64)
        a = (seed >> 32).astype(_U32)  # the seed's high half (0 for non-negative int32 keys)
        a += _U32(_INIT)
        b = seed.astype(_U32)
        b += _U32(_INIT)
        c = np.full(len(seed), _INIT, dtype=_U32)
        t = np.empty_like(c)
        _mix(a, b, c, t)
        unseeded = seed == 0  # hash_bytes_uint32_extended skips the mix for seed 0
        if unseeded.any():
            a[unseeded] = b[unseeded] = c[unseeded] = _INIT
        a += folded
        _final(a, b, c, t)
        out = b.astype(np.uint64)
        out <<= np.uint64(32)
        out |= c
        return out


def row_hash_sql(spec: Table) -> sql.Composable:
    """The same hash in SQL, as a signed bigint (`bit_xor` works on bigint)."""
    return sql.SQL("timestamp_hash_extended({}, {}::bigint)").format(
        sql.Identifier(spec.cursor), sql.Identifier(spec.primary_key)
    )


PROBE_KEY, PROBE_MS = 123_456_789, 1_667_485_249_962  # 2022-11-03 14:20:49.962


def probe_sql() -> str:
    """One value of the hash, computed by the source, to compare with `row_hashes`."""
    return (
        f"SELECT timestamp_hash_extended(to_timestamp({PROBE_MS} / 1000.0) "
        f"AT TIME ZONE 'UTC', {PROBE_KEY}::bigint)"
    )


def check_source_hash(value: int) -> None:
    """The source's answer to `probe_sql` must equal ours, or no comparison is valid."""
    ours = int(row_hashes(np.array([PROBE_KEY]), np.array([PROBE_MS]))[0])
    if (value & 0xFFFF_FFFF_FFFF_FFFF) != ours:
        raise ConfigurationError(
            "the source's timestamp_hash_extended() differs from the reconciliation's own "
            f"({value & 0xFFFF_FFFF_FFFF_FFFF:#x} vs {ours:#x}); reconciliation cannot run "
            "against this server: set RECONCILE_EVERY=off"
        )


def bucket_fingerprints(
    buckets: np.ndarray, hashes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bucket, row count, XOR of hashes) per bucket present; `buckets` must be sorted."""
    if len(buckets) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.uint64)
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    counts = np.diff(np.r_[starts, len(buckets)])
    return buckets[starts], counts, np.bitwise_xor.reduceat(hashes, starts)
