"""R25: every lost or broken lake file has a working recovery.

Each case breaks one file at the moment it matters (its batch not transformed or not
loaded yet), then follows the instruction the failing step gives (or nothing, where the
pipeline recovers by itself), and compares the warehouse with a clean pass over the same
source state.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

import pipeline.load as load_module
import pipeline.transform as transform_module
from pipeline import layout
from pipeline.catalog import TABLES
from pipeline.errors import TransientError
from pipeline.extract import held
from pipeline.lake import Lake
from pipeline.local.cli import main
from pipeline.local.runner import RunReport, run_pipeline
from pipeline.local.simulator.seed import seed
from pipeline.local.simulator.simulate import simulate
from pipeline.settings import Settings
from tests.warehouse_compare import assert_equivalent_to_clean_pass, warehouse_contents

pytestmark = pytest.mark.postgres


@contextmanager
def failing(monkeypatch: pytest.MonkeyPatch, step: str) -> Iterator[None]:
    """Runs in this block stop at `step` (their earlier steps' output stays in the lake)."""

    def broken(*args: object, **kwargs: object) -> None:
        raise TransientError(f"{step} stopped by the test")

    module = transform_module if step == "transform" else load_module
    with monkeypatch.context() as patch:
        patch.setattr(module, step, broken)
        yield


class Pipeline:
    def __init__(self, source: str, warehouse: str, lake: Path) -> None:
        self.settings = Settings.in_folder(lake, source_dsn=source, warehouse_dsn=warehouse)
        self.ingest, self.processed = (
            Lake(self.settings.ingest_url),
            Lake(self.settings.processed_url),
        )

    def run(self) -> RunReport:
        return run_pipeline(self.settings)

    def follow(self, error: str) -> None:
        """Run the one command the error names, with this pipeline's connection options."""
        commands = re.findall(r"`(totesys-etl [^`]+)`", error)
        assert len(commands) == 1, error
        args = shlex.split(commands[0])[1:]
        options = {
            "reconcile": [
                "--source-dsn",
                self.settings.source_dsn or "",
                "--ingest-url",
                self.settings.ingest_url,
            ],
            "transform": [
                "--ingest-url",
                self.settings.ingest_url,
                "--processed-url",
                self.settings.processed_url,
            ],
        }[args[0]]
        assert main([*args, *options]) == 0


@pytest.fixture
def world(make_database: Callable[[str], str], tmp_path: Path) -> dict:
    source = make_database("source")
    seed(source, scale=0.01, seed=25)
    pipe = Pipeline(source, make_database("warehouse"), tmp_path / "lake")
    assert pipe.run().succeeded
    simulate(source, days=4, seed=3)  # weekdays included: new orders and payments

    def clean() -> dict:
        other = Pipeline(source, make_database("clean"), tmp_path / "clean")
        assert other.run().succeeded
        return warehouse_contents(other.settings.warehouse_dsn or "")

    return {"pipe": pipe, "clean": clean}


def _batch(pipe: Pipeline, table: str, run_id: str) -> dict:
    return pipe.ingest.read_json(layout.ingestion_manifest(table, run_id))


def _truncate(lake: Lake, key: str) -> None:
    data = lake.read_bytes(key)
    lake.write_bytes(key, data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "archived"), [("delete", False), ("truncate", False), ("delete", True)]
)
def test_a_broken_ingestion_part_is_repaired_by_the_command_its_error_names(
    world, monkeypatch, damage, archived
) -> None:
    """`archived`: the batch's fold entry is in the held state's archive by the time the
    part breaks (as a batch folded more than a day ago would be), which only the repair
    command reads."""
    pipe = world["pipe"]
    if archived:
        monkeypatch.setattr(held, "FOLD_RECENT", -dt.timedelta(days=1))  # archive at once
    with failing(monkeypatch, "transform"):
        stopped = pipe.run()
    assert not stopped.succeeded
    [part] = _batch(pipe, "sales_order", stopped.run_id)["files"]
    pipe.ingest.delete(part) if damage == "delete" else _truncate(pipe.ingest, part)

    broken = pipe.run()
    assert not broken.succeeded and "CorruptBatchError" in (broken.error or ""), broken.error
    if archived:
        state = held.HeldState.open(pipe.ingest, TABLES["sales_order"])
        batch = layout.ingestion_manifest("sales_order", stopped.run_id)
        assert batch not in state.folded_keys() and state.head.archived
    pipe.follow(broken.error or "")
    assert pipe.ingest.exists(layout.retraction("sales_order", stopped.run_id))
    fixed = pipe.run()
    assert fixed.succeeded, fixed.to_dict()
    assert_equivalent_to_clean_pass(
        warehouse_contents(pipe.settings.warehouse_dsn), world["clean"]()
    )


def test_a_lost_ingestion_manifest_loses_nothing(world, monkeypatch) -> None:
    pipe = world["pipe"]
    with failing(monkeypatch, "transform"):
        stopped = pipe.run()
    pipe.ingest.delete(layout.ingestion_manifest("sales_order", stopped.run_id))
    recovered = pipe.run()  # no command: readers find the batch by its log entry
    assert recovered.succeeded, recovered.to_dict()
    passed = recovered.tables["sales_order"]["reconcile"]
    assert passed["status"] == "ok" and passed["buckets_differed"] == 0, passed
    assert_equivalent_to_clean_pass(
        warehouse_contents(pipe.settings.warehouse_dsn), world["clean"]()
    )


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_broken_processed_part_is_re_derived_by_the_command_its_error_names(
    world, monkeypatch, damage
) -> None:
    pipe = world["pipe"]
    with failing(monkeypatch, "load"):
        stopped = pipe.run()
    manifest = pipe.processed.read_json(layout.processed_manifest(stopped.run_id))
    [part, *_] = manifest["outputs"]["fact_payment"]["files"]
    pipe.processed.delete(part) if damage == "delete" else _truncate(pipe.processed, part)

    broken = pipe.run()
    assert not broken.succeeded and "CorruptBatchError" in (broken.error or ""), broken.error
    pipe.follow(broken.error or "")
    fixed = pipe.run()
    assert fixed.succeeded, fixed.to_dict()
    assert_equivalent_to_clean_pass(
        warehouse_contents(pipe.settings.warehouse_dsn), world["clean"]()
    )


def test_the_newest_processed_manifest_lost_is_transformed_again_by_the_next_run(
    world, monkeypatch
) -> None:
    pipe = world["pipe"]
    with failing(monkeypatch, "load"):
        stopped = pipe.run()
    pipe.processed.delete(layout.processed_manifest(stopped.run_id))
    recovered = pipe.run()
    assert recovered.succeeded, recovered.to_dict()
    assert_equivalent_to_clean_pass(
        warehouse_contents(pipe.settings.warehouse_dsn), world["clean"]()
    )


def test_an_older_processed_manifest_lost_loses_nothing(world, monkeypatch) -> None:
    pipe = world["pipe"]
    with failing(monkeypatch, "load"):
        lost = pipe.run()
        simulate(pipe.settings.source_dsn or "", days=1, seed=4)
        later = pipe.run()  # built on the state of `lost`
    assert not later.succeeded
    pipe.processed.delete(layout.processed_manifest(lost.run_id))
    fixed = pipe.run()  # no command: the load finds both batches in the batch log
    assert fixed.succeeded, fixed.to_dict()
    assert_equivalent_to_clean_pass(
        warehouse_contents(pipe.settings.warehouse_dsn), world["clean"]()
    )


def test_a_lost_transform_state_head_is_recovered_by_the_next_run(world) -> None:
    pipe = world["pipe"]
    consumed = set(pipe.ingest.list(layout.ingestion_manifests()))
    pipe.processed.delete(layout.STATE_HEAD)
    recovered = pipe.run()
    assert recovered.succeeded, recovered.to_dict()
    assert recovered.load and sum(recovered.load["rows"].values()) > 0
    inputs = pipe.processed.read_json(layout.processed_manifest(recovered.run_id))["inputs"]
    assert inputs and not set(inputs) & consumed  # built on the recovered state, not anew
    assert_equivalent_to_clean_pass(
        warehouse_contents(pipe.settings.warehouse_dsn), world["clean"]()
    )


def test_a_lost_transform_state_file_is_written_again_by_the_command_its_error_names(
    world,
) -> None:
    pipe = world["pipe"]
    head = pipe.processed.read_json(layout.STATE_HEAD)["current"]["files"]
    state_file = head["seen/sales_order/b0"]
    pipe.processed.delete(state_file)
    broken = pipe.run()
    assert not broken.succeeded and "transform state file" in (broken.error or ""), broken.error
    pipe.follow(broken.error or "")
    assert pipe.processed.exists(state_file)
    fixed = pipe.run()
    assert fixed.succeeded, fixed.to_dict()
    assert_equivalent_to_clean_pass(
        warehouse_contents(pipe.settings.warehouse_dsn), world["clean"]()
    )


def test_damaged_extract_state_recovers_by_itself(world) -> None:
    """The newest watermark truncated, the reconciliation's held state gone: the next run
    re-reads a little more and rebuilds the held state from the batch log."""
    pipe = world["pipe"]
    assert pipe.run().succeeded  # a second watermark version
    simulate(pipe.settings.source_dsn or "", days=3, seed=8)
    [newest] = [k for k in pipe.ingest.list("_state/sales_order/") if "watermark-" in k][-1:]
    _truncate(pipe.ingest, newest)
    _truncate(pipe.ingest, layout.watermark_pointer("sales_order"))
    for key in pipe.ingest.list("_reconcile/payment/"):
        pipe.ingest.delete(key)
    recovered = pipe.run()
    assert recovered.succeeded, recovered.to_dict()
    assert recovered.tables["payment"]["reconcile"]["rows_recovered"] == 0
    assert pipe.ingest.list("_reconcile/payment/")  # rebuilt
    with psycopg.connect(pipe.settings.source_dsn or "") as conn:
        (total,) = conn.execute("SELECT count(*) FROM sales_order").fetchone()  # type: ignore[misc]
    assert recovered.tables["sales_order"]["rows"] < total  # from the previous watermark
    assert_equivalent_to_clean_pass(
        warehouse_contents(pipe.settings.warehouse_dsn), world["clean"]()
    )
