"""Source column types as the drift policy sees them: parsed, compared, mapped to Arrow.

PostgreSQL spells a column's type with `format_type()` (`character varying(3)`,
`numeric(10,2)`, `timestamp(3) without time zone`, `"TransactionType"` ...). `parse` reduces
that text to a kind and its size, `compare` says whether a live type is the catalog's,
wider (every value of the catalog type still fits), narrower or another kind, and
`arrow_type`/`read_as_text` say how a column the catalog does not know is read and stored.
Enum types are one kind whatever their name or schema: their labels are compared apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

import pyarrow as pa

# How PostgreSQL's format_type() spells the DDL's short forms (other names are identical).
_SHORT_FORMS = (
    (re.compile(r"^varchar(\(\d+\))?$"), r"character varying\1"),
    (re.compile(r"^timestamp(\(\d\))?$"), r"timestamp\1 without time zone"),
    (re.compile(r"^timestamptz(\(\d\))?$"), r"timestamp\1 with time zone"),
)
_INTEGER_BYTES = {"smallint": 2, "integer": 4, "bigint": 8}
_VARCHAR = re.compile(r"^character varying(?:\((\d+)\))?$")
_NUMERIC = re.compile(r"^numeric(?:\((\d+),(\d+)\))?$")
_TIMESTAMP = re.compile(r"^timestamp(?:\((\d)\))? with(out)? time zone$")
_MAX_DECIMAL_PRECISION = 38  # decimal128
_DEFAULT_TIMESTAMP_PRECISION = 6


class Change(Enum):
    SAME = "same"
    WIDER = "wider"  # every value of the catalog type is still representable
    NARROWER = "narrower"
    KIND = "kind"  # another kind of type altogether (text to integer, timestamp to text...)


@dataclass(frozen=True)
class PgType:
    """A type reduced to what decides compatibility. `size`: bytes of an integer, maximum
    length of a text (None: unbounded), precision of a numeric (None: unconstrained) or of
    a timestamp; `scale`: a numeric's scale."""

    text: str  # as format_type() spells it, for messages
    kind: str  # integer | text | numeric | timestamp | timestamptz | boolean | enum | <text>
    size: int | None = None
    scale: int | None = None


def format_type(pg_type: str) -> str:
    """The catalog's DDL type as `format_type()` spells it (`varchar(3)`: `character
    varying(3)`)."""
    for pattern, replacement in _SHORT_FORMS:
        if pattern.match(pg_type):
            return pattern.sub(replacement, pg_type)
    return pg_type


def parse(text: str, *, enum: bool = False) -> PgType:
    """`text` is a `format_type()` result; `enum` says the type is an enum (by pg_type)."""
    if enum:
        return PgType(text, "enum")
    if text in _INTEGER_BYTES:
        return PgType(text, "integer", _INTEGER_BYTES[text])
    if text == "text":
        return PgType(text, "text")
    if m := _VARCHAR.match(text):
        return PgType(text, "text", int(m.group(1)) if m.group(1) else None)
    if m := _NUMERIC.match(text):
        if m.group(1) is None:
            return PgType(text, "numeric")
        return PgType(text, "numeric", int(m.group(1)), int(m.group(2)))
    if m := _TIMESTAMP.match(text):
        precision = int(m.group(1)) if m.group(1) else _DEFAULT_TIMESTAMP_PRECISION
        return PgType(text, "timestamp" if m.group(2) else "timestamptz", precision)
    return PgType(text, text)  # boolean, date, double precision, json, ...: compared by name


def _order(want: int | None, got: int | None) -> Change:
    """Sizes where None means unbounded."""
    if want == got:
        return Change.SAME
    if got is None or (want is not None and got > want):
        return Change.WIDER
    return Change.NARROWER


def compare(want: PgType, got: PgType) -> Change:
    """How the live type `got` relates to the catalog's `want`."""
    if want.kind == "enum":  # its values are read as text; the labels are checked apart
        if got.kind == "enum":
            return Change.SAME
        return Change.WIDER if got.kind == "text" else Change.KIND
    if want.kind != got.kind:
        return Change.KIND
    if want.kind in ("integer", "text"):
        return _order(want.size, got.size)
    if want.kind == "numeric":
        if (want.size, want.scale) == (got.size, got.scale):
            return Change.SAME
        if got.size is None:
            return Change.WIDER  # unconstrained: holds every value
        if want.size is None or want.scale is None or got.scale is None:
            return Change.NARROWER
        keeps = got.scale >= want.scale and got.size - got.scale >= want.size - want.scale
        return Change.WIDER if keeps else Change.NARROWER
    if want.kind in ("timestamp", "timestamptz"):  # milliseconds are part of the contract
        return Change.SAME if want.size == got.size else Change.KIND
    return Change.SAME if want.text == got.text else Change.KIND


def read_as_text(pg: PgType) -> bool:
    """Select the column as `::text`: ADBC's decoding of enums and numerics is opaque or
    slow (see `pipeline.extract.source`), and any type without an Arrow mapping here
    travels as its exact text form."""
    return pg.kind not in ("integer", "text", "timestamp", "timestamptz", "boolean", "date")


def arrow_type(pg: PgType) -> pa.DataType:
    """The Arrow type a column the catalog does not know is stored as, in the ingestion
    Parquet: the closest lossless type, else its text form."""
    if pg.kind == "integer":
        return {2: pa.int16(), 4: pa.int32(), 8: pa.int64()}[pg.size or 4]
    if pg.kind == "boolean":
        return pa.bool_()
    if pg.kind == "date":
        return pa.date32()
    if pg.kind == "numeric" and pg.size is not None and pg.size <= _MAX_DECIMAL_PRECISION:
        return pa.decimal128(pg.size, pg.scale or 0)
    if pg.kind == "timestamp":
        return pa.timestamp("ms" if (pg.size or 0) <= 3 else "us")
    if pg.kind == "timestamptz":
        return pa.timestamp("ms" if (pg.size or 0) <= 3 else "us", tz="UTC")
    return pa.string()
