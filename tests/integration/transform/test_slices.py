"""A transform in small slices (the memory bound, `TRANSFORM_MAX_ROWS`) loads exactly what
one call taking everything loads: nothing lost, nothing duplicated, replays change nothing.

The source is the simulator's, extracted in batches bigger than the slice (the extract
splits a table at `EXTRACT_MAX_ROWS`, the transform splits each batch again), so every fact
and the big lookup table (`transaction`) cross slice boundaries, and several rounds read
the state buckets an earlier round of the same batch wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.local.runner import run_pipeline
from pipeline.local.simulator.seed import seed
from pipeline.local.simulator.simulate import simulate
from pipeline.settings import Settings
from tests.warehouse_compare import warehouse_contents

pytestmark = pytest.mark.postgres

SLICE = 300  # rows per transform call: a few per batch
BATCH = 1_000  # rows per extract call


def test_a_run_in_small_slices_loads_what_one_unsliced_call_loads(
    make_database: Callable[[str], str], tmp_path: Path
) -> None:
    source = make_database("source")
    seed(source, scale=0.1, seed=7)
    sliced = Settings.in_folder(
        tmp_path / "sliced",
        source_dsn=source,
        warehouse_dsn=make_database("sliced"),
        extract_max_rows=BATCH,
        extract_max_calls=1_000,
        transform_max_rows=SLICE,
        transform_max_rounds=1_000,
    )
    whole = Settings.in_folder(
        tmp_path / "whole",
        source_dsn=source,
        warehouse_dsn=make_database("whole"),
        transform_max_rows=10_000_000,
    )

    for step in ("first run", "a simulated day later"):
        report = run_pipeline(sliced)
        assert report.succeeded, (step, report.to_dict())
        rounds = report.transform["run_ids"] if report.transform else []
        rows_in = sum((report.transform or {}).get("rows_in", {}).values())
        assert len(rounds) >= rows_in // SLICE, step  # every round took at most a slice
        assert run_pipeline(whole).succeeded, step
        assert warehouse_contents(sliced.warehouse_dsn) == warehouse_contents(
            whole.warehouse_dsn
        ), step
        if step == "first run":
            assert len(rounds) > 10 and rows_in > 10 * SLICE
            simulate(source, days=1, seed=11)

    after = warehouse_contents(sliced.warehouse_dsn)
    again = run_pipeline(sliced)  # nothing new: no rows, the same warehouse
    assert again.succeeded and sum((again.load or {}).get("rows", {}).values()) == 0
    assert warehouse_contents(sliced.warehouse_dsn) == after
