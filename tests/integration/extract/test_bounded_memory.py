"""A table far bigger than one batch streams through the extract in bounded memory.

The extract runs in a fresh interpreter so its peak resident memory (`VmHWM`) is its own.
After a warm-up extract has loaded the driver and the Parquet writer, extracting ~60 MB
of rows must raise the peak by a fraction of that: a step that held the table (or
its parts) in memory would raise it by at least the table's size (R20 of docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from tests.integration.extract.helpers import lake_url, source

__all__ = ["lake_url", "source"]  # fixtures

pytestmark = pytest.mark.postgres

ROWS = 64_000
NAME_CHARS = 1024  # 62.5 MB of text in all, about 60 times the batch size below
BATCH_BYTES = 1 << 20
MAX_GROWTH_MB = 30  # measured: 13 MB streaming; 114 MB for 100 MB held in memory

CHILD = """
import json, sys
from pipeline.extract import extract_table
from pipeline.extract import source as source_module
from pipeline.settings import Settings

def peak_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")

settings = Settings(ingest_url=sys.argv[1], source_dsn=sys.stdin.read())
extract_table("currency", "warm-up", settings)  # imports, the driver, the Parquet writer
source_module.BATCH_BYTES = int(sys.argv[2])
before = peak_mb()
result = extract_table("design", "big", settings)
print(json.dumps({"rows": result.rows, "growth_mb": peak_mb() - before}))
"""


def test_a_table_sixty_batches_long_streams_in_bounded_memory(source: str, lake_url: str) -> None:
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO design (design_name, file_location, file_name, last_updated) "
            "SELECT repeat(md5(g::text), %s), '/designs', 'd.json', "
            "timestamp '2024-11-04' + g * interval '1 ms' FROM generate_series(1, %s) g",
            (NAME_CHARS // 32, ROWS),
        )
    out = subprocess.run(
        [sys.executable, "-c", CHILD, lake_url, str(BATCH_BYTES)],
        input=source,
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["rows"] == ROWS + 1  # and the design row the fixture inserts
    table_mb = ROWS * NAME_CHARS / 2**20
    assert measured["growth_mb"] < MAX_GROWTH_MB < table_mb / 2, measured
