"""Every entry point checks its input before it touches a lake or a database.

The lake folders given here do not exist and the DSNs point at a closed port: a step that
opened either before rejecting the input would create the folder or fail with a
connection error instead of `InvalidInputError`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InvalidInputError, PermanentError, UnknownTableError
from pipeline.layout import RUN_ID_MAX, check_run_id
from pipeline.settings import Settings
from tests.hostile_pg import closed_port
from tests.statemachine.harness import FakeContext

BAD_RUN_IDS = ["../x", "../../escaped", "a/b", "x" * 300, "", ".hidden", "a..b", "a b", "é"]


@pytest.fixture
def untouched(tmp_path: Path) -> Settings:
    dead = f"host=127.0.0.1 port={closed_port()} user=u password=never-used dbname=d"
    return Settings(
        ingest_url=str(tmp_path / "in"),
        processed_url=str(tmp_path / "out"),
        source_dsn=dead,
        warehouse_dsn=dead,
    )


def assert_untouched(tmp_path: Path) -> None:
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("run_id", ["r1", "sched-full-run", "local-20241103T000000-abc123.t2",
                                    "a" * RUN_ID_MAX, "run=2024.1+x_y"])  # fmt: skip
def test_usable_run_ids_pass(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", [*BAD_RUN_IDS, "a" * (RUN_ID_MAX + 1), None, 7])
def test_unusable_run_ids_are_rejected(run_id: object) -> None:
    with pytest.raises(InvalidInputError, match="run id") as info:
        check_run_id(run_id)
    assert isinstance(info.value, PermanentError) and len(str(info.value)) < 300


@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_steps_reject_a_bad_run_id_before_touching_anything(
    run_id: str, untouched: Settings, tmp_path: Path
) -> None:
    from pipeline.extract import extract_table
    from pipeline.load import load
    from pipeline.local.runner import run_pipeline
    from pipeline.transform import transform

    for step in (
        lambda: extract_table("currency", run_id, untouched),
        lambda: transform(run_id, untouched),
        lambda: load(run_id, untouched),
        lambda: run_pipeline(untouched, run_id=run_id, tables=["currency"]),
    ):
        with pytest.raises(InvalidInputError):
            step()
    assert_untouched(tmp_path)


@pytest.mark.parametrize("command", ["run", "transform", "load", "extract"])
@pytest.mark.parametrize("run_id", ["../x", "a/b", "x" * 300])
def test_cli_rejects_a_bad_run_id_with_exit_2(
    command: str, run_id: str, untouched: Settings, tmp_path: Path, capsys
) -> None:
    from pipeline.local.cli import main

    lakes = ["--ingest-url", untouched.ingest_url]
    if command != "extract":
        lakes += ["--processed-url", untouched.processed_url]
    if command == "load":
        lakes = ["--processed-url", untouched.processed_url]
    args = [command, *(["currency"] if command == "extract" else []), "--run-id", run_id, *lakes]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "run id" in err and "Traceback" not in err
    assert_untouched(tmp_path)


@pytest.mark.parametrize("tables", [",", "currency,", ",currency", "currency,,staff", " "])
def test_cli_tables_with_an_empty_item_exit_2(tables: str, untouched: Settings, capsys) -> None:
    from pipeline.local.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--tables", tables, "--ingest-url", untouched.ingest_url])
    assert exit_.value.code == 2
    assert "empty item" in capsys.readouterr().err


def test_runner_rejects_empty_or_unknown_tables(untouched: Settings, tmp_path: Path) -> None:
    from pipeline.local.runner import run_pipeline

    with pytest.raises(InvalidInputError, match="no tables"):
        run_pipeline(untouched, tables=[])
    with pytest.raises(UnknownTableError):
        run_pipeline(untouched, tables=["currency", "../etc"])
    with pytest.raises(InvalidInputError):
        run_pipeline(untouched, tables="currency")  # type: ignore[arg-type]
    assert_untouched(tmp_path)


def lambda_context() -> FakeContext:
    return FakeContext("test", "arn:aws:lambda:us-east-1:123456789012:function:test")


@pytest.mark.parametrize(
    ("handler", "event", "error"),
    [
        ("extract_handler", {"table": "currency", "run_id": "../x"}, InvalidInputError),
        ("extract_handler", {"table": "currency", "run_id": "a/b"}, InvalidInputError),
        ("extract_handler", {"table": "../x", "run_id": "r1"}, UnknownTableError),
        ("extract_handler", {"table": ["currency"], "run_id": "r1"}, InvalidInputError),
        ("extract_handler", {"table": "currency", "run_id": "r1", "since": 5}, InvalidInputError),
        ("extract_handler", {"run_id": "r1"}, InvalidInputError),
        ("transform_handler", {"run_id": "x" * 300}, InvalidInputError),
        ("transform_handler", {"run_id": 12}, InvalidInputError),
        ("load_handler", {"run_id": "../../escaped"}, InvalidInputError),
        ("load_handler", {}, InvalidInputError),
    ],
)
def test_handlers_reject_bad_events_with_a_permanent_error(
    handler: str, event: dict, error: type, untouched: Settings, tmp_path: Path, monkeypatch
) -> None:
    import pipeline.handlers

    monkeypatch.setenv("INGEST_URL", untouched.ingest_url)
    monkeypatch.setenv("PROCESSED_URL", untouched.processed_url)
    monkeypatch.setenv("TOTESYS_DSN", str(untouched.source_dsn))
    monkeypatch.setenv("WAREHOUSE_DSN", str(untouched.warehouse_dsn))
    with pytest.raises(error) as info:
        getattr(pipeline.handlers, handler)(event, lambda_context())
    assert isinstance(info.value, PermanentError)
    assert_untouched(tmp_path)
