"""Load a Parquet snapshot of a real totesys database (one file per table) as the source.

For local end-to-end checks against real data (for example the November 2024 snapshot).
Snapshots exported through pandas store `numeric` columns and nullable integer ids as
float64 and timestamps as nanoseconds: each column is brought back to the catalog type
(money rounded to cents, ids to integers, timestamps to milliseconds) before the same
bulk load that `seed` uses.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.catalog import TABLE_NAMES, TABLES, Table
from pipeline.errors import SimulatorInputError
from pipeline.local.simulator.seed import load_frames

_POLARS_TYPES: dict[str, pl.DataType] = {
    "integer": pl.Int32(),
    "numeric(10,2)": pl.Float64(),  # the bulk loader writes floats with two decimals
    "timestamp(3)": pl.Datetime("ms"),
    "boolean": pl.Boolean(),
}


def _read_table(directory: Path, table: Table) -> pl.DataFrame:
    path = directory / f"{table.name}.parquet"
    if not path.is_file():
        raise SimulatorInputError(
            f"snapshot {directory} has no {path.name} for table {table.name!r}"
        )
    frame = pl.read_parquet(path)
    missing = [c for c in table.column_names if c not in frame.columns]
    if missing:
        raise SimulatorInputError(
            f"snapshot file {path} lacks column(s) {', '.join(missing)} of table {table.name!r}"
        )
    columns = []
    for column in table.columns:
        expr = pl.col(column.name)
        if column.pg_type == "numeric(10,2)":
            expr = expr.round(2)
        target = _POLARS_TYPES.get(column.pg_type, pl.String())
        columns.append(expr.cast(target, strict=True).alias(column.name))
    return frame.select(columns)


def load_snapshot(
    dsn: str,
    directory: str | Path,
    *,
    force: bool = False,
    cursor_indexes: bool = False,
    into_existing: bool = False,
) -> dict[str, int]:
    """Create the totesys schema in `dsn` and fill it from `directory/<table>.parquet`
    (`into_existing`: fill the empty totesys tables already there; see `load_frames`)."""
    root = Path(directory)
    return load_frames(
        dsn,
        lambda: {t: _read_table(root, TABLES[t]) for t in TABLE_NAMES},
        force=force,
        cursor_indexes=cursor_indexes,
        into_existing=into_existing,
    )
