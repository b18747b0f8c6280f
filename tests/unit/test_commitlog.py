"""Append-only logs (pipeline/commitlog.py): dense numbers under concurrent writers, reads
from a position without listing, compaction into segments that readers still see."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pipeline import commitlog, layout
from pipeline.commitlog import CommitLog
from pipeline.errors import CorruptBatchError
from pipeline.lake import Lake


@pytest.fixture
def no_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Lake, prefix: str = "") -> list:
        raise AssertionError(f"listed {prefix!r}")

    monkeypatch.setattr(Lake, "list_with_times", refuse)


def test_concurrent_appends_get_dense_distinct_numbers(tmp_path: Path, no_listing: None) -> None:
    lake = Lake(str(tmp_path))
    log = CommitLog(lake, "t")
    start = threading.Barrier(8)
    numbers: list[int] = []

    def writer(w: int) -> None:
        start.wait()
        for i in range(25):
            numbers.append(CommitLog(lake, "t").append({"writer": w, "i": i})["seq"])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 201))
    entries = log.read_after(0)
    assert [e["seq"] for e in entries] == list(range(1, 201))
    assert sorted((e["writer"], e["i"]) for e in entries) == [
        (w, i) for w in range(8) for i in range(25)
    ]
    assert log.head() == 200


def test_a_reader_gets_what_is_past_its_position_and_past_a_lagging_hint(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    log = CommitLog(lake, "t")
    for i in range(5):
        log.append({"i": i})
    lake.write_json(layout.log_head("t"), {"seq": 2})  # a writer stopped before the hint
    assert [e["i"] for e in log.read_after(3)] == [3, 4]
    assert [e["i"] for e in log.read_after(0, limit=2)] == [0, 1]
    assert log.read_after(5) == []
    assert log.append({"i": 5})["seq"] == 6  # the writer probes past the lagging hint
    assert [e["i"] for e in log.read_before(7, 3)] == [5, 4, 3]


def test_an_entry_missing_below_the_hint_is_a_corrupt_log(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    log = CommitLog(lake, "t")
    for i in range(3):
        log.append({"i": i})
    lake.delete(layout.log_entry("t", 2))
    with pytest.raises(CorruptBatchError, match=r"000000000002\.json is missing"):
        log.read_after(0)


def test_full_segments_are_compacted_and_still_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commitlog, "SEGMENT", 4)
    lake = Lake(str(tmp_path))
    log = CommitLog(lake, "t")
    for i in range(1, 14):
        log.append({"i": i})
    keys = lake.list("_log/t/")
    # segments 0 (1-3) and 1 (4-7) were compacted when 8 and 12 opened segments 2 and 3
    assert layout.log_segment("t", 0) in keys and layout.log_segment("t", 1) in keys
    assert layout.log_entry("t", 5) not in keys and layout.log_entry("t", 8) in keys
    fresh = CommitLog(lake, "t")
    assert [e["i"] for e in fresh.read_after(0)] == list(range(1, 14))
    assert [e["i"] for e in fresh.read_after(5, limit=4)] == [6, 7, 8, 9]
    assert fresh.get(2) == {"i": 2, "seq": 2, "logged_at": fresh.get(2)["logged_at"]}  # type: ignore[index]
    assert [e["i"] for e in fresh.read_before(6, 10)] == [5, 4, 3, 2, 1]


def test_compaction_interrupted_after_the_segment_is_finished_by_the_next_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commitlog, "SEGMENT", 4)
    lake = Lake(str(tmp_path))
    log = CommitLog(lake, "t")
    for i in range(1, 8):
        log.append({"i": i})
    real = Lake.delete_many

    def crash(self: Lake, keys: object) -> int:
        raise OSError("power cut")

    monkeypatch.setattr(Lake, "delete_many", crash)
    with pytest.raises(OSError, match="power cut"):
        log.append({"i": 8})  # opens segment 2: compacts segment 0, crashes before deleting
    monkeypatch.setattr(Lake, "delete_many", real)
    assert [e["i"] for e in CommitLog(lake, "t").read_after(0)] == list(range(1, 9))
    log.compact(0)
    assert layout.log_entry("t", 1) not in lake.list("_log/t/")
    assert [e["i"] for e in CommitLog(lake, "t").read_after(0)] == list(range(1, 9))


def test_a_single_writer_creates_at_its_own_number_once(tmp_path: Path) -> None:
    log = CommitLog(Lake(str(tmp_path)), "t")
    assert log.create(1, {"run": "a"})
    assert not log.create(1, {"run": "b"})
    assert log.get(1)["run"] == "a"  # type: ignore[index]
    assert log.head() == 1
