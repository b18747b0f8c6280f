"""Extract failure handling against a real PostgreSQL: R5, R8, R10, R13 (R12, schema
drift: test_drift.py)."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pipeline import ingest_log
from pipeline.commitlog import CommitLog
from pipeline.errors import AuthenticationError, SourceUnavailableError
from pipeline.extract import watermark
from pipeline.lake import Lake
from tests.integration.extract.helpers import (
    add_currencies,
    all_versions,
    batch_versions,
    lake_url,
    mark,
    run,
    source,
    source_versions,
)

__all__ = ["lake_url", "source"]  # fixtures


class CrashError(Exception):
    pass


def test_crash_after_some_parts_keeps_the_watermark_and_rerun_reuses_the_keys(
    source: str, lake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R5: parts written, then a crash before the manifest: nothing is committed."""
    add_currencies(source, [f"2024-11-04 09:00:{s:02d}.000" for s in range(9)])
    run(source, lake_url, "r0")
    before = mark(lake_url)
    add_currencies(source, [f"2024-11-04 10:00:{s:02d}.000" for s in range(9)])
    lake = Lake(lake_url)
    opened: list[str] = []
    real_writer = Lake.parquet_writer

    def crash_on_third_part(self, key, *args, **kwargs):
        opened.append(key)
        if len(opened) == 3:
            raise CrashError("killed after two parts")
        return real_writer(self, key, *args, **kwargs)

    monkeypatch.setattr(Lake, "parquet_writer", crash_on_third_part)
    with pytest.raises(CrashError):
        run(source, lake_url, "r1", extract_part_rows=4)
    leftovers = [k for k in lake.list("currency/") if "/r1/" in k]
    assert len(leftovers) == 2
    assert not lake.exists("_manifests/currency/r1.json")
    assert mark(lake_url) == before
    assert all_versions(lake_url, "currency") == set(batch_versions(lake_url, "currency", "r0"))

    monkeypatch.setattr(Lake, "parquet_writer", real_writer)
    again = run(source, lake_url, "r1", extract_part_rows=4)

    assert again.files[:2] == leftovers and len(again.files) > 2
    assert all_versions(lake_url, "currency") == source_versions(source)
    after = mark(lake_url)
    assert after is not None and before is not None and after.order > before.order


def test_crash_between_manifest_and_watermark_is_repaired_by_the_replay(
    source: str, lake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R5: the manifest commits the batch; the watermark is a follow-up the replay redoes."""
    add_currencies(source, ["2024-11-04 09:00:00.000"])
    real_save = watermark.save

    def crash(*args, **kwargs):
        raise CrashError("killed before the watermark")

    monkeypatch.setattr(watermark, "save", crash)
    with pytest.raises(CrashError):
        run(source, lake_url, "r1")
    assert mark(lake_url) is None
    monkeypatch.setattr(watermark, "save", real_save)

    again = run(source, lake_url, "r1")

    assert again.status == "replayed" and again.rows == 2
    wm = mark(lake_url)
    assert wm is not None and wm.last_updated.isoformat() == "2024-11-04T09:00:00"


def test_crash_between_manifest_and_log_entry_loses_nothing(
    source: str, lake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watermark only moves once the batch is in the log: after a crash in between, the
    next run reads the rows again, and a replay of the crashed run logs its batch once."""
    add_currencies(source, ["2024-11-04 09:00:00.000"])
    real_append = CommitLog.append

    def crash(self: CommitLog, entry: dict) -> dict:
        raise CrashError("killed before the log entry")

    monkeypatch.setattr(CommitLog, "append", crash)
    with pytest.raises(CrashError):
        run(source, lake_url, "r1")
    monkeypatch.setattr(CommitLog, "append", real_append)
    lake = Lake(lake_url)
    assert lake.exists("_manifests/currency/r1.json") and mark(lake_url) is None
    assert ingest_log.batch_log(lake).read_after(0) == []

    second = run(source, lake_url, "r2")  # the next run: from the old watermark (none: full)
    assert second.rows == 2 and second.mode == "full"
    assert run(source, lake_url, "r1").status == "replayed"
    assert run(source, lake_url, "r1").status == "replayed"
    logged = [e["manifest"] for e in ingest_log.batch_log(lake).read_after(0)]
    assert logged == ["_manifests/currency/r2.json", "_manifests/currency/r1.json"]


def test_same_run_id_twice_writes_nothing_the_second_time(source: str, lake_url: str) -> None:
    """R8: a replayed (run, table) returns the recorded result and leaves the lake as it was."""
    add_currencies(source, ["2024-11-04 09:00:00.000"])
    first = run(source, lake_url, "r1")
    lake = Lake(lake_url)
    snapshot = {k: lake.read_bytes(k) for k in lake.list()}
    add_currencies(source, ["2024-11-04 09:30:00.000"])  # new data must not leak into r1

    second = run(source, lake_url, "r1")

    assert second.status == "replayed"
    assert {**second.to_dict(), "status": "ok"} == first.to_dict()
    assert {k: lake.read_bytes(k) for k in lake.list()} == snapshot


def test_concurrent_runs_never_move_the_watermark_backwards(source: str, lake_url: str) -> None:
    """R10: many extractions of one table at once while rows keep arriving."""
    add_currencies(source, ["2024-11-04 09:00:00.000"])
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(3):
                with psycopg.connect(source, autocommit=True) as conn:
                    conn.execute(
                        "INSERT INTO currency (currency_code, last_updated) "
                        "VALUES ('EUR', clock_timestamp())"
                    )
                run(source, lake_url, f"w{n}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors

    lake = Lake(lake_url)
    versions = [lake.read_json(k) for k in lake.list("_state/currency/") if "watermark-" in k]
    orders = [watermark.Watermark.from_json(v).order for v in versions]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)  # strictly forwards
    final = mark(lake_url)
    assert final is not None
    newest = max(lu for _, lu in source_versions(source))
    assert final.last_updated.isoformat(timespec="milliseconds") == newest  # the maximum won
    run(source, lake_url, "after")
    assert all_versions(lake_url, "currency") == source_versions(source)
    committed = {k for k in lake.list("_manifests/currency/") if lake.read_json(k)["rows"]}
    logged = [e["manifest"] for e in ingest_log.batch_log(lake).read_after(0)]
    assert sorted(logged) == sorted(committed)  # every batch with rows, each once


def test_wrong_password_fails_fast_without_the_password(source: str, lake_url: str) -> None:
    """R13: permanent, names the table, never shows the secret."""
    bad = make_conninfo(source, password="Not-The-Secret-123")
    with pytest.raises(AuthenticationError) as info:
        run(bad, lake_url, "r1")
    message = str(info.value)
    assert "currency" in message and "Not-The-Secret-123" not in message
    assert not isinstance(info.value, SourceUnavailableError)


def test_unreachable_source_is_a_transient_error(source: str, lake_url: str) -> None:
    """R13: a stopped server (nothing listens) is worth retrying; no password in the text."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = make_conninfo(source, port=str(port), password="Hidden-Pw-456")
    with pytest.raises(SourceUnavailableError) as info:
        run(down, lake_url, "r1")
    assert "currency" in str(info.value) and "Hidden-Pw-456" not in str(info.value)
    url = f"postgresql://postgres:Hidden-Pw-456@127.0.0.1:{port}/x"
    with pytest.raises(SourceUnavailableError) as info:
        run(url, lake_url, "r1")
    assert "Hidden-Pw-456" not in str(info.value)
    assert Lake(lake_url).list() == []


def test_source_lost_mid_stream_is_transient_and_commits_nothing(
    source: str, lake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R13: the server ends our session while rows stream: retryable, nothing committed."""
    import pipeline.extract.parts as extract_module
    from pipeline.extract import source as source_module

    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO currency (currency_code, last_updated) "
            "SELECT 'EUR', timestamp '2024-11-04' + g * interval '1 ms' "
            "FROM generate_series(1, 300000) g"
        )
    monkeypatch.setattr(source_module, "BATCH_BYTES", 4096)
    real = extract_module.to_catalog
    calls: list[int] = []

    def kill_the_session(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            with psycopg.connect(source, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'totesys-etl extract'"
                )
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_module, "to_catalog", kill_the_session)
    with pytest.raises(SourceUnavailableError, match=r"currency.*reading from source"):
        run(source, lake_url, "r1")
    lake = Lake(lake_url)
    assert not lake.exists("_manifests/currency/r1.json") and mark(lake_url) is None
