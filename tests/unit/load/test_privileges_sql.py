"""The loader grants as text: what docs/DEPLOY.md shows a DBA is what init-warehouse runs."""

from __future__ import annotations

from pathlib import Path

from pipeline.load import privileges
from pipeline.load.migrations import MIGRATIONS, migration_script
from pipeline.warehouse_schema import DIMENSIONS, FACTS, HISTORIES

DEPLOY = Path(__file__).resolve().parents[3] / "docs" / "DEPLOY.md"


def test_deploy_md_shows_the_grants_init_warehouse_runs() -> None:
    script = privileges.grant_script("etl_loader", "warehouse", "public")
    assert f"```sql\n{script}```" in DEPLOY.read_text()


def test_every_warehouse_table_is_granted_with_only_what_its_kind_needs() -> None:
    tables = {g.name: g.privileges for g in privileges.LOADER_GRANTS if g.kind == "TABLE"}
    assert {t.name: tables[t.name] for t in DIMENSIONS} == {
        t.name: ("SELECT", "INSERT", "UPDATE") for t in DIMENSIONS
    }
    facts = {t.name: tables[t.name] for t in FACTS}  # UPDATE: version and deletion marks
    assert facts == {t.name: ("SELECT", "INSERT", "UPDATE") for t in FACTS}
    every = ("SELECT", "INSERT", "UPDATE", "DELETE")  # a key's versions are replaced
    assert {t.name: tables[t.name] for t in HISTORIES} == {t.name: every for t in HISTORIES}
    elsewhere = [g for g in privileges.LOADER_GRANTS if g.name not in {t.name for t in HISTORIES}]
    granted = {p for g in elsewhere for p in g.privileges}
    assert granted.isdisjoint({"CREATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"})


def test_the_printed_migrations_hold_every_statement_and_its_bookkeeping_row() -> None:
    script = migration_script()
    for migration in MIGRATIONS:
        for statement in migration.rendered():
            assert f"{statement};\n" in script
        assert f"'{migration.checksum()}'" in script
