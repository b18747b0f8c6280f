"""A transform killed with SIGKILL while it holds the processed zone's lease: the next run,
started at once, waits out the dead holder's short lease and succeeds within 2 minutes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.lake import Lake
from pipeline.local.runner import run_pipeline
from pipeline.local.simulator.seed import seed
from pipeline.settings import Settings
from pipeline.transform.lease import LEASE_KEY, read_lease
from tests.warehouse_compare import assert_equivalent_to_clean_pass, warehouse_contents

pytestmark = pytest.mark.postgres


def test_kill_9_during_transform_then_run_again_within_two_minutes(
    make_database: Callable[[str], str], tmp_path: Path
) -> None:
    source, warehouse = make_database("source"), make_database("warehouse")
    seed(source, scale=0.2, seed=14)
    # the default lease: this is the behaviour operators get
    settings = Settings.in_folder(tmp_path, source_dsn=source, warehouse_dsn=warehouse)
    processed = Lake(settings.processed_url)
    env = {
        **os.environ,
        "TOTESYS_DSN": source,
        "WAREHOUSE_DSN": warehouse,
        "INGEST_URL": settings.ingest_url,
        "PROCESSED_URL": settings.processed_url,
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.local.cli", "run", "--json", "--run-id", "doomed"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not processed.exists(LEASE_KEY):
            assert child.poll() is None, "the run ended before its transform took the lease"
            assert time.monotonic() < deadline, "the transform never took the lease"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    held = read_lease(processed)
    assert held is not None and held["run_id"] == "doomed"  # killed while holding it
    assert not processed.exists("_manifests/doomed.json")

    started = time.monotonic()
    report = run_pipeline(settings, run_id="after-kill")
    assert report.succeeded, report.to_dict()
    assert time.monotonic() - started < 120
    assert read_lease(processed) is None

    clean = make_database("clean")
    clean_settings = Settings.in_folder(tmp_path / "c", source_dsn=source, warehouse_dsn=clean)
    assert run_pipeline(clean_settings).succeeded
    assert_equivalent_to_clean_pass(warehouse_contents(warehouse), warehouse_contents(clean))
