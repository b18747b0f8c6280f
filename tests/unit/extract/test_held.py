"""The held state's fold: per key the newest event by snapshot decides; saved and reopened
it is the same; a damaged state reads as empty (to be rebuilt)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.catalog import TABLES
from pipeline.extract import held, repair
from pipeline.extract.held import HeldState, Keys
from pipeline.lake import Lake

SPEC = TABLES["currency"]


def batch(run_id: str, at: str, keys: dict[int, int], mode: str = "incremental") -> held.Folded:
    manifest = {
        "run_id": run_id,
        "mode": mode,
        "window": {"since": None, "until": at, "after_key": None},
        "snapshot": {"from": at, "to": at},
        "committed_at": at,
    }
    k = np.array(list(keys), dtype=np.int64)
    return (
        layout.ingestion_manifest("currency", run_id),
        manifest,
        Keys(k, np.array(list(keys.values()), dtype=np.int64)),
    )


def as_dict(state: HeldState) -> dict[int, int]:
    keys = state.keys(set(state.head.keys) | set(state._keys))
    return dict(zip(keys.key.tolist(), keys.stamp.tolist(), strict=True))


def test_newest_version_wins_and_tombstones_remove_until_a_later_snapshot_restores(
    tmp_path: Path,
) -> None:
    state = HeldState.open(Lake(str(tmp_path)), SPEC)
    state.fold([batch("a", "2024-01-01T00:00:00", {1: 10, 2: 20, 70_000: 5})])
    state.fold([batch("b", "2024-01-02T00:00:00", {1: 15, 2: 12})])  # 2: an older version
    assert as_dict(state) == {1: 15, 2: 20, 70_000: 5}
    state.fold(
        [
            batch("t", "2024-01-03T00:00:00", {2: 20, 70_000: 5}, mode=layout.TOMBSTONE_MODE),
            batch("early", "2024-01-02T12:00:00", {2: 21}),  # before the delete: still gone
        ]
    )
    assert as_dict(state) == {1: 15}
    state.fold([batch("back", "2024-01-04T00:00:00", {2: 20})])  # found again later
    assert as_dict(state) == {1: 15, 2: 20}
    assert state.held_count == 2
    assert list(state.summary.bucket) == [0] and list(state.summary.rows) == [2]


def test_saved_state_reopens_equal_and_fold_records_are_compacted(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(held, "FOLD_FILES", 2)
    lake = Lake(str(tmp_path))
    state = HeldState.open(lake, SPEC)
    for i in range(5):
        state.fold([batch(f"r{i}", f"2024-01-0{i + 1}T00:00:00", {i: i, 100_000 + i: i})])
        assert state.save({"run_id": f"r{i}"})
    again = HeldState.open(lake, SPEC)
    assert as_dict(again) == as_dict(state)
    assert len(again.head.folded) <= 2 and [r["run_id"] for r in again.records()] == [
        f"r{i}" for i in range(5)
    ]
    assert (again.summary.xor == state.summary.xor).all()
    assert again.head.last_pass == {"run_id": "r4"}


def test_a_head_pointing_at_a_missing_file_reads_as_empty(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    state = HeldState.open(lake, SPEC)
    state.fold([batch("a", "2024-01-01T00:00:00", {1: 10})])
    assert state.save(None)
    [key] = state.head.keys.values()
    lake.delete(key)
    reopened = HeldState.open(lake, SPEC)
    assert reopened.held_count == 0 and reopened.folded == []  # the caller folds everything
    assert reopened.head.seq == state.head.seq  # and saves the next version


def test_a_losing_concurrent_save_reports_it(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    one, two = HeldState.open(lake, SPEC), HeldState.open(lake, SPEC)
    one.fold([batch("a", "2024-01-01T00:00:00", {1: 10})])
    two.fold([batch("b", "2024-01-01T00:00:00", {2: 10})])
    assert one.save(None) is True
    assert two.save(None) is False


def test_folding_in_chunks_of_key_buckets_equals_folding_at_once(
    tmp_path: Path, monkeypatch
) -> None:
    """The fold works in runs of key buckets to bound its memory: any chunk size gives the
    same keys and summary (rows, re-deliveries, older versions and tombstones mixed over
    several buckets and snapshots)."""
    rng = np.random.default_rng(5)
    width = held.KEY_BUCKET_IDS
    batches = []
    for i in range(6):
        ids = rng.choice(4 * width, size=3_000, replace=False)
        mode = layout.TOMBSTONE_MODE if i in (2, 4) else "incremental"
        stamps = rng.integers(0, 1_000, size=ids.size)
        at = f"2024-01-0{i + 1}T00:00:00"
        batches.append(
            batch(f"r{i}", at, dict(zip(ids.tolist(), stamps.tolist(), strict=True)), mode=mode)
        )
    results = []
    for chunk in (10**9, 1, 2_500):
        monkeypatch.setattr(held, "FOLD_CHUNK_KEYS", chunk)
        state = HeldState.open(Lake(str(tmp_path / str(chunk))), SPEC)
        state.fold(batches[:3])
        state.fold(batches[3:])
        s = state.summary
        results.append((as_dict(state), s.bucket.tolist(), s.rows.tolist(), s.xor.tolist()))
    assert len(results[0][0]) > 1_000  # (tombstones removed some keys, not all)
    assert results[1] == results[0] and results[2] == results[0]


def test_entries_older_than_a_day_move_to_an_archive_a_pass_does_not_read(
    tmp_path: Path, monkeypatch
) -> None:
    """A backlog folded at once, and entries that age while runs go on, leave the recent
    record; a plain open reads only the recent entries, `archive=True` every entry, and the
    archive's files are compacted like the recent ones (nothing lost on the way)."""
    monkeypatch.setattr(held, "FOLD_FILES", 3)
    lake = Lake(str(tmp_path))
    state = HeldState.open(lake, SPEC)
    state.log_through = 1  # (a state that folds the batch log: only the repair reads more)
    backlog = [batch(f"old{i}", f"2024-01-01T0{i}:00:00", {i: i}) for i in range(5)]
    state.fold([*backlog, batch("new", "2024-01-03T00:00:00", {10: 1})])
    assert state.save(None)
    opened = HeldState.open(lake, SPEC)
    assert [r["run_id"] for r in opened.folded] == ["new"] and opened.archive is None
    assert opened.folded_keys() == {layout.ingestion_manifest("currency", "new")}
    # Runs an hour apart: each entry moves to the archive once a day has passed since it.
    names = ["new"] + [f"h{i}" for i in range(60)]
    for i in range(60):
        at = (dt.datetime(2024, 1, 3) + dt.timedelta(hours=i + 1)).isoformat()
        opened.fold([batch(f"h{i}", at, {100 + i: i})])
        assert opened.save(None)
        opened = HeldState.open(lake, SPEC)
        recent = [r["run_id"] for r in opened.folded]
        assert len(recent) <= 25 + 3  # a day's entries, plus those since the last compaction
        assert recent == names[names.index(recent[0]) : i + 2]  # the newest, in order
    assert len(opened.head.folded) <= 3 and len(opened.head.archived) <= 3
    every = HeldState.open(lake, SPEC, archive=True)
    assert sorted(r["run_id"] for r in every.records()) == sorted(
        [f"old{i}" for i in range(5)] + names
    )
    files = {*opened.head.folded, *opened.head.archived}
    assert set(lake.list(layout.reconcile_files("currency", "folded"))) >= files


def test_a_missing_archive_file_rebuilds_the_state_when_the_archive_is_read(
    tmp_path: Path,
) -> None:
    lake = Lake(str(tmp_path))
    state = HeldState.open(lake, SPEC)
    state.log_through = 1
    state.fold([batch("old", "2024-01-01T00:00:00", {1: 1}), batch("new", "2024-01-05", {2: 2})])
    assert state.save(None)
    [archived] = state.head.archived
    lake.delete(archived)
    assert HeldState.open(lake, SPEC).held_count == 2  # a pass does not read the archive
    assert HeldState.open(lake, SPEC, archive=True).held_count == 0  # repair: rebuilt


def test_checking_every_batch_of_a_table_without_state_finds_nothing_to_repair(
    tmp_path: Path,
) -> None:
    lake = Lake(str(tmp_path))
    state = HeldState.open(lake, SPEC, archive=True)
    assert state.archive == [] and repair.pending(lake, SPEC, state, check_all=True) == ([], [])
