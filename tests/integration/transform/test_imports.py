"""The transform never imports pandas (nor `pyarrow.dataset`, which imports it): about 0.2 s
and 60 MB of every cold start. pandas is installed here (the benchmarks' baseline uses it),
so only the transform's own imports can keep it out: checked in a fresh interpreter, for
the import and for whole runs against a local and an S3 (moto) lake."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.lake import Lake
from tests.lake_builders import row, write_batch, write_lookups

PROBE = """
import json, sys
import pipeline.transform
imported = {m: m in sys.modules for m in ("pandas", "pyarrow.dataset")}
from pipeline.settings import Settings
settings = Settings.from_env().replace(ingest_url=sys.argv[1], processed_url=sys.argv[2])
first = pipeline.transform.transform("t1", settings)
second = pipeline.transform.transform("t2", settings)
ran = {m: m in sys.modules for m in ("pandas", "pyarrow.dataset")}
print(json.dumps({"imported": imported, "ran": ran, "statuses": [first.status, second.status]}))
"""


def _fill(ingest: Lake) -> None:
    write_lookups(ingest, "e1")
    write_batch(ingest, "sales_order", "e1", [row("sales_order")])
    write_batch(ingest, "payment", "e1", [row("payment")])


def _probe(ingest_url: str, processed_url: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ingest_url, processed_url],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_and_running_the_transform_imports_no_pandas(tmp_path) -> None:
    ingest = Lake(str(tmp_path / "ingest"))
    _fill(ingest)
    found = _probe(ingest.url, str(tmp_path / "processed"))
    assert found["statuses"] == ["ok", "nothing_to_do"]
    assert found["imported"] == {"pandas": False, "pyarrow.dataset": False}
    assert found["ran"] == {"pandas": False, "pyarrow.dataset": False}


@pytest.mark.usefixtures("moto_server")
def test_a_transform_over_s3_imports_no_pandas(s3_bucket: str, s3_settings) -> None:
    ingest = s3_settings.lake(f"s3://{s3_bucket}/ingest")
    _fill(ingest)
    found = _probe(f"s3://{s3_bucket}/ingest", f"s3://{s3_bucket}/processed")
    assert found["statuses"] == ["ok", "nothing_to_do"]
    assert found["ran"] == {"pandas": False, "pyarrow.dataset": False}
