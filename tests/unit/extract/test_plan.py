"""Extract logic that needs no database: the window plan and watermark ordering."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError
from pipeline.extract import watermark
from pipeline.extract.run import ExtractResult, extract_table, naive_utc, plan
from pipeline.extract.watermark import Watermark, iso_ms
from pipeline.lake import Lake
from pipeline.settings import Settings

NOW = datetime(2024, 11, 4, 12, 0, 0, 123456)
LAG = timedelta(minutes=15)


def mark(lu: datetime, key: int = 7, *, more: bool = False, started: datetime = NOW) -> Watermark:
    return Watermark("currency", lu, key, started, more, "r0")


def test_first_run_reads_everything_up_to_the_source_clock() -> None:
    p = plan("r1", NOW, state=None, resume=None, since=None, until=None, lag=LAG)
    assert (p.mode, p.window.since, p.window.until, p.window.after_key) == ("full", None, NOW, None)


def test_next_run_overlaps_the_watermark_by_the_lag() -> None:
    lu = datetime(2024, 11, 4, 11, 59, 0, 999000)
    p = plan("r2", NOW, state=mark(lu), resume=None, since=None, until=None, lag=LAG)
    assert p.mode == "incremental"
    assert p.window.since == lu - LAG and p.window.after_key is None and p.window.until == NOW


def test_overlap_starts_from_the_run_start_when_a_long_run_went_past_it() -> None:
    started = datetime(2024, 11, 4, 10, 0)
    state = mark(datetime(2024, 11, 4, 11, 0), started=started)
    p = plan("r2", NOW, state=state, resume=None, since=None, until=None, lag=LAG)
    assert p.window.since == started - LAG


def test_a_cut_off_run_resumes_exactly_after_its_last_key() -> None:
    lu = datetime(2024, 11, 4, 11, 0)
    p = plan("r2", NOW, state=mark(lu, 42, more=True), resume=None, since=None, until=None, lag=LAG)
    assert (p.window.since, p.window.after_key) == (lu, 42)


def test_backfill_window_is_capped_at_the_source_clock_and_checked() -> None:
    since = datetime(2024, 11, 1)
    p = plan("b", NOW, state=None, resume=None, since=since, until=datetime(2030, 1, 1), lag=LAG)
    assert (p.mode, p.window.since, p.window.until) == ("backfill", since, NOW)
    with pytest.raises(ConfigurationError, match="empty"):
        plan("b", NOW, state=None, resume=None, since=since, until=since, lag=LAG)


def test_window_bounds_parse_iso_text_and_convert_aware_values_to_utc() -> None:
    aware = datetime(2024, 3, 31, 2, 30, tzinfo=timezone(timedelta(hours=1)))
    assert naive_utc(aware, "since") == datetime(2024, 3, 31, 1, 30)
    assert naive_utc("2024-11-04T09:00:00.123", "since") == datetime(2024, 11, 4, 9, 0, 0, 123000)
    with pytest.raises(ConfigurationError, match="since"):
        naive_utc("yesterday", "since")


def test_iso_ms_never_rounds() -> None:
    assert iso_ms(datetime(2024, 11, 4, 9, 0, 0, 999000)) == "2024-11-04T09:00:00.999"
    assert iso_ms(datetime(2024, 11, 4, 9, 0)) == "2024-11-04T09:00:00.000"
    with pytest.raises(ValueError, match="sub-millisecond"):
        iso_ms(datetime(2024, 11, 4, 9, 0, 0, 999500))


def test_watermark_keeps_the_maximum_and_only_moves_forwards(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    t = datetime(2024, 11, 4, 9, 0)
    assert watermark.save(lake, mark(t, 5)).seq == 1
    assert watermark.save(lake, mark(t - timedelta(seconds=1), 9)).seq == 1  # behind: kept
    assert watermark.save(lake, mark(t, 4)).seq == 1
    assert watermark.save(lake, mark(t, 5, more=True)).seq == 1  # same cursor, unfinished
    assert watermark.save(lake, mark(t, 6, more=True)).seq == 2
    assert watermark.save(lake, mark(t, 6)).seq == 3  # same cursor, now finished
    assert watermark.read_watermark(lake, "currency") == "2024-11-04T09:00:00.000"


def test_watermark_loser_of_a_race_rereads_and_does_not_go_backwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two savers read seq 1; the ahead one wins seq 2 first; the other must not overwrite."""
    lake = Lake(str(tmp_path))
    t = datetime(2024, 11, 4, 9, 0)
    watermark.save(lake, mark(t, 1))
    real_load = watermark.load
    raced = []

    def load_then_lose_the_race(lake_: Lake, table: str) -> Watermark | None:
        current = real_load(lake_, table)
        if not raced:
            raced.append(1)
            watermark.save(lake_, mark(t + timedelta(hours=1), 2))  # the other writer
        return current

    monkeypatch.setattr(watermark, "load", load_then_lose_the_race)
    result = watermark.save(lake, mark(t + timedelta(minutes=1), 3))
    assert (result.key, result.seq) == (2, 2)
    monkeypatch.setattr(watermark, "load", real_load)
    assert watermark.load(lake, "currency").key == 2  # type: ignore[union-attr]


def test_old_watermark_versions_are_pruned(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    t = datetime(2024, 11, 4, 9, 0)
    for i in range(watermark.KEEP_VERSIONS + 5):
        watermark.save(lake, mark(t, i + 1))
    versions = [k for k in lake.list("_state/currency/") if "watermark-" in k]
    assert len(versions) == watermark.KEEP_VERSIONS
    assert watermark.load(lake, "currency").key == watermark.KEEP_VERSIONS + 5  # type: ignore[union-attr]


def test_the_watermark_is_read_without_listing_even_behind_a_lagging_pointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pointer names a version; newer versions (a writer stopped before moving the
    pointer, or an older copy landed last) are found by probing the next numbers."""
    lake = Lake(str(tmp_path))
    t = datetime(2024, 11, 4, 9, 0)
    for i in range(3):
        watermark.save(lake, mark(t, i + 1))
    stale = lake.read_json("_state/currency/watermark-0000000001.json")
    lake.write_json("_state/currency/watermark.json", stale)  # the pointer lags by two

    def no_listing(self: Lake, prefix: str = "") -> list[str]:
        raise AssertionError(f"listed {prefix!r}")

    monkeypatch.setattr(Lake, "list_with_times", no_listing)
    assert watermark.load(lake, "currency").key == 3  # type: ignore[union-attr]
    assert watermark.save(lake, mark(t, 4)).seq == 4  # and saving continues after it
    assert lake.read_json("_state/currency/watermark.json")["seq"] == 4


def test_a_watermark_written_before_the_pointer_is_found_by_one_listing(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    t = datetime(2024, 11, 4, 9, 0)
    for i in range(3):
        watermark.save(lake, mark(t, i + 1))
    lake.delete("_state/currency/watermark.json")  # as versions before the pointer wrote it
    assert watermark.load(lake, "currency").seq == 3  # type: ignore[union-attr]
    watermark.save(lake, mark(t, 9))
    assert lake.read_json("_state/currency/watermark.json")["seq"] == 4


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 200, "a..b"])
def test_run_ids_that_cannot_be_keys_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigurationError, match="run id"):
        extract_table(
            "currency", bad, Settings(ingest_url=str(tmp_path), source_dsn="host=nowhere")
        )


def test_result_is_small_json() -> None:
    result = ExtractResult(
        "payment", "r1", "ok", "full", 3, ["payment/date=2024-11-04/r1/part-00000.parquet"],
        "_manifests/payment/r1.json", {"from": "2024-11-04T09:00:00.000", "to": None, "to_key": 3},
    )  # fmt: skip
    data = result.to_dict()
    assert set(data) == {
        "table", "run_id", "status", "mode", "rows", "files", "manifest", "cursor",
        "warnings", "more", "next_run_id", "reconcile",
    }  # fmt: skip
    assert data["cursor"] == {"from": "2024-11-04T09:00:00.000", "to": None}
    assert len(json.dumps(data)) < 2048
