"""PostgreSQL binary COPY rows built with numpy, without a Python loop per row.

The server parses binary input about twice as fast as CSV (measured: 1.4M payment rows,
4.0 s as CSV, 2.0 s as binary). A binary row is a field count followed by
(length, bytes) per field; when every field of a set of rows has the same length, those
rows share one numpy structured dtype and are encoded in a single `tobytes()`. Rows are
grouped by layout (which fields are NULL, text lengths): `transaction` has two layouts
(SALE and PURCHASE rows). Frames with many layouts (free text) are not `supports`-ed and
go through CSV instead.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.catalog import ENUMS, Table

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # magic, flags, header extension length
TRAILER = b"\xff\xff"
MAX_LAYOUTS = 16
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
_FIXED_WIDTH = {"integer": 4, "timestamp(3)": 8, "boolean": 1, "numeric(10,2)": 14}
_TEXT_TYPES = {"text", "varchar(3)", *ENUMS}


def _lengths(frame: pl.DataFrame, table: Table) -> pl.DataFrame:
    """Wire length of each field (-1 = NULL), one column per table column."""
    exprs = []
    for column in table.columns:
        col = pl.col(column.name)
        if column.pg_type in _TEXT_TYPES:
            length = col.str.len_bytes().cast(pl.Int32)
        else:
            length = pl.lit(_FIXED_WIDTH[column.pg_type], dtype=pl.Int32)
        exprs.append(pl.when(col.is_null()).then(-1).otherwise(length).alias(column.name))
    return frame.select(exprs)


def _numeric_10_2(values: pl.Series) -> dict[str, np.ndarray]:
    """numeric(10,2) as 3 base-10000 digits (weight 1, dscale 2): 12345678.9 ->
    [1234, 5678, 9000]. PostgreSQL strips the zero digits itself on receive."""
    cents = np.rint(values.cast(pl.Float64).to_numpy() * 100).astype(np.int64)
    sign = np.where(cents < 0, 0x4000, 0)
    cents = np.abs(cents)
    units = cents // 100
    return {
        "ndigits": np.full(len(cents), 3),
        "weight": np.ones(len(cents)),
        "sign": sign,
        "dscale": np.full(len(cents), 2),
        "d0": units // 10_000,
        "d1": units % 10_000,
        "d2": (cents % 100) * 100,
    }


def _encode_layout(frame: pl.DataFrame, table: Table, lengths: list[int]) -> bytes:
    """Rows that all share `lengths` (one per column) as binary COPY tuples."""
    fields: list[tuple[str, str]] = [("nfields", ">i2")]
    values: dict[str, object] = {"nfields": len(table.columns)}
    for i, (column, length) in enumerate(zip(table.columns, lengths, strict=True)):
        fields.append((f"len{i}", ">i4"))
        values[f"len{i}"] = length
        if length <= 0:  # NULL, or an empty string: no value bytes
            continue
        series = frame[column.name]
        if column.pg_type in _TEXT_TYPES:
            fields.append((f"v{i}", f"S{length}"))
            joined = series.str.join("").item().encode()
            values[f"v{i}"] = np.frombuffer(joined, dtype=f"S{length}")
        elif column.pg_type == "integer":
            fields.append((f"v{i}", ">i4"))
            values[f"v{i}"] = series.to_numpy()
        elif column.pg_type == "timestamp(3)":
            fields.append((f"v{i}", ">i8"))
            micros = series.dt.cast_time_unit("us").cast(pl.Int64).to_numpy()
            values[f"v{i}"] = micros - _PG_EPOCH_US
        elif column.pg_type == "boolean":
            fields.append((f"v{i}", "u1"))
            values[f"v{i}"] = series.to_numpy()
        else:  # numeric(10,2)
            for part, digits in _numeric_10_2(series).items():
                fields.append((f"v{i}{part}", ">i2" if part != "sign" else ">u2"))
                values[f"v{i}{part}"] = digits
    rows = np.zeros(frame.height, dtype=np.dtype(fields))
    for name, value in values.items():
        rows[name] = value
    return rows.tobytes()


def supports(frame: pl.DataFrame, table: Table) -> bool:
    """Can `frame` be encoded here: few row layouts, integers within `integer` range?
    (Otherwise use CSV, and let the server report out-of-range values itself.)"""
    for column in table.columns:
        if column.pg_type == "integer" and frame.height:
            low, high = frame[column.name].min(), frame[column.name].max()
            if low is not None and (low < -(2**31) or high >= 2**31):  # type: ignore[operator]
                return False
    return _lengths(frame, table).n_unique() <= MAX_LAYOUTS


def encode(frame: pl.DataFrame, table: Table) -> list[bytes]:
    """Binary COPY tuples for `frame` (catalog columns), one block per row layout; no
    signature or trailer (see SIGNATURE, TRAILER)."""
    frame = frame.select(table.column_names)
    lengths = _lengths(frame, table)
    layouts = lengths.unique(maintain_order=True)
    if layouts.height == 1:
        return [_encode_layout(frame, table, list(layouts.row(0)))]
    keyed = pl.concat([frame, lengths.rename(lambda c: f"__len_{c}")], how="horizontal")
    blocks = []
    for layout in layouts.iter_rows():
        match = pl.all_horizontal(
            pl.col(f"__len_{c.name}") == n for c, n in zip(table.columns, layout, strict=True)
        )
        blocks.append(_encode_layout(keyed.filter(match), table, list(layout)))
    return blocks
