"""Arrow arrays from numpy buffers, never from Python objects.

`pa.array` checks its argument against pandas types, which imports pandas (over a second
of a cold start) in any process that has it installed; the extract and load steps build
their arrays from buffers instead.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_NUMPY = {
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint64(): np.uint64,
    pa.timestamp("ms"): np.int64,  # milliseconds since 1970
}


def fixed_width(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A numpy array as a null-free Arrow array of a fixed-width `type_` (values converted
    to its storage: int32, int64, uint64, or int64 milliseconds for timestamp("ms"))."""
    data = np.ascontiguousarray(values, dtype=_NUMPY[type_])
    return pa.Array.from_buffers(type_, len(data), [None, pa.py_buffer(data)])


def values(array: pa.Array) -> np.ndarray:
    """The values buffer of a null-free fixed-width array, zero copy (`to_numpy` would go
    through pandas for some types)."""
    if array.null_count:
        raise ValueError(f"{array.type} array with {array.null_count} nulls")
    width = array.type.bit_width // 8
    dtype = np.dtype(f"{'u' if pa.types.is_unsigned_integer(array.type) else 'i'}{width}")
    return np.frombuffer(
        array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * width
    )


def column(table: pa.Table, name: str, dtype: type[np.generic] = np.int64) -> np.ndarray:
    """A null-free fixed-width column as numpy (timestamps as their integer storage)."""
    chunks = table.column(name).chunks
    if not chunks:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([values(c) for c in chunks]).astype(dtype, copy=False)


_PER_MS = {"s": -1000, "ms": 1, "us": 1000, "ns": 1_000_000}


def milliseconds(table: pa.Table, name: str) -> np.ndarray:
    """A null-free timestamp column as int64 milliseconds since 1970, whatever its unit
    (ADBC delivers microseconds; the lake stores milliseconds)."""
    per_ms = _PER_MS[table.schema.field(name).type.unit]
    raw = column(table, name)
    return raw * -per_ms if per_ms < 0 else raw // per_ms
