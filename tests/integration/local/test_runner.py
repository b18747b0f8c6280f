"""Issue 6: the local runner end to end (seed, run, simulate, run, run again)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pipeline.local.cli import main
from pipeline.local.runner import run_pipeline
from pipeline.local.simulator.seed import seed
from pipeline.local.simulator.simulate import simulate
from pipeline.settings import Settings
from tests.warehouse_compare import assert_equivalent_to_clean_pass, warehouse_contents

pytestmark = pytest.mark.postgres


def _clean_pass(source: str, make_database: Callable[[str], str], lake: Path) -> dict:
    warehouse = make_database("clean")
    report = run_pipeline(Settings.in_folder(lake, source_dsn=source, warehouse_dsn=warehouse))
    assert report.succeeded, report.to_dict()
    return warehouse_contents(warehouse)


def test_seed_run_simulate_run_again_equals_clean_passes(
    make_database: Callable[[str], str], tmp_path: Path
) -> None:
    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.05, seed=3)
    settings = Settings.in_folder(tmp_path / "lake", source_dsn=source, warehouse_dsn=warehouse)

    first = run_pipeline(settings)
    assert first.succeeded, first.to_dict()
    assert first.tables["sales_order"]["rows"] > 0
    assert_equivalent_to_clean_pass(
        warehouse_contents(warehouse), _clean_pass(source, make_database, tmp_path / "c1")
    )

    simulate(source, days=4, seed=11)
    second = run_pipeline(settings)
    assert second.succeeded, second.to_dict()
    assert second.load and second.load["rows"].get("fact_sales_order", 0) > 0
    after_second = warehouse_contents(warehouse)
    assert_equivalent_to_clean_pass(
        after_second, _clean_pass(source, make_database, tmp_path / "c2")
    )

    third = run_pipeline(settings)
    assert third.succeeded, third.to_dict()
    assert sum((third.load or {}).get("rows", {}).values()) == 0
    assert warehouse_contents(warehouse) == after_second


def test_failing_table_exits_non_zero_loads_others_and_rerun_succeeds(
    make_database: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.02, seed=5)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE design RENAME COLUMN file_name TO file_name_old")
    args = [
        "run", "--json", "--source-dsn", source, "--warehouse-dsn", warehouse,
        "--ingest-url", str(tmp_path / "i"), "--processed-url", str(tmp_path / "p"),
    ]  # fmt: skip
    assert main(args) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "failed"
    assert out["tables"]["design"]["status"] == "failed"
    assert "SchemaDriftError" in out["tables"]["design"]["error"]
    assert out["rerun"] == "totesys-etl run --tables design"
    assert out["tables"]["currency"]["status"] != "failed"
    assert out["loaded"].get("dim_currency", 0) > 0

    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE design RENAME COLUMN file_name_old TO file_name")
    assert main([*args, "--tables", "design"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "succeeded"
    assert_equivalent_to_clean_pass(
        warehouse_contents(warehouse), _clean_pass(source, make_database, tmp_path / "clean")
    )


def test_status_reports_watermarks_pending_work_and_runs(
    make_database: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.01, seed=9)
    lake = [
        "--ingest-url", str(tmp_path / "i"), "--processed-url", str(tmp_path / "p"),
    ]  # fmt: skip
    status = ["status", "--json", "--warehouse-dsn", warehouse, *lake]

    assert main(status) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["tables"]["sales_order"]["watermark"] is None
    assert before["recent_runs"] == []

    extract = ["extract", "currency", "--source-dsn", source, "--run-id", "r0", *lake[:2]]
    assert main(extract) == 0
    capsys.readouterr()
    assert main(status) == 0
    waiting = json.loads(capsys.readouterr().out)
    assert waiting["waiting_for_transform"] == ["_manifests/currency/r0.json"]

    run = ["run", "--json", "--source-dsn", source, "--warehouse-dsn", warehouse, *lake]
    assert main(run) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert main(status) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["tables"]["sales_order"]["watermark"] is not None
    assert after["tables"]["sales_order"]["last_run"] == run_id
    reconciled = after["tables"]["sales_order"]["reconcile"]
    assert reconciled["run_id"] == run_id and reconciled["reconciled_at"]
    assert reconciled["buckets_compared"] > 0 and reconciled["buckets_differed"] == 0
    assert {"rows_recovered", "keys_deleted"} <= set(reconciled)
    assert before["tables"]["sales_order"]["reconcile"] is None
    assert after["waiting_for_transform"] == []
    assert after["waiting_for_load"] == []
    assert [(r["run_id"], r["status"]) for r in after["recent_runs"]] == [(run_id, "succeeded")]


def test_run_failing_after_extract_is_caught_up_by_the_next_run(
    make_database: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R9: what a failed run extracted is loaded, in order, by the next run."""
    import pipeline.transform as transform_module
    from pipeline.errors import TransientError

    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.02, seed=21)
    settings = Settings.in_folder(tmp_path / "lake", source_dsn=source, warehouse_dsn=warehouse)

    def broken(*args: object, **kwargs: object) -> None:
        raise TransientError("transform crashed (injected)")

    with monkeypatch.context() as patch:
        patch.setattr(transform_module, "transform", broken)
        failed = run_pipeline(settings)
    assert not failed.succeeded and "injected" in (failed.error or "")
    assert failed.tables["sales_order"]["rows"] > 0

    simulate(source, days=3, seed=4)
    caught_up = run_pipeline(settings)
    assert caught_up.succeeded, caught_up.to_dict()
    assert_equivalent_to_clean_pass(
        warehouse_contents(warehouse), _clean_pass(source, make_database, tmp_path / "clean")
    )


def test_concurrent_runs_end_like_serial_runs(
    make_database: Callable[[str], str], tmp_path: Path
) -> None:
    """R10: two runs at once over the same tables, then one more: equals a clean pass."""
    from concurrent.futures import ThreadPoolExecutor

    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.02, seed=8)
    lake = tmp_path / "lake"
    settings = Settings.in_folder(lake, source_dsn=source, warehouse_dsn=warehouse)
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda i: run_pipeline(settings, run_id=f"concurrent-{i}"), (1, 2)))
    # A run may lose the transform lease or the load lock to the other (a typed, retryable
    # error); neither may fail an extract or lose data.
    for report in reports:
        assert not report.failed_tables, report.to_dict()
    final = run_pipeline(Settings.in_folder(lake, source_dsn=source, warehouse_dsn=warehouse))
    assert final.succeeded, final.to_dict()
    assert_equivalent_to_clean_pass(
        warehouse_contents(warehouse), _clean_pass(source, make_database, tmp_path / "clean")
    )


def test_a_backlog_over_the_bound_is_loaded_then_the_run_fails(
    make_database: Callable[[str], str], tmp_path: Path
) -> None:
    """The policy's rules 3 and 4: what the bounded transform rounds took is loaded, then
    the run reports the backlog; the next run takes the rest and equals a clean pass."""
    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.01, seed=12)
    bounded = Settings.in_folder(
        tmp_path / "lake", source_dsn=source, warehouse_dsn=warehouse
    ).replace(transform_max_rows=1, transform_max_rounds=2)

    first = run_pipeline(bounded, run_id="bounded")
    assert not first.succeeded and "TransformBacklogLimit" in (first.error or "")
    assert first.transform and first.transform["run_ids"] == ["bounded", "bounded.t2"]
    assert first.load is not None and first.load["batches"] == ["bounded", "bounded.t2"]
    with psycopg.connect(warehouse) as conn:
        (ledger,) = conn.execute("SELECT count(*) FROM etl_load_ledger").fetchone()
    assert ledger == 2

    rest = run_pipeline(bounded.replace(transform_max_rows=10**9), run_id="rest")
    assert rest.succeeded, rest.to_dict()
    assert_equivalent_to_clean_pass(
        warehouse_contents(warehouse), _clean_pass(source, make_database, tmp_path / "clean")
    )


def test_status_lists_nothing_and_pages_through_the_runs(
    make_database: Callable[[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """status reads summaries, cursors and the run log: no listing, whatever the history;
    `--history N --page P` pages back through the run reports."""
    from pipeline.lake import Lake
    from pipeline.local.status import gather_status

    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.01, seed=9)
    settings = Settings(
        source_dsn=source,
        warehouse_dsn=warehouse,
        ingest_url=str(tmp_path / "i"),
        processed_url=str(tmp_path / "p"),
    )
    for n in range(5):
        assert run_pipeline(settings, run_id=f"r{n}").succeeded

    def no_listing(self: Lake, prefix: str = "") -> list:
        raise AssertionError(f"status listed {prefix!r}")

    monkeypatch.setattr(Lake, "list_with_times", no_listing)
    status = gather_status(settings, runs=2)
    assert [r["run_id"] for r in status["recent_runs"]] == ["r4", "r3"]
    assert status["tables"]["currency"]["batches"] == 5  # every committed batch, empty ones too
    assert status["tables"]["currency"]["last_run"] == "r4"
    assert [r["run_id"] for r in gather_status(settings, runs=2, page=3)["recent_runs"]] == ["r0"]
    lake = ["--ingest-url", str(tmp_path / "i"), "--processed-url", str(tmp_path / "p")]
    args = ["status", "--json", "--warehouse-dsn", warehouse, "--history", "2", "--page", "2"]
    assert main([*args, *lake]) == 0
    paged = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in paged["recent_runs"]] == ["r2", "r1"]
    assert paged["waiting_for_transform"] == [] and paged["waiting_for_load"] == []
