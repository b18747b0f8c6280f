"""The processed zone's housekeeping: it deletes what batches older than the retention
period left behind, never anything of a batch inside it or at/after the committing run's
base, and in the steady state (nothing old enough) it reads one log entry per commit."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline import layout
from pipeline.housekeeping import PROCESSED_BATCH, expire_processed
from pipeline.lake import Lake
from pipeline.processed_log import batch_log
from pipeline.settings import Settings
from pipeline.transform.state import StatePointers

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "processed"))


def commit(lake: Lake, seq: int, age_days: float) -> list[str]:
    """A committed batch `seq` of that age: its manifest, a superseded snapshot, its entry."""
    manifest, released = layout.processed_manifest(f"t{seq}"), f"_state/x/run=t{seq}.parquet"
    lake.write_json(manifest, {"run_id": f"t{seq}"})
    lake.write_bytes(released, b"snapshot")
    at = (NOW - dt.timedelta(days=age_days)).isoformat()
    entry = {"run_id": f"t{seq}", "manifest": manifest, "committed_at": at}
    assert batch_log(lake).create(seq, {**entry, "released": [released]})
    return [manifest, released]


def expire(lake: Lake, *, log_seq: int, housekept: int = 0) -> int:
    settings = Settings(ingest_url=lake.url, processed_url=lake.url)
    return expire_processed(lake, StatePointers(log_seq=log_seq, housekept=housekept), settings)


def entry_reads(monkeypatch) -> list[str]:
    keys: list[str] = []
    real = Lake.read_bytes_or_none

    def spy(self: Lake, key: str) -> bytes | None:
        if key.startswith(f"_log/{layout.BATCH_LOG}/0"):
            keys.append(key)
        return real(self, key)

    monkeypatch.setattr(Lake, "read_bytes_or_none", spy)
    return keys


def test_only_batches_past_the_period_and_before_the_base_go(lake) -> None:
    records = [commit(lake, seq, age) for seq, age in enumerate([40, 35, 31, 2, 1, 0], 1)]
    assert expire(lake, log_seq=7) == 3
    assert [all(lake.exists(k) for k in r) for r in records] == [False] * 3 + [True] * 3
    assert not any(lake.exists(k) for r in records[:3] for k in r)


def test_the_base_and_its_predecessors_stay_however_old(lake) -> None:
    records = [commit(lake, seq, 90) for seq in (1, 2, 3)]
    assert expire(lake, log_seq=3) == 2  # batch 3 is the base: kept
    assert [lake.exists(r[0]) for r in records] == [False, False, True]
    assert expire(lake, log_seq=3, housekept=2) == 2  # nothing more until the base moves


def test_one_commit_housekeeps_a_bounded_batch_and_the_next_goes_on(lake) -> None:
    total = PROCESSED_BATCH + 10
    records = [commit(lake, seq, 60) for seq in range(1, total + 1)]
    first = expire(lake, log_seq=total + 1)
    assert first == PROCESSED_BATCH
    assert not lake.exists(records[PROCESSED_BATCH - 1][0])
    assert lake.exists(records[PROCESSED_BATCH][0])
    assert expire(lake, log_seq=total + 1, housekept=first) == total
    assert not any(lake.exists(k) for r in records for k in r)


def test_the_steady_state_reads_one_entry_per_commit(lake, monkeypatch) -> None:
    for seq in range(1, 41):
        commit(lake, seq, 3)  # all inside the period
    reads = entry_reads(monkeypatch)
    assert expire(lake, log_seq=41, housekept=0) == 0
    assert reads == [layout.log_entry(layout.BATCH_LOG, 1)]


def test_a_pass_stops_reading_at_the_first_batch_inside_the_period(lake, monkeypatch) -> None:
    ages = [40] * 5 + [1] * 100
    records = [commit(lake, seq, age) for seq, age in enumerate(ages, 1)]
    reads = entry_reads(monkeypatch)
    assert expire(lake, log_seq=len(ages) + 1) == 5
    assert len(reads) < 16  # chunks of 1, 2, 4, 8 entries: not the 256 it may go through
    assert all(lake.exists(k) for r in records[5:] for k in r)
