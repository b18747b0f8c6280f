"""Warehouse schema migrations against a real PostgreSQL: shape, idempotence, concurrency."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

from pipeline.errors import MigrationError
from pipeline.load import ddl
from pipeline.load.migrations import MIGRATIONS, migrate
from pipeline.local.cli import main
from pipeline.summary_schema import SUMMARY_TABLES
from pipeline.warehouse_schema import FACTS, HISTORIES, PROCESSED_TABLES, WAREHOUSE_TABLES

pytestmark = pytest.mark.postgres
ALL = [m.version for m in MIGRATIONS]
MARKS = next(m.version for m in MIGRATIONS if m.statements is ddl.superseded_column_statements)


def _one(conn: psycopg.Connection, query: str, *params: object) -> object:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_migrate_creates_the_schema_once_and_is_idempotent(pg_dsn: str) -> None:
    assert migrate(pg_dsn) == ALL
    assert migrate(pg_dsn) == []
    with psycopg.connect(pg_dsn) as conn:
        tables = {
            r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        owned = {"etl_load_ledger", "schema_migrations", *SUMMARY_TABLES}
        assert set(PROCESSED_TABLES) | owned == tables
        assert _one(conn, "SELECT count(*) FROM schema_migrations") == len(ALL)
        for table in PROCESSED_TABLES:  # unqualified names resolve (BI queries)
            conn.execute(f"SELECT * FROM {table} LIMIT 0")


def test_schema_has_the_design_types_keys_and_foreign_keys(pg_dsn: str) -> None:
    migrate(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        types = dict(
            conn.execute(
                "SELECT table_name || '.' || column_name, "
                "format_type(a.atttypid, a.atttypmod) FROM information_schema.columns c "
                "JOIN pg_attribute a ON a.attrelid = c.table_name::regclass "
                "AND a.attname = c.column_name WHERE c.table_schema = 'public'"
            ).fetchall()
        )
        fks = conn.execute(
            "SELECT conrelid::regclass::text, a.attname, confrelid::regclass::text, convalidated "
            "FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
            "AND a.attnum = c.conkey[1] WHERE contype = 'f'"
        ).fetchall()
        uniques = conn.execute(
            "SELECT conrelid::regclass::text, contype, "
            "array(SELECT attname FROM pg_attribute WHERE attrelid = conrelid "
            "AND attnum = ANY(conkey) ORDER BY array_position(conkey, attnum)) "
            "FROM pg_constraint WHERE contype IN ('p', 'u') AND conrelid::regclass::text LIKE "
            "ANY(ARRAY['fact_%', 'dim_%'])"
        ).fetchall()
        seq = _one(conn, "SELECT pg_get_serial_sequence('fact_payment', 'payment_record_id')")
    assert types["fact_sales_order.created_time"] == "time(3) without time zone"
    assert types["fact_sales_order.unit_price"] == "numeric(10,2)"
    assert types["fact_payment.paid"] == "boolean"
    assert types["dim_date.date_id"] == "date"
    expected_fks = {
        (t.name, c.name, c.references, True) for t in FACTS for c in t.columns if c.references
    }
    assert set(fks) == expected_fks
    assert len(expected_fks) == 24  # 9 sales, 8 purchase, 7 payment
    for fact in FACTS:
        assert (fact.name, "p", [fact.primary_key]) in uniques
        assert (fact.name, "u", list(fact.natural_key)) in uniques
    assert ("dim_staff", "p", ["staff_id"]) in uniques
    for history in HISTORIES:  # a serial version id; one version per key and start
        assert (history.name, "p", [history.primary_key]) in uniques
        assert (history.name, "u", list(history.natural_key)) in uniques
    assert types["dim_staff_history.valid_from"] == "timestamp(3) without time zone"
    assert types["dim_staff_history.dim_staff_version_id"] == "bigint"
    assert seq == "public.fact_payment_payment_record_id_seq"
    for table in WAREHOUSE_TABLES:  # migration 0003: deletes are marks, never DELETEs
        assert types[f"{table}._deleted_at"] == "timestamp(3) without time zone"
    for fact in FACTS:  # the version marks: which version of a source row is current
        assert types[f"{fact.name}._superseded_at"] == "timestamp(3) without time zone"


def test_the_version_marks_are_filled_for_the_versions_already_there(pg_dsn: str) -> None:
    """The version-marks migration on a warehouse holding several versions per source id:
    every replaced version gets the next version's last_updated, the newest none."""
    migrate(pg_dsn)
    fact = WAREHOUSE_TABLES["fact_sales_order"]
    values = {"integer": "1", "date": "'2024-01-01'", "time(3)": "'12:00'"}
    stamps = [(1, "2024-01-02", "10:00"), (1, "2024-01-01", "09:00"), (1, "2024-01-02", "09:30"),
              (2, "2024-01-01", "08:00")]  # fmt: skip
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SET session_replication_role = replica")  # no dimension rows here
        for sid, day, time in stamps:
            row = {c.name: values.get(c.pg_type, "1") for c in fact.columns}
            row |= {fact.natural_key[0]: str(sid), "last_updated_date": f"'{day}'",
                    "last_updated_time": f"'{time}'"}  # fmt: skip
            conn.execute(
                f"INSERT INTO {fact.name} ({', '.join(row)}) VALUES ({', '.join(row.values())})"
            )
        for t in FACTS:  # back to the schema before the marks, with the versions in place
            conn.execute(f"ALTER TABLE {t.name} DROP COLUMN _superseded_at")
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (MARKS,))
    assert migrate(pg_dsn) == [MARKS]
    with psycopg.connect(pg_dsn) as conn:
        marks = conn.execute(
            f"SELECT {fact.natural_key[0]}, (last_updated_date + last_updated_time)::text, "
            f"_superseded_at::text FROM {fact.name} ORDER BY 1, 2"
        ).fetchall()
    assert marks == [
        (1, "2024-01-01 09:00:00", "2024-01-02 09:30:00"),
        (1, "2024-01-02 09:30:00", "2024-01-02 10:00:00"),
        (1, "2024-01-02 10:00:00", None),
        (2, "2024-01-01 08:00:00", None),
    ]


def test_concurrent_migrations_apply_each_version_once(make_database) -> None:
    dsn = make_database("mig")
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def worker() -> None:
        start.wait()
        try:
            results.append(migrate(dsn))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(v for r in results for v in r) == ALL
    with psycopg.connect(dsn) as conn:
        assert _one(conn, "SELECT count(*) FROM schema_migrations") == len(ALL)


def test_an_edited_applied_migration_is_refused(pg_dsn: str) -> None:
    migrate(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = '0001'")
    with pytest.raises(MigrationError, match="0001"):
        migrate(pg_dsn)


def test_init_warehouse_cli(pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init-warehouse", "--dsn", pg_dsn]) == 0
    assert json.loads(capsys.readouterr().out) == {"applied": ALL}
    assert main(["init-warehouse", "--dsn", pg_dsn]) == 0
    assert json.loads(capsys.readouterr().out) == {"applied": []}


def test_init_warehouse_cli_reads_warehouse_dsn(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WAREHOUSE_DSN", pg_dsn)
    assert main(["init-warehouse"]) == 0
    assert json.loads(capsys.readouterr().out) == {"applied": ALL}
