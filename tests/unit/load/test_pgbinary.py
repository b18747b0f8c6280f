"""The Arrow -> PostgreSQL binary COPY encoder, byte for byte against the wire format."""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal

import pyarrow as pa
import pytest

from pipeline.load.pgbinary import encode_batch
from pipeline.warehouse_schema import WColumn


def _batch(columns: list[WColumn], rows: list[dict]) -> pa.RecordBatch:
    schema = pa.schema([pa.field(c.name, c.arrow_type, nullable=True) for c in columns])
    return pa.RecordBatch.from_pylist(rows, schema=schema)


def _field(payload: bytes | None) -> bytes:
    return struct.pack(">i", -1) if payload is None else struct.pack(">i", len(payload)) + payload


def _numeric(sign: int, digits: tuple[int, int, int]) -> bytes:
    return struct.pack(">hhHh3h", 3, 1, sign, 2, *digits)


COLUMNS = [
    WColumn("i", "integer"),
    WColumn("d", "date"),
    WColumn("t", "time(3)"),
    WColumn("n", "numeric(10,2)"),
    WColumn("b", "boolean"),
    WColumn("s", "text"),
]


def _expected(i, d, t, n, b, s) -> bytes:
    return struct.pack(">h", 6) + b"".join(_field(x) for x in (i, d, t, n, b, s))


def test_each_type_in_the_wire_layout() -> None:
    row = {
        "i": -7,
        "d": dt.date(2000, 1, 2),
        "t": dt.time(0, 0, 1, 5000),
        "n": Decimal("-12345678.99"),
        "b": True,
        "s": "é€",
    }
    assert encode_batch(COLUMNS, _batch(COLUMNS, [row])) == _expected(
        struct.pack(">i", -7),
        struct.pack(">i", 1),  # days since 2000-01-01
        struct.pack(">q", 1_005_000),  # microseconds since midnight
        _numeric(0x4000, (1234, 5678, 9900)),
        b"\x01",
        "é€".encode(),
    )


def test_nulls_are_length_minus_one_between_values() -> None:
    rows = [
        {"i": 1, "d": None, "t": None, "n": Decimal("0.05"), "b": None, "s": None},
        {
            "i": None,
            "d": dt.date(1999, 12, 31),
            "t": dt.time(23, 59),
            "n": None,
            "b": False,
            "s": "",
        },
    ]
    assert encode_batch(COLUMNS, _batch(COLUMNS, rows)) == _expected(
        struct.pack(">i", 1), None, None, _numeric(0, (0, 0, 500)), None, None
    ) + _expected(
        None,
        struct.pack(">i", -1),
        struct.pack(">q", (23 * 3600 + 59 * 60) * 1_000_000),
        None,
        b"\x00",
        b"",
    )


@pytest.mark.parametrize("values", [["ab", "cd", "ef"], ["same"] * 4, ["a", "bcd", ""], [""]])
def test_text_of_one_length_and_of_many_lengths_encode_alike(values: list[str]) -> None:
    cols = [WColumn("i", "integer"), WColumn("s", "text")]
    batch = _batch(cols, [{"i": k, "s": v} for k, v in enumerate(values)])
    expected = b"".join(
        struct.pack(">h", 2) + _field(struct.pack(">i", k)) + _field(v.encode())
        for k, v in enumerate(values)
    )
    assert encode_batch(cols, batch) == expected
    first = encode_batch(cols, batch.slice(0, 1))
    assert encode_batch(cols, batch.slice(1)) == expected[len(first) :]  # offset arrays


def test_sliced_batches_encode_their_own_rows() -> None:
    rows = [
        {
            "i": k,
            "d": dt.date(2024, 2, 29),
            "t": dt.time(12),
            "n": Decimal(k),
            "b": k % 2 == 0,
            "s": "x",
        }
        for k in range(10)
    ]
    batch = _batch(COLUMNS, rows)
    whole = encode_batch(COLUMNS, batch)
    assert encode_batch(COLUMNS, batch.slice(3, 4)) == b"".join(
        encode_batch(COLUMNS, batch.slice(k, 1)) for k in range(3, 7)
    )
    assert whole == encode_batch(COLUMNS, batch.slice(0, 5)) + encode_batch(COLUMNS, batch.slice(5))


def test_decode_int_column_reads_what_copy_to_sends() -> None:
    from pipeline.load.pgbinary import HEADER, TRAILER, decode_int_column

    cols = [WColumn("i", "integer")]
    data = HEADER + encode_batch(cols, _batch(cols, [{"i": v} for v in (5, -1, 2**31 - 1)]))
    assert decode_int_column(data + TRAILER).tolist() == [5, -1, 2**31 - 1]
    assert decode_int_column(HEADER + TRAILER).tolist() == []
    two = [WColumn("i", "integer"), WColumn("j", "integer")]
    with pytest.raises(ValueError, match="one-column"):
        decode_int_column(HEADER + encode_batch(two, _batch(two, [{"i": 1, "j": 2}])) + TRAILER)


def test_sliced_batches_with_nulls_encode_their_own_rows() -> None:
    rows = [
        {
            "i": None if k % 3 == 0 else k,
            "d": None if k % 4 == 1 else dt.date(2024, 2, 29),
            "t": None if k % 5 == 2 else dt.time(12, 0, 0, 1000 * k),
            "n": None if k % 2 else Decimal(k),
            "b": None if k % 3 == 2 else k % 2 == 0,
            "s": None if k % 4 == 3 else "é" * k,
        }
        for k in range(19)
    ]
    batch = _batch(COLUMNS, rows)
    singles = [encode_batch(COLUMNS, _batch(COLUMNS, [r])) for r in rows]
    assert encode_batch(COLUMNS, batch) == b"".join(singles)
    for start, length in [(1, 9), (5, 14), (9, 3), (17, 2)]:
        part = batch.slice(start, length)
        assert encode_batch(COLUMNS, part) == b"".join(singles[start : start + length])


def test_null_text_slots_that_still_span_bytes_are_sent_as_null() -> None:
    import numpy as np

    cols = [WColumn("s", "text")]
    offsets = np.array([0, 2, 5, 6], dtype=np.int32)  # row 1 is null but spans b"xyz"
    validity = np.packbits(np.array([1, 0, 1], dtype=bool), bitorder="little")
    data = pa.Array.from_buffers(
        pa.string(),
        3,
        [
            pa.py_buffer(validity.tobytes()),
            pa.py_buffer(offsets.tobytes()),
            pa.py_buffer(b"abxyzc"),
        ],
        null_count=1,
    )
    batch = pa.RecordBatch.from_arrays([data], names=["s"])
    expected = b"".join(struct.pack(">h", 1) + _field(v) for v in (b"ab", None, b"c"))
    assert encode_batch(cols, batch) == expected


def test_array_helpers_build_arrow_arrays_without_python_objects() -> None:
    import numpy as np

    from pipeline.load.pgbinary import bool_array, constant_text, int32_array

    assert int32_array(np.arange(3, 6)).to_pylist() == [3, 4, 5]
    mask = np.array([True, False] * 5 + [True])
    assert bool_array(mask).to_pylist() == mask.tolist()
    assert constant_text(b"run-1", 3).to_pylist() == ["run-1"] * 3
    assert constant_text(b"", 2).to_pylist() == ["", ""]
    assert constant_text(b"x", 0).to_pylist() == []
