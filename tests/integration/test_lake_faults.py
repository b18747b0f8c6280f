"""Every lake fault is a typed error and one line from the CLI, with nothing left behind.

Real faults where the machine allows: a small tmpfs fills up (ENOSPC) and is remounted
read-only (EROFS); a file stands where a folder should be; a Parquet part is truncated; an
S3 endpoint refuses connections, or answers throttling and 5xx (tests/faulty_s3.py in front
of moto). Where no tmpfs can be mounted, the full disk is simulated by an ENOSPC from the
writer and the read-only lake is skipped (visibly) when running as root.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import CorruptBatchError, LakeStorageError, LakeUnavailableError
from pipeline.lake import Lake
from pipeline.local import history
from pipeline.local.cli import main
from tests.hostile_pg import closed_port
from tests.lake_builders import row, write_batch, write_lookups


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of `size` at `path`; yields False (and mounts nothing) if not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def leftovers(root: Path) -> list[str]:
    """Temporary files a failed write left behind (there must be none)."""
    return sorted(str(p) for p in root.rglob("*.tmp"))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(err: str, name: str, *says: str) -> str:
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("totesys-etl ") and f"{name}: " in line, err
    for text in says:
        assert text in line, line
    return line


def _sales_rows(n: int) -> list[dict]:
    return [row("sales_order", sales_order_id=i, units_sold=i % 90 + 1) for i in range(1, n + 1)]


# -- corrupt files ----------------------------------------------------------------------------
def test_a_truncated_ingestion_part_is_a_corrupt_batch_in_one_line(tmp_path: Path, capsys):
    ingest = Lake(str(tmp_path / "in"))
    key = write_batch(ingest, "staff", "e1", [row("staff")])
    part = Path(ingest.path(ingest.read_json(key)["files"][0]))
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    code, _, err = cli(capsys, "transform", "--run-id", "t1", "--ingest-url", ingest.url,
                       "--processed-url", str(tmp_path / "out"))  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "CorruptBatchError", str(part), "truncated or corrupt",
                          "totesys-etl reconcile --tables staff --repair")  # fmt: skip
    assert Lake(str(tmp_path / "out")).list("_manifests/") == [] and leftovers(tmp_path) == []


# -- a full disk --------------------------------------------------------------------------------
def test_a_full_disk_fails_in_one_line_leaves_no_partial_file_and_heals(
    tmp_path: Path, capsys, monkeypatch
):
    ingest = Lake(str(tmp_path / "in"))
    write_lookups(ingest, "e0")
    write_batch(ingest, "sales_order", "e1", _sales_rows(20_000))
    processed_dir = tmp_path / "small"
    with tmpfs(processed_dir, "96k") as mounted:
        if not mounted:  # simulated: the writer reports ENOSPC after writing a partial file
            import pipeline.lake

            real = pipeline.lake.pq.write_table

            def full(table, where, **kwargs):
                if "fact_sales_order" in where:
                    Path(where).write_bytes(b"PAR1 partial")
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(table, where, **kwargs)

            monkeypatch.setattr(pipeline.lake.pq, "write_table", full)
        args = ("transform", "--run-id", "t1", "--ingest-url", ingest.url,
                "--processed-url", str(processed_dir))  # fmt: skip
        code, _, err = cli(capsys, *args)
        assert code == 2
        assert_one_line_error(err, "LakeStorageError", "the file system is full", "re-run")
        processed = Lake(str(processed_dir))
        assert processed.list("_manifests/") == [] and leftovers(processed_dir) == []
        for key in processed.list():  # what stayed is whole (and unlisted): no partial file
            if key.endswith(".parquet"):
                processed.read_parquet([key])
        if mounted:
            remount(processed_dir, "size=64m")
        else:
            monkeypatch.undo()
        code, out, _ = cli(capsys, *args)
        assert code == 0 and json.loads(out)["status"] == "ok"


def test_a_json_write_on_a_full_disk_removes_its_temporary_file(tmp_path: Path, monkeypatch):
    where = tmp_path / "small"
    with tmpfs(where, "64k") as mounted:
        lake = Lake(str(where))
        if mounted:
            with open(where / "filler", "wb") as f, pytest.raises(OSError):
                f.write(b"x" * 200_000)  # the disk is now full
        else:

            def full(self, data):
                Path.open(self, "wb").close()  # the temporary file exists, empty
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(Path, "write_bytes", full)
        with pytest.raises(LakeStorageError, match="full") as info:
            lake.write_json("_state/head.json", {"x": "y" * 10_000})
        assert "_state/head.json" in str(info.value)
        assert leftovers(where) == [] and not (where / "_state" / "head.json").exists()


# -- a read-only lake, a path under a file ------------------------------------------------------
def test_a_read_only_lake_is_a_permanent_error_in_one_line(tmp_path: Path, capsys):
    where = tmp_path / "ro"
    with tmpfs(where, "16m") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("root without mount: no way to make a read-only folder")
            where.chmod(0o555)
        ingest = Lake(str(where / "in")) if mounted else Lake(str(tmp_path / "in"))
        write_batch(ingest, "staff", "e1", [row("staff")])
        if mounted:
            remount(where, "ro")
        code, _, err = cli(capsys, "transform", "--run-id", "t1", "--ingest-url", ingest.url,
                           "--processed-url", str(where / "out"))  # fmt: skip
        assert code == 2
        assert_one_line_error(err, "LakeStorageError", str(where / "out"), "access")
        assert leftovers(tmp_path) == []


def test_a_lake_under_a_file_is_a_permanent_error_and_run_still_reports(tmp_path: Path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the lake should be")
    dead = f"host=127.0.0.1 port={closed_port()} user=u password=never-shown dbname=d"
    code, _, err = cli(capsys, "transform", "--run-id", "t1", "--ingest-url",
                       str(blocker / "in"), "--processed-url", str(tmp_path / "out"))  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "LakeStorageError", str(blocker / "in"), "not usable")

    # run: the processed zone is unusable; the report is still written and printed.
    code, out, err = cli(capsys, "run", "--json", "--tables", "currency", "--run-id", "r1",
                         "--source-dsn", dead, "--warehouse-dsn", dead,
                         "--ingest-url", str(tmp_path / "in"),
                         "--processed-url", str(blocker / "out"))  # fmt: skip
    assert code == 1 and "Traceback" not in err
    report = json.loads(out)
    assert report["status"] == "failed" and report["error"].startswith("LakeStorageError")
    assert report["tables"]["currency"]["error"].startswith("SourceUnavailableError")
    [stored] = history.recent_runs(Lake(str(tmp_path / "in")), 1)  # (the run log)
    assert stored["run_id"] == "r1" and stored["error"] == report["error"]

    # run: not even the report can be written: the summary says so, in one line.
    code, out, err = cli(capsys, "run", "--json", "--tables", "currency", "--run-id", "r2",
                         "--ingest-url", str(blocker / "in"),
                         "--processed-url", str(blocker / "out"))  # fmt: skip
    assert code == 1 and json.loads(out)["report_error"].startswith("LakeStorageError")
    assert_one_line_error(err, "LakeStorageError", "run report not written")


# -- S3: unreachable, throttled, failing -----------------------------------------------------------
def test_an_unreachable_s3_endpoint_is_transient_in_one_line(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port()}")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(key, "us-east-1" if key == "AWS_REGION" else "testing")
    code, _, err = cli(capsys, "transform", "--run-id", "t1", "--ingest-url", "s3://lake/in",
                       "--processed-url", "s3://lake/out")  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "LakeUnavailableError", "s3://lake/", "retry")


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (503, "SlowDown", LakeUnavailableError),
        (500, "InternalError", LakeUnavailableError),
        (403, "AccessDenied", LakeStorageError),
    ],
)
def test_s3_errors_are_typed_for_every_operation(
    s3_settings, s3_bucket, status: int, code: str, error: type
) -> None:
    from tests.faulty_s3 import running

    with running(str(s3_settings.s3_endpoint)) as proxy:
        lake = Lake(f"s3://{s3_bucket}/zone", endpoint=proxy.url, region=s3_settings.aws_region)
        lake.write_parquet("t.parquet", pa.table({"a": [1]}))
        operations = {
            "exists": lambda: lake.exists("t.parquet"),
            "read_parquet": lambda: lake.read_parquet(["t.parquet"]),
            "read_bytes": lambda: lake.read_bytes("t.parquet"),
            "write_bytes": lambda: lake.write_bytes("k.json", b"{}"),
            "create_bytes": lambda: lake.create_bytes("c.json", b"{}"),
            "write_parquet": lambda: lake.write_parquet("w.parquet", pa.table({"a": [1]})),
            "list": lambda: lake.list(""),
            "delete": lambda: lake.delete("t.parquet"),
        }
        for name, operation in operations.items():
            proxy.arm(100, status, code)
            with pytest.raises(error) as info:
                operation()
            assert f"s3://{s3_bucket}/zone" in str(info.value), name
            proxy.disarm()
        assert lake.read_parquet(["t.parquet"]).num_rows == 1  # it passes once S3 recovers


def test_a_corrupt_s3_object_is_a_corrupt_batch(s3_settings, s3_bucket) -> None:
    lake = Lake(f"s3://{s3_bucket}/zone", endpoint=s3_settings.s3_endpoint,
                region=s3_settings.aws_region)  # fmt: skip
    lake.write_bytes("t.parquet", b"PAR1 definitely not parquet")
    with pytest.raises(CorruptBatchError, match="truncated or corrupt"):
        lake.read_parquet(["t.parquet"])


def test_s3_throttling_in_the_middle_of_a_transform_scan_is_transient(
    s3_settings, s3_bucket, monkeypatch
) -> None:
    """Polars passes pyarrow's OSError on from a scan: it must come out typed, transient."""
    import pipeline.transform.inputs
    from pipeline.transform import transform
    from tests.faulty_s3 import running

    with running(str(s3_settings.s3_endpoint)) as proxy:
        settings = s3_settings.replace(
            s3_endpoint=proxy.url,
            ingest_url=f"s3://{s3_bucket}/in",
            processed_url=f"s3://{s3_bucket}/out",
        )
        write_batch(settings.ingest_lake(), "staff", "e1", [row("staff")])
        # Past the footer checks, so the fault meets the scan itself.
        monkeypatch.setattr(pipeline.transform.inputs, "_check_schema", lambda *a: set())
        proxy.arm(100, 503, "SlowDown", methods=("GET",), path="/in/staff/")
        with pytest.raises(LakeUnavailableError, match="did not answer"):
            transform("t1", settings)
        assert proxy.faults.injected
        proxy.disarm()
        assert transform("t2", settings).status == "ok"
