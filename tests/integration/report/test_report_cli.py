"""`totesys-etl report` and the demo: what a user runs, with its errors and its output."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pipeline.load import ddl
from pipeline.load.migrations import MIGRATIONS_TABLE, migrate, version_of
from pipeline.load.summaries import summary_statements
from pipeline.local.cli import main
from pipeline.summary_schema import SUMMARY_TABLES
from pipeline.warehouse_schema import FACTS, SUPERSEDED_AT
from tests.integration.report.conftest import LoadedWarehouse

pytestmark = pytest.mark.postgres


def test_json_summary_and_no_quarantine(loaded: LoadedWarehouse, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.html"
    args = ["report", "--warehouse-dsn", loaded.warehouse, "--no-quarantine", "--json"]
    assert main([*args, "--out", str(out), "--since", "2023-01-01"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["written"] == [str(out)] and printed["quarantine_read"] is False
    assert len(printed["charts"]) == 16 and out.stat().st_size == printed["bytes"]
    page = out.read_text()
    assert "processed zone not read" in page and "from 2023-01-01" in page


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--since", "2024-02-01", "--until", "2024-01-01"], "after until"),
        (["--processed-url", "/nonexistent/processed"], "does not exist"),
    ],
)
def test_bad_input_fails_before_writing(loaded, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "r.html"
    args = ["report", "--warehouse-dsn", loaded.warehouse, "--out", str(out), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_warehouse_without_schema_is_named(
    make_database: Callable[[str], str], tmp_path, capsys
) -> None:
    args = ["report", "--warehouse-dsn", make_database("empty"), "--no-quarantine"]
    assert main([*args, "--out", str(tmp_path / "r.html")]) == 2
    assert "init-warehouse" in capsys.readouterr().err


def _unapply(dsn: str, statements: Callable[[], list[sql.Composed]], undo: list[str]) -> str:
    """A warehouse as an older release left it: `undo` run, the migration's ledger row gone."""
    version = version_of(statements).version
    with psycopg.connect(dsn) as conn:
        for statement in undo:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.execute(f'DELETE FROM "{MIGRATIONS_TABLE}" WHERE version = %s', (version,))
    return version


def test_a_warehouse_without_the_version_marks_is_named(
    make_database: Callable[[str], str], tmp_path, capsys
) -> None:
    """A warehouse migrated by an older release (no `_superseded_at`): the report cannot tell
    current versions apart, so it names the migration to run instead of counting wrong. The
    migration ledger says what is applied (the columns are dropped too, as they would be)."""
    dsn = make_database("old")
    migrate(dsn)
    summaries = _unapply(dsn, summary_statements, [f"DROP TABLE {name}" for name in SUMMARY_TABLES])
    marks = _unapply(
        dsn,
        ddl.superseded_column_statements,
        [f"ALTER TABLE {t.name} DROP COLUMN {SUPERSEDED_AT}" for t in FACTS],
    )
    args = ["report", "--warehouse-dsn", dsn, "--no-quarantine"]
    assert main([*args, "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert f"migration {marks} (" in err and "init-warehouse" in err
    assert summaries not in err  # the summaries are optional: the report reads the facts


def test_a_warehouse_without_the_summaries_reads_the_facts(
    make_database: Callable[[str], str], tmp_path
) -> None:
    """The summaries' migration not applied yet (the report runs before the next load): the
    report reads the facts instead (both paths give the same numbers:
    tests/integration/report/test_current_versions.py)."""
    dsn = make_database("before-summaries")
    migrate(dsn)
    _unapply(dsn, summary_statements, [f"DROP TABLE {name}" for name in SUMMARY_TABLES])
    out = tmp_path / "r.html"
    assert main(["report", "--warehouse-dsn", dsn, "--no-quarantine", "--out", str(out)]) == 0
    assert out.read_text().count("no rows in this window") >= 10


def test_an_empty_warehouse_gives_a_report_that_says_so(make_database, tmp_path) -> None:
    dsn = make_database("fresh")
    migrate(dsn)
    out = tmp_path / "r.html"
    assert main(["report", "--warehouse-dsn", dsn, "--no-quarantine", "--out", str(out)]) == 0
    assert out.read_text().count("no rows in this window") >= 10


@pytest.mark.slow
def test_demo_prints_the_report_path_and_keeps_the_report(capsys) -> None:
    from pipeline.local.demo import run_demo

    assert run_demo(keep=False, days=1, scale=0.02) == 0
    printed = capsys.readouterr().out
    [path] = re.findall(r"report: (\S+report\.html)", printed)
    report = Path(path)
    assert report.is_file() and "sales-by-month" in report.read_text()
    assert not (report.parent / "lake").exists()  # the demo's data is gone, the report is not
    report.unlink()
    report.parent.rmdir()
