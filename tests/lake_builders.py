"""Write ingestion batches exactly as docs/CONTRACTS.md lays them out, for tests and benchmarks.

The extract step is the real producer; these helpers let transform/load tests build the
ingestion zone by hand (one Parquet part with the catalog Arrow schema plus the manifest
JSON that commits it) without a source database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import ingest_log, layout
from pipeline.catalog import TABLES
from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.warehouse_schema import WAREHOUSE_TABLES

_clock = itertools.count()
_EPOCH = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def next_committed_at() -> str:
    """A strictly increasing `committed_at`, so batches written in order are consumed in order."""
    return (_EPOCH + dt.timedelta(seconds=next(_clock))).isoformat(timespec="microseconds")


def ts(text: str) -> dt.datetime:
    """`'2024-11-03 10:00:00.123'` -> naive datetime (the source's timestamp(3))."""
    return dt.datetime.fromisoformat(text)


def to_catalog_table(table: str, rows: pa.Table | Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts or any Arrow table with the catalog's column names) cast to the catalog schema.

    Float numerics become decimal(10,2) and float ids (the snapshot's nullable ints) int32.
    """
    schema = TABLES[table].arrow_schema
    if not isinstance(rows, pa.Table):
        loose = pa.schema([f.with_nullable(True) for f in schema])
        rows = pa.Table.from_pylist(list(rows), schema=loose)
    columns, fields = [], []
    for field in schema:
        col = rows.column(field.name)
        if pa.types.is_decimal(field.type) and pa.types.is_floating(col.type):
            col = pc.round(col, 2)
        columns.append(col.cast(field.type))
        # A NULL in a NOT NULL column is bad input the transform must quarantine: keep it.
        fields.append(field.with_nullable(True) if col.null_count else field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def schema_fingerprint(table: str) -> str:
    return hashlib.sha256(TABLES[table].arrow_schema.to_string().encode()).hexdigest()[:16]


def write_batch(
    lake: Lake,
    table: str,
    run_id: str,
    rows: pa.Table | Sequence[Mapping[str, Any]],
    *,
    committed_at: str | None = None,
    parts: int = 1,
    mode: str = "incremental",
    commit: bool = True,
    legacy: bool = False,
) -> str:
    """Write one committed batch of `table` for `run_id`; returns the manifest key.

    `commit=False` writes only the data files (a crashed extract: readers must ignore them);
    `legacy=True` commits it as versions before the batch log did (a manifest only).
    """
    data = to_catalog_table(table, rows)
    committed_at = committed_at or next_committed_at()
    day = committed_at[:10]
    files = []
    size = max(1, -(-data.num_rows // parts))
    for i in range(parts):
        key = f"{table}/date={day}/{run_id}/part-{i:05d}.parquet"
        lake.write_parquet(key, data.slice(i * size, size))
        files.append(key)
    lu = data.column("last_updated")
    manifest_key = layout.ingestion_manifest(table, run_id)
    if commit:  # as the extract commits: the manifest, then the batch log entry
        manifest = {
            "table": table,
            "run_id": run_id,
            "files": files,
            "rows": data.num_rows,
            "cursor": {
                "from": _iso(pc.min(lu).as_py()),
                "to": _iso(pc.max(lu).as_py()),
            },
            "window": {"since": None, "until": None},
            # the source snapshot: as ordered as the commits (naive, like the source)
            "snapshot": {"from": committed_at[:26], "to": committed_at[:26]},
            "mode": mode,
            "schema_fingerprint": schema_fingerprint(table),
            "warnings": [],
            "committed_at": committed_at,
        }
        if not legacy:
            manifest["log_from"] = ingest_log.head(lake)
        lake.write_json(manifest_key, manifest)
        if not legacy:
            ingest_log.log_batch(lake, manifest_key, manifest, replayed=False)  # type: ignore[arg-type]
    return manifest_key


def log_entry_key(lake: Lake, manifest_key: str) -> str:
    """The key of the batch log entry of the batch committed at `manifest_key`."""
    for entry in ingest_log.batch_log(lake).entries():
        if entry["manifest"] == manifest_key:
            return layout.log_entry(layout.BATCH_LOG, int(entry["seq"]))
    raise KeyError(f"{manifest_key} is not in the batch log")


def write_tombstones(
    lake: Lake, table: str, run_id: str, keys: Sequence[int], *, at: str = "2024-11-05 12:00:00"
) -> str:
    """A committed tombstone batch (`layout.tombstone_schema`): `keys` found deleted `at`."""

    committed_at = next_committed_at()
    schema = layout.tombstone_schema(table)
    stamp = ts(at)
    data = pa.table(
        {
            TABLES[table].primary_key: pa.array(keys, pa.int32()),
            "last_updated": pa.array([ts(T0)] * len(keys), pa.timestamp("ms")),
            layout.DELETED_AT: pa.array([stamp] * len(keys), pa.timestamp("ms")),
        },
        schema=schema,
    )
    part = f"{table}/date={committed_at[:10]}/{run_id}/part-00000.parquet"
    lake.write_parquet(part, data)
    key = f"_manifests/{table}/{run_id}.json"
    lake.write_json(
        key,
        {
            "table": table,
            "run_id": run_id,
            "files": [part],
            "rows": len(keys),
            "cursor": {"from": None, "to": None},
            "window": {"since": None, "until": None},
            "snapshot": {"from": committed_at[:26], "to": committed_at[:26]},
            "mode": layout.TOMBSTONE_MODE,
            "schema_fingerprint": "",
            "warnings": [],
            "committed_at": committed_at,
            "log_from": ingest_log.head(lake),
        },
    )
    ingest_log.log_batch(
        lake, key, lake.read_json(key), replayed=False, kind=layout.BATCH_TOMBSTONES
    )
    return key


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def write_snapshot(lake: Lake, snapshot_dir: str, run_id: str) -> dict[str, str]:
    """Every table of the reference snapshot as one full batch each (run `run_id`)."""
    keys = {}
    for table in TABLES:
        raw = pq.read_table(f"{snapshot_dir}/{table}.parquet")
        keys[table] = write_batch(lake, table, run_id, raw, mode="full")
    return keys


# -- hand-made rows ------------------------------------------------------------------------
T0 = "2024-11-04 09:00:00.000"

DEFAULTS: dict[str, dict[str, Any]] = {
    "address": {
        "address_id": 1,
        "address_line_1": "6826 Herzog Via",
        "address_line_2": None,
        "district": "Avon",
        "city": "New Patienceburgh",
        "postal_code": "28441",
        "country": "Turkey",
        "phone": "1803 637401",
    },
    "department": {
        "department_id": 1,
        "department_name": "Sales",
        "location": "Manchester",
        "manager": "Richard Roma",
    },
    "staff": {
        "staff_id": 1,
        "first_name": "Jeremie",
        "last_name": "Franey",
        "department_id": 1,
        "email_address": "jeremie.franey@terrifictotes.com",
    },
    "counterparty": {
        "counterparty_id": 1,
        "counterparty_legal_name": "Fahey and Sons",
        "legal_address_id": 1,
        "commercial_contact": "Micheal Toy",
        "delivery_contact": "Mrs. Lucy Runolfsdottir",
    },
    "currency": {"currency_id": 1, "currency_code": "GBP"},
    "design": {
        "design_id": 1,
        "design_name": "Wooden",
        "file_location": "/home/user/dir",
        "file_name": "wooden-20220717-npgz.json",
    },
    "payment_type": {"payment_type_id": 1, "payment_type_name": "SALES_RECEIPT"},
    "transaction": {
        "transaction_id": 1,
        "transaction_type": "SALE",
        "sales_order_id": 1,
        "purchase_order_id": None,
    },
    "sales_order": {
        "sales_order_id": 1,
        "design_id": 1,
        "staff_id": 1,
        "counterparty_id": 1,
        "units_sold": 100,
        "unit_price": Decimal("2.50"),
        "currency_id": 1,
        "agreed_delivery_date": "2024-11-10",
        "agreed_payment_date": "2024-11-12",
        "agreed_delivery_location_id": 1,
    },
    "purchase_order": {
        "purchase_order_id": 1,
        "staff_id": 1,
        "counterparty_id": 1,
        "item_code": "ZDOI5EA",
        "item_quantity": 371,
        "item_unit_price": Decimal("361.39"),
        "currency_id": 1,
        "agreed_delivery_date": "2024-11-09",
        "agreed_payment_date": "2024-11-08",
        "agreed_delivery_location_id": 1,
    },
    "payment": {
        "payment_id": 1,
        "transaction_id": 1,
        "counterparty_id": 1,
        "payment_amount": Decimal("250.00"),
        "currency_id": 1,
        "payment_type_id": 1,
        "paid": False,
        "payment_date": "2024-11-12",
        "company_ac_number": 67305075,
        "counterparty_ac_number": 31622269,
    },
}
LOOKUP_TABLES = (
    "address",
    "department",
    "staff",
    "counterparty",
    "currency",
    "design",
    "payment_type",
    "transaction",
)


def row(table: str, *, at: str = T0, created: str | None = None, **values: Any) -> dict[str, Any]:
    """A valid `table` row (DEFAULTS) with `values` overriding; `at` is its last_updated."""
    unknown = set(values) - set(DEFAULTS[table])
    if unknown:
        raise KeyError(f"{table} has no column(s) {sorted(unknown)}")
    return {**DEFAULTS[table], **values, "created_at": ts(created or at), "last_updated": ts(at)}


def write_lookups(lake: Lake, run_id: str, *, at: str = T0) -> None:
    """One valid row (id 1) of every lookup table: facts built from DEFAULTS all resolve."""
    for table in LOOKUP_TABLES:
        write_batch(lake, table, run_id, [row(table, at=at)])


def read_outputs(processed: Lake, run_id: str) -> dict[str, pl.DataFrame]:
    """Every warehouse table of a committed transform run, from its manifest's file list."""
    manifest = processed.read_json(f"_manifests/{run_id}.json")
    out = {}
    for name, spec in WAREHOUSE_TABLES.items():
        files = manifest["outputs"][name]["files"]
        table = processed.read_parquet(files, schema=spec.arrow_schema)
        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
        out[name] = df
    return out


def read_quarantine(processed: Lake, run_id: str, table: str) -> pl.DataFrame:
    key = f"_quarantine/{table}/run={run_id}.parquet"
    if not processed.exists(key):
        return pl.DataFrame()
    df = pl.from_arrow(processed.read_parquet([key]))
    assert isinstance(df, pl.DataFrame)
    return df


def run_transform(lakes: tuple[Lake, Lake], run_id: str = "t1") -> dict[str, Any]:
    """Transform (ingest, processed) and return the result plus every output by table."""
    from pipeline.transform import transform

    ingest, processed = lakes
    result = transform(run_id, Settings(ingest_url=ingest.url, processed_url=processed.url))
    assert result.status == "ok"
    return {"result": result, **read_outputs(processed, run_id)}
