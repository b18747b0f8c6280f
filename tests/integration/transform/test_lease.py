"""The processed zone's lease: short, renewed while the transform works, clearable by hand."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from pipeline.errors import TransformBusyError
from pipeline.lake import Lake
from pipeline.settings import Settings
from pipeline.transform import lease as lease_module
from pipeline.transform import run as run_module
from pipeline.transform import transform
from pipeline.transform.lease import LEASE_KEY, Lease, clear, read_lease
from tests.lake_builders import row, write_batch, write_lookups


@pytest.fixture
def lakes(tmp_path) -> tuple[Lake, Lake]:
    return Lake(str(tmp_path / "ingest")), Lake(str(tmp_path / "processed"))


def _stamp(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


def test_default_lease_is_at_most_a_minute() -> None:
    assert Settings().transform_lease_seconds <= 60


def test_heartbeat_keeps_a_slow_transform_s_lease_alive(lakes, monkeypatch) -> None:
    """A 1 s lease on a transform that works for 3 s: renewals keep it, the commit passes
    its check, and a second transform meanwhile is refused."""
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    write_batch(ingest, "sales_order", "e1", [row("sales_order", sales_order_id=1)])
    real_execute = run_module.execute_round
    refused: list[str] = []

    def slow(*args, **kwargs):
        for _ in range(6):
            time.sleep(0.5)
            assert dt.datetime.fromisoformat(read_lease(processed)["expires_at"]) > (
                dt.datetime.now(dt.UTC)
            )
        try:
            other = Lease(processed, "intruder", 1)
            other.acquire()
        except TransformBusyError as exc:
            refused.append(str(exc))
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(run_module, "execute_round", slow)
    settings = Settings(
        ingest_url=ingest.url, processed_url=processed.url, transform_lease_seconds=1
    )
    assert transform("t1", settings).status == "ok"
    assert refused and "t1" in refused[0]
    assert not processed.exists(LEASE_KEY)


def test_a_holder_whose_lease_was_taken_over_cannot_commit(lakes, monkeypatch) -> None:
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    real_execute = run_module.execute_round

    def taken_over(*args, **kwargs):
        processed.write_json(
            LEASE_KEY, {"run_id": "taker", "token": "other", "expires_at": _stamp(60)}
        )
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(run_module, "execute_round", taken_over)
    settings = Settings(ingest_url=ingest.url, processed_url=processed.url)
    with pytest.raises(TransformBusyError, match="taken over"):
        transform("t1", settings)
    assert not processed.exists("_manifests/t1.json")
    assert read_lease(processed)["token"] == "other"  # the taker's lease is left alone


def test_clear_removes_an_expired_lease_only_unless_forced(lakes) -> None:
    _, processed = lakes
    assert clear(processed) == {"status": "free"}
    processed.write_json(LEASE_KEY, {"run_id": "live", "token": "a", "expires_at": _stamp(30)})
    assert clear(processed)["status"] == "held"
    assert processed.exists(LEASE_KEY)
    assert clear(processed, force=True)["status"] == "cleared"
    processed.write_json(LEASE_KEY, {"run_id": "dead", "token": "b", "expires_at": _stamp(-1)})
    assert clear(processed) == {"status": "cleared", "run_id": "dead", "expired": True}
    assert not processed.exists(LEASE_KEY)


def test_a_damaged_lease_record_reads_as_expired_and_is_taken_over(lakes) -> None:
    ingest, processed = lakes
    write_lookups(ingest, "e1")
    processed.write_bytes(LEASE_KEY, b'{"run_id": "x", "tok')
    settings = Settings(ingest_url=ingest.url, processed_url=processed.url)
    assert transform("t1", settings).status == "ok"


def test_clear_lease_command(lakes, capsys) -> None:
    from pipeline.local.cli import main

    _, processed = lakes
    processed.write_json(LEASE_KEY, {"run_id": "live", "token": "a", "expires_at": _stamp(30)})
    assert main(["clear-lease", "--processed-url", processed.url]) == 1
    assert '"held"' in capsys.readouterr().out
    assert main(["clear-lease", "--processed-url", processed.url, "--force"]) == 0
    assert not processed.exists(LEASE_KEY)
    assert lease_module.read_lease(processed) is None
