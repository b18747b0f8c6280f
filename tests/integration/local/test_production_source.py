"""Whole runs against the production schema with the drift a real source shows: Prisma's
`_prisma_migrations` and tables the catalog does not list, an added column, a new enum
label (R12, R28). Extract-level drift cases: tests/integration/extract/test_drift.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from pipeline.catalog import TABLE_NAMES, TABLES
from pipeline.lake import Lake
from pipeline.local.cli import main
from pipeline.local.runner import run_pipeline
from pipeline.local.simulator.seed import seed
from pipeline.settings import Settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def dbs(make_database: Callable[[str], str]) -> tuple[str, str]:
    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.01, seed=3)
    return source, warehouse


def _execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def test_prisma_migrations_and_unknown_tables_are_never_extracted_nor_warned(
    dbs: tuple[str, str], tmp_path: Path
) -> None:
    source, _ = dbs
    _execute(
        source,
        "CREATE TABLE audit_log (id serial PRIMARY KEY, note text, "
        "last_updated timestamp(3) NOT NULL DEFAULT now())",
        "INSERT INTO audit_log (note) VALUES ('hello')",
    )
    with psycopg.connect(source) as conn:
        assert conn.execute("SELECT count(*) FROM _prisma_migrations").fetchone() == (1,)
    report = run_pipeline(Settings.in_folder(tmp_path, source_dsn=dbs[0], warehouse_dsn=dbs[1]))
    assert report.succeeded, report.to_dict()
    assert list(report.tables) == list(TABLE_NAMES)
    assert report.warnings == {}
    lake = Lake(str(tmp_path / "ingestion"))
    assert not [k for k in lake.list() if "prisma" in k or "audit_log" in k]


def test_an_added_column_is_captured_ignored_by_the_transform_and_warned_in_the_summary(
    dbs: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, warehouse = dbs
    _execute(
        source,
        "ALTER TABLE staff ADD COLUMN nickname varchar(40)",
        "UPDATE staff SET nickname = 'Jo' WHERE staff_id = 1",
    )
    args = [
        "run", "--source-dsn", source, "--warehouse-dsn", warehouse,
        "--ingest-url", str(tmp_path / "ingestion"), "--processed-url", str(tmp_path / "processed"),
    ]  # fmt: skip
    assert main(args) == 0
    summary = capsys.readouterr().out
    assert "warning" in summary and "nickname" in summary  # the printed run summary

    lake = Lake(str(tmp_path / "ingestion"))
    [key] = lake.list("_manifests/staff/")
    manifest = lake.read_json(key)
    assert manifest["added_columns"] == ["nickname"]
    assert manifest["schema"][-1]["name"] == "nickname"
    assert manifest["schema"][-1]["source_type"] == "character varying(40)"
    rows = pq.read_table(lake.path(manifest["files"][0])).to_pylist()
    assert {r["staff_id"]: r["nickname"] for r in rows}[1] == "Jo"
    with psycopg.connect(warehouse) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'dim_staff' ORDER BY ordinal_position"
            )
        ]
        staff = conn.execute("SELECT count(*) FROM dim_staff").fetchone()
    assert "nickname" not in columns and staff == (len(rows),)

    assert main([*args, "--json"]) == 0  # the next run says it again, as long as it is true
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "succeeded"
    assert list(out["warnings"]) == ["staff"] and "nickname" in out["warnings"]["staff"][0]


def test_a_new_enum_label_flows_as_text_and_is_quarantined_with_a_reason(
    dbs: tuple[str, str], tmp_path: Path
) -> None:
    source, warehouse = dbs
    _execute(
        source,
        "ALTER TYPE \"PaymentTypeName\" ADD VALUE 'CREDIT_NOTE'",
        "INSERT INTO payment_type (payment_type_name, last_updated) VALUES ('CREDIT_NOTE', now())",
    )
    report = run_pipeline(Settings.in_folder(tmp_path, source_dsn=dbs[0], warehouse_dsn=dbs[1]))
    assert report.succeeded, report.to_dict()
    [warning] = report.warnings["payment_type"]
    assert "CREDIT_NOTE" in warning
    assert report.tables["payment_type"]["rows"] == 5
    assert report.quarantined == 1
    processed = Lake(str(tmp_path / "processed"))
    [key] = processed.list("_quarantine/payment_type/")
    [row] = processed.read_parquet([key]).to_pylist()
    assert row["payment_type_name"] == "CREDIT_NOTE" and row["_rule"] == "invalid_enum"
    assert "CREDIT_NOTE is not one of SALES_RECEIPT" in row["_reason"]
    with psycopg.connect(warehouse) as conn:
        assert conn.execute("SELECT count(*) FROM dim_payment_type").fetchone() == (
            len(TABLES["payment_type"].column("payment_type_name").enum_labels or ()),
        )
