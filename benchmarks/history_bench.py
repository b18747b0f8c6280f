"""History benchmark: does a run cost more after a year of runs at a 15-minute cadence?

    python -m benchmarks.history_bench [--runs 10,1000,35000] [--real-up-to 1000]
        [--repeat 5] [--keep-all] [--json benchmarks/results/history.json]

For each N it builds a lake with N past runs over one seeded totesys (scale 1) and one
warehouse, then measures what an operator pays per run:

- N <= `--real-up-to`: real runs. Run 1 is the full load; every later run first
  simulates 15 minutes of business (`simulate --minutes 15`, weekends and nights
  included), then runs the pipeline in-process (`pipeline.local.runner.run_pipeline`).
- larger N: forged runs, then three real ones on top. The forger writes, run by run, what
  a real 15-minute run leaves in both zones, with the pipeline's own writers (the batch
  logs through `pipeline.commitlog`, so they compact as they would; manifests, attempt
  records, run reports, processed manifests and their log entries; data parts copied from
  the real runs' files; one ledger row per processed batch): during business hours the
  fact tables and `transaction` change (one batch each, about a third of all runs), the
  07:55 run settles payments, other runs find nothing. With retention on (the default) it
  leaves what housekeeping would have left after a year: records older than
  RETENTION_DAYS are absent and the transform's housekeeping cursor is past them;
  `--keep-all` keeps everything (housekeeping off: every object a year writes).

Then, each `--repeat` times: a no-change run, a small-delta run (72 rows changed: 24 sales
orders, 24 transactions, 24 payments) and `status`; per-run in-process time is the run's
own duration (`RunReport.duration_s`: the extract of every table, the transform and the
load; the run report's write and the ingestion housekeeping come after it), split into
those three steps in `local.breakdown` (plus the slowest table's extract).

S3 requests: both zones are copied into an in-process moto S3 server that counts every
request by method, and one run is made against the copy: a no-change run on a copy taken
before the local runs, then (the bucket dropped, a new copy of the lake as the local runs
left it, 72 rows changed) a delta run. moto keeps every object in memory, so only one copy
exists at a time, and the copy leaves out the Parquet parts forged runs wrote (a year of
them is most of the lake's objects and bytes): the measured runs read only the parts of
batches after their cursors, which are all real. The server records every key a GET or
HEAD asked for and every prefix a LIST covered, and each S3 result lists the left-out parts
the run touched (`left_out_parts_requested`; a read of one would also have failed the run
with NoSuchKey), so an empty list is the evidence that the copy stood in for the lake.

Results are written to `--json` as each phase ends (history built, S3 no-change run, local
no-change runs and status, local delta runs, S3 delta run), with the load average next to
each, so a long run stopped late keeps the figures of the phases it finished. The machine
may be shared: medians over `--repeat` runs are printed next to the best.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import psycopg
from psycopg.types.json import Jsonb

from pipeline import ingest_log, layout, processed_log
from pipeline.catalog import TABLE_NAMES
from pipeline.lake import Lake
from pipeline.load import ddl
from pipeline.local import history, pgserver
from pipeline.local.runner import run_pipeline
from pipeline.local.status import gather_status
from pipeline.settings import Settings

CADENCE = dt.timedelta(minutes=15)
DELTA = {"sales_order": 24, "transaction": 24, "payment": 24}
FACT_TABLES = ("sales_order", "purchase_order", "transaction", "payment")


# -- the lake's history ------------------------------------------------------------------
def real_history(settings: Settings, source: str, runs: int) -> None:
    """Run 1 (full load), then `runs - 1` times: 15 simulated minutes and a pipeline run."""
    from pipeline.local.simulator.simulate import simulate

    for n in range(1, runs + 1):
        if n > 1:
            simulate(source, minutes=15, seed=n)
        report = run_pipeline(settings, run_id=f"real-{n:06d}")
        if not report.succeeded:
            raise RuntimeError(f"real run {n} failed: {report.to_dict()}")


class Forger:
    """Writes what `runs` past runs at a 15-minute cadence leave in both zones (module doc)."""

    def __init__(self, settings: Settings, warehouse: str, *, keep_all: bool) -> None:
        self.settings, self.warehouse, self.keep_all = settings, warehouse, keep_all
        self.ingest, self.processed = settings.ingest_lake(), settings.processed_lake()
        self.templates = _templates()
        self.ledger: list[tuple[Any, ...]] = []

    def forge(self, runs: int, end: dt.datetime) -> None:
        cutoff = end - self.settings.retention
        processed_seq, previous = 0, None
        housekept, committed_at = 0, None
        for n in range(1, runs + 1):
            at = end - (runs - n + 1) * CADENCE
            old = not self.keep_all and at < cutoff  # its records would have expired
            run_id = f"forged-{n:06d}"
            changed = _changes(at)
            inputs = [self._extract(t, run_id, at, changed.get(t, 0), old) for t in TABLE_NAMES]
            inputs = [k for k in inputs if k]
            if inputs:  # a transform commit, then its load
                processed_seq += 1
                committed_at = at.isoformat(timespec="microseconds")
                self._transform(run_id, processed_seq, previous, inputs, committed_at, old)
                previous = run_id
                housekept = processed_seq if old else housekept
            history.record_run(self.ingest, _report(run_id, at, changed))
        self._finish(runs, previous, processed_seq, committed_at, housekept, cutoff)

    def _extract(self, table: str, run_id: str, at: dt.datetime, rows: int, old: bool) -> str:
        key = layout.ingestion_manifest(table, run_id)
        manifest = dict(self.templates["manifest"][table])
        files = []
        if rows:
            part, rows = self.templates["part"][table]
            files = [layout.ingestion_part(table, f"{at:%Y-%m-%d}", run_id, 0)]
            self.ingest.write_bytes(files[0], part)
            if not old:
                self.ingest.write_json(
                    layout.attempt_record(table, run_id),
                    {"run_id": run_id, "first_attempt_at": at.isoformat(), "day": f"{at:%Y-%m-%d}"},
                )
        # The snapshot is taken at the run's own time, as a real run's is: the held state
        # archives fold entries by it, so a year of template snapshots from today would
        # all stay recent and every pass would read a year of entries.
        observed = at.replace(tzinfo=None).isoformat(timespec="microseconds")
        manifest.update(
            run_id=run_id,
            files=files,
            rows=rows,
            committed_at=at.isoformat(timespec="microseconds"),
            log_from=ingest_log.head(self.ingest),
            snapshot={"from": observed, "to": observed},
            window={**(manifest.get("window") or {}), "until": observed},
        )
        if not old:
            self.ingest.write_json(key, manifest)
        entry = ingest_log.log_batch(self.ingest, key, manifest, replayed=False)  # type: ignore[arg-type]
        return key if entry else ""

    def _transform(
        self, run_id: str, seq: int, previous: str | None, inputs: list[str], at: str, old: bool
    ) -> None:
        outputs = {}
        for name, (part, rows) in self.templates["output"].items():
            key = layout.processed_part(name, run_id)
            self.processed.write_bytes(key, part)
            outputs[name] = {"files": [key], "rows": rows}
        manifest = {
            "run_id": run_id,
            "inputs": inputs,
            "outputs": outputs,
            "rows_in": {},
            "quarantined": {},
            "quarantine_files": {},
            "duplicates": {},
            "pending": {},
            "more": False,
            "state": {"run_id": run_id, "files": {}, "log_seq": seq, "committed_at": at},
            "committed_at": at,
            "seq": seq,
            "previous": previous,
            "released": [],
        }
        key = layout.processed_manifest(run_id)
        if not old:
            self.processed.write_json(key, manifest)
        processed_log.log_commit(self.processed, key, manifest)  # type: ignore[arg-type]
        rows = {name: o["rows"] for name, o in outputs.items()}
        self.ledger.append((run_id, run_id, at, Jsonb(rows), Jsonb(rows), 0.1))

    def _finish(
        self,
        runs: int,
        last: str | None,
        seq: int,
        committed_at: str | None,
        housekept: int,
        cutoff: dt.datetime,
    ) -> None:
        """Point the transform at the end of the forged log; ledger rows; run-log expiry."""
        through = ingest_log.head(self.ingest)
        pointers = {
            "run_id": last,
            "files": {},
            "bucket_ids": None,
            "ingest": {"through": through, "done": [], "partial": {}, "legacy": []},
            "log_seq": seq or None,
            "committed_at": committed_at,
            "housekept": housekept,
        }
        if last is not None:  # the head's manifest always exists (housekeeping keeps it)
            key = layout.processed_manifest(last)
            if not self.processed.exists(key):
                entry = processed_log.batch_log(self.processed).get(seq)
                assert entry is not None
                self.processed.write_json(key, {**entry, "state": pointers})
        self.processed.write_json(layout.STATE_HEAD, {"current": pointers, "previous": {}})
        if not self.keep_all:  # whole run-log segments past retention expire
            from pipeline.housekeeping import _expired_segments

            doomed = _expired_segments(self.ingest, layout.RUN_LOG, cutoff + dt.timedelta(days=1))
            self.ingest.delete_many(doomed)
        _insert_ledger(self.warehouse, self.ledger)
        for table in TABLE_NAMES:
            self.ingest.write_json(
                layout.table_summary(table),
                {"table": table, "batches": runs, "last_run": f"forged-{runs:06d}"},
            )


def _changes(at: dt.datetime) -> dict[str, int]:
    """Which tables a 15-minute run at `at` finds changed (business hours: the facts)."""
    if at.weekday() >= 5:
        return {}
    if at.hour == 7 and at.minute == 45:  # the 07:55 settlement batch
        return {"payment": 1}
    if 8 <= at.hour < 19:
        return dict.fromkeys(FACT_TABLES, 1)
    return {}


def _report(run_id: str, at: dt.datetime, changed: dict[str, int]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "status": "succeeded",
        "tables": {t: {"status": "ok", "rows": changed.get(t, 0)} for t in TABLE_NAMES},
        "loaded": {},
        "quarantined": 0,
        "error": None,
        "rerun": None,
        "started_at": at.isoformat(),
        "finished_at": (at + dt.timedelta(seconds=1)).isoformat(),
        "duration_s": 0.5,
    }


_TEMPLATES: dict[str, Any] = {}


def _templates() -> dict[str, Any]:
    return _TEMPLATES


def collect_templates(settings: Settings) -> None:
    """Real objects to copy from: each table's manifest and smallest part, each warehouse
    table's smallest output part (from a lake that real runs wrote)."""
    ingest, processed = settings.ingest_lake(), settings.processed_lake()
    manifests, parts, outputs = {}, {}, {}
    for table in TABLE_NAMES:
        keys = ingest.list(layout.ingestion_manifests(table))
        manifests[table] = ingest.read_json(keys[-1])
        found = [(ingest.read_json(k)["rows"], ingest.read_json(k)["files"]) for k in keys]
        rows, files = min((r, f) for r, f in found if r)
        parts[table] = (ingest.read_bytes(files[0]), rows)
    for key in processed.list(layout.MANIFESTS):
        manifest = processed.read_json(key)
        for name, out in manifest["outputs"].items():
            smaller = name not in outputs or out["rows"] < outputs[name][1]
            if out["rows"] and len(out["files"]) == 1 and smaller:
                outputs[name] = (processed.read_bytes(out["files"][0]), out["rows"])
    _TEMPLATES.update(manifest=manifests, part=parts, output=outputs)


def _insert_ledger(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {ddl.LEDGER_TABLE} (batch_run_id, load_run_id, committed_at, rows, "
            "rows_in, duration_s) VALUES (%s, %s, %s, %s, %s, %s)",
            rows,
        )


# -- measuring --------------------------------------------------------------------------
def change_rows(source: str, counts: dict[str, int]) -> int:
    """Bump `last_updated` (and a value) of the newest rows of each table, as edits would."""
    from psycopg import sql

    from pipeline.catalog import TABLES

    changed = 0
    with psycopg.connect(source) as conn:
        for table, n in counts.items():
            t = TABLES[table]
            query = sql.SQL(
                "UPDATE {t} SET {lu} = clock_timestamp() AT TIME ZONE 'UTC' WHERE {pk} IN "
                "(SELECT {pk} FROM {t} ORDER BY {pk} DESC LIMIT %s)"
            ).format(
                t=sql.Identifier(table),
                lu=sql.Identifier(t.cursor),
                pk=sql.Identifier(t.primary_key),
            )
            changed += conn.execute(query, (n,)).rowcount
    return changed


def measure(
    settings: Settings,
    source: str,
    repeat: int,
    label: str,
    result: dict[str, Any],
    save: Callable[[dict[str, Any]], None],
) -> None:
    """No-change runs, then small-delta runs, and status: their in-process seconds, into
    `result["local"]` (saved after each kind). (The no-change runs go first: a run after a
    delta re-reads its overlap window, as every run does at this cadence, so the delta runs
    each find 72 new rows and the 72 before.) The load average is taken before each kind."""
    local = result["local"]

    def summary(values: list[float]) -> dict[str, Any]:
        return {"best": min(values), "median": statistics.median(values), "all": values}

    idle, status = [], []
    local["load_no_change"] = os.getloadavg()
    local["breakdown"] = {"no_change": [], "delta": []}
    for i in range(repeat):
        report, parts = timed_run(settings, f"{label}-idle-{i}")
        local["breakdown"]["no_change"].append(parts)
        idle.append(report.duration_s)
        started = time.perf_counter()
        gather_status(settings)
        status.append(time.perf_counter() - started)
    local.update(no_change=summary(idle), status=summary(status))
    result.update(phase="local no-change and status done")
    save(result)
    delta, rows = [], []
    local["load_delta"] = os.getloadavg()
    for i in range(repeat):
        change_rows(source, DELTA)
        report, parts = timed_run(settings, f"{label}-delta-{i}")
        local["breakdown"]["delta"].append(parts)
        delta.append(report.duration_s)
        rows.append(sum(t["rows"] for t in report.tables.values()))
    local.update(delta=summary(delta), delta_rows=rows, load_after=os.getloadavg())
    result.update(phase="local delta done")
    save(result)


def timed_run(settings: Settings, run_id: str) -> tuple[Any, dict[str, float]]:
    """One pipeline run, and where its time went: the extract of all tables (start to the
    transform's start), the transform, the load (seconds, from the runner's progress
    events; together the report's `duration_s`) and the slowest table's extract."""
    marks: dict[str, float] = {}
    tables: list[float] = []

    def progress(table: str, event: str, detail: dict[str, Any]) -> None:
        marks[f"{table} {event}"] = time.perf_counter()
        if table not in {"transform", "load"} and event != "started":
            tables.append(float(detail.get("duration_s", 0.0)))

    started = time.perf_counter()
    report = run_pipeline(settings, run_id=run_id, progress=progress)
    assert report.succeeded, report.to_dict()
    return report, {
        "extract": marks["transform started"] - started,
        "slowest_table": max(tables, default=0.0),
        "transform": marks["transform finished"] - marks["transform started"],
        "load": marks["load finished"] - marks["load started"],
    }


def lake_objects(settings: Settings) -> dict[str, int]:
    return {
        "ingestion": len(settings.ingest_lake().list()),
        "processed": len(settings.processed_lake().list()),
    }


# -- S3: a moto server that counts requests -------------------------------------------------
class CountingMotoServer:
    """moto's server in this process, counting requests by method (and copying lakes in
    through its backend: a year of objects over HTTP would take longer than the runs)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.paths: set[str] = set()
        self.read_dirs: Counter[str] = Counter()  # GET/HEAD per folder (where a run reads)
        self.listed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def start(self) -> str:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            method = environ["REQUEST_METHOD"]
            query = environ.get("QUERY_STRING", "")
            kind = "LIST" if method == "GET" and "list-type" in query else method
            with self._lock:
                self.counts[kind] += 1
                if kind == "LIST":  # what it lists: `/bucket/prefix`
                    prefix = parse_qs(query).get("prefix", [""])[0]
                    self.listed[f"{environ.get('PATH_INFO', '').rstrip('/')}/{prefix}"] += 1
                elif method in {"GET", "HEAD"}:
                    self.paths.add(path := environ.get("PATH_INFO", ""))
                    self.read_dirs[path.rsplit("/", 1)[0]] += 1
            return app(environ, start_response)

        self.server = make_server(
            "127.0.0.1", 0, counting, True, request_handler=MotoRequestHandler
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @contextmanager
    def counting(self) -> Iterator[Counter[str]]:
        with self._lock:
            self.counts.clear()
            self.paths.clear()
            self.read_dirs.clear()
            self.listed.clear()
        seen: Counter[str] = Counter()
        yield seen
        with self._lock:
            seen.update(self.counts)

    def touched(self, keys: list[str]) -> list[str]:
        """Which of `keys` (`/bucket/key`) a GET or HEAD asked for, or a LIST covered, since
        `counting` began."""
        with self._lock:
            paths, listed = set(self.paths), tuple(self.listed)
        return sorted(k for k in keys if k in paths or k.startswith(listed))

    @staticmethod
    def _backend() -> Any:
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def upload(
        self, bucket: str, prefix: str, lake: Lake, skip: Callable[[str], bool]
    ) -> tuple[int, list[str]]:
        """Copy `lake` under `prefix`, except the keys `skip` selects: (copied, skipped)."""
        backend = self._backend()
        if bucket not in backend.buckets:
            backend.create_bucket(bucket, "us-east-1")
        copied, skipped = 0, []
        for key in lake.list():
            if skip(key):
                skipped.append(f"/{bucket}/{prefix}/{key}")
                continue
            backend.put_object(bucket, f"{prefix}/{key}", lake.read_bytes(key))
            copied += 1
        return copied, skipped

    def drop(self, bucket: str) -> None:
        """Delete the bucket and every object in it (only one lake copy is held at a time)."""
        backend = self._backend()
        if bucket in backend.buckets:
            for key in list(backend.buckets[bucket].keys.keys()):
                backend.delete_object(bucket, key)
            backend.delete_bucket(bucket)
        gc.collect()


def forged_data_part(key: str) -> bool:
    """A Parquet part a forged run wrote (ingestion `.../forged-N/part-*.parquet`, processed
    `.../run=forged-N/part-*.parquet`). The measured runs never read one: each run reads
    only the parts of batches after its cursors, and every forged batch is behind them. The
    S3 copy leaves them out (a year of them is most of the bytes and objects; moto keeps
    every object in memory) and `counted_run` checks that no request asked for one."""
    return key.endswith(".parquet") and ("/forged-" in key or "/run=forged-" in key)


def on_s3(
    settings: Settings, moto: CountingMotoServer, url: str, bucket: str
) -> tuple[Settings, dict[str, Any]]:
    """Both zones copied into a new bucket of the moto server (without forged data parts);
    settings that use them, and what was copied and left out."""
    copied, skipped = {}, []
    for zone, lake in (
        ("ingestion", settings.ingest_lake()),
        ("processed", settings.processed_lake()),
    ):
        copied[zone], left = moto.upload(bucket, zone, lake, forged_data_part)
        skipped += left
    s3 = settings.replace(
        ingest_url=f"s3://{bucket}/ingestion",
        processed_url=f"s3://{bucket}/processed",
        s3_endpoint=url,
        aws_region="us-east-1",
    )
    return s3, {"copied": copied, "skipped_forged_parts": skipped}


def counted_run(
    moto: CountingMotoServer, s3: Settings, copy: dict[str, Any], run_id: str
) -> dict[str, Any]:
    """One run against the copy: its requests by method, and which of the parts the copy
    left out it asked for or listed (none, or the copy was not a faithful stand-in)."""
    with moto.counting() as counts:
        report = run_pipeline(s3, run_id=run_id)
    assert report.succeeded, report.to_dict()
    # A run that read a left-out part would have failed (NoSuchKey); one that listed over
    # them would have seen fewer keys than in the lake: both would show here.
    touched = moto.touched(copy["skipped_forged_parts"])
    return {
        "requests": sum(counts.values()),
        "by_method": dict(sorted(counts.items())),
        "objects_copied": copy["copied"],
        "forged_parts_left_out": len(copy["skipped_forged_parts"]),
        "left_out_parts_requested": touched,
        "rows": sum(t["rows"] for t in report.tables.values()),
        "lists_by_prefix": dict(moto.listed.most_common(40)),
        "reads_by_folder": dict(moto.read_dirs.most_common(40)),
        "duration_s": report.duration_s,
    }


def s3_phase(
    moto: CountingMotoServer,
    url: str,
    settings: Settings,
    bucket: str,
    run_id: str,
    before: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Copy the lake into `bucket`, (`before`), one counted run, drop the bucket again. An
    error is recorded, not raised: the local figures stay in the results."""
    try:
        s3, copy = on_s3(settings, moto, url, bucket)
        if before is not None:
            before()
        return counted_run(moto, s3, copy, run_id)
    except Exception as exc:  # recorded in the JSON next to the local figures
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        moto.drop(bucket)


# -- the benchmark ----------------------------------------------------------------------
def bench_one(
    n: int,
    args: argparse.Namespace,
    admin: str,
    moto: CountingMotoServer,
    url: str,
    save: Callable[[dict[str, Any]], None],
    workdir: str,
) -> dict[str, Any]:
    """Build N runs of history in a folder of `workdir`, then measure; `save(result)` after
    each phase, so a run stopped late still leaves the figures of the phases it finished.
    The lake stays until `workdir` goes (deleting a year's files takes minutes here; the
    next N's timed runs should not wait for it, nor share the disk with it)."""
    from pipeline.load.migrations import migrate
    from pipeline.local.simulator.seed import seed

    tag = f"h{n}"
    result: dict[str, Any] = {"runs": n, "phase": "building"}
    source = pgserver.create_database(admin, f"{tag}_totesys", replace=True)
    warehouse = pgserver.create_database(admin, f"{tag}_warehouse", replace=True)
    seed(source, scale=1, seed=1)
    migrate(warehouse)
    tmp = tempfile.mkdtemp(prefix=f"history-{n}-", dir=workdir)
    settings = Settings(
        ingest_url=f"{tmp}/ingestion",
        processed_url=f"{tmp}/processed",
        source_dsn=source,
        warehouse_dsn=warehouse,
        extract_workers=2,
    )
    started = time.perf_counter()
    if n <= args.real_up_to:
        real_history(settings, source, n)
        how = "real"
    else:
        if not _TEMPLATES:  # the objects to copy come from real runs
            with tempfile.TemporaryDirectory() as t2:
                probe = settings.replace(ingest_url=f"{t2}/i", processed_url=f"{t2}/p")
                probe_source = pgserver.create_database(admin, "probe_totesys", replace=True)
                probe_wh = pgserver.create_database(admin, "probe_warehouse", replace=True)
                seed(probe_source, scale=1, seed=1)
                real_history(
                    probe.replace(source_dsn=probe_source, warehouse_dsn=probe_wh),
                    probe_source,
                    20,
                )
                collect_templates(probe)
        forger = Forger(settings, warehouse, keep_all=args.keep_all)
        forge_started = time.perf_counter()
        forger.forge(n - 3, dt.datetime.now(dt.UTC) - 3 * CADENCE)
        result["forge_seconds"] = time.perf_counter() - forge_started
        real_history_after_forged(settings, source)
        how = "forged" + (" (everything kept)" if args.keep_all else "")
    built = time.perf_counter() - started
    if args.keep_all:  # housekeeping off for the measured runs too
        settings = settings.replace(retention_days=36_500)
    objects = lake_objects(settings)
    print(f"N={n:,}: {how} history built in {built:.0f} s, objects {objects}", flush=True)
    result.update(history=how, build_seconds=built, objects=objects, s3={}, local={})
    result.update(phase="built", load_built=os.getloadavg())
    save(result)
    # One copy of the lake in the moto server at a time: a no-change run on a copy
    # taken now, the local runs, then a copy of the lake as they left it for the delta.
    result["s3"]["no_change"] = s3_phase(moto, url, settings, f"{tag}-s3", f"{tag}-s3a")
    result.update(phase="s3 no-change done")
    save(result)
    measure(settings, source, args.repeat, tag, result, save)
    result["s3"]["delta"] = s3_phase(
        moto, url, settings, f"{tag}-s3", f"{tag}-s3b", lambda: change_rows(source, DELTA)
    )
    result.update(phase="done")
    save(result)
    return result


def real_history_after_forged(settings: Settings, source: str) -> None:
    """Three real runs on a forged history: the full load, then two incremental ones."""
    from pipeline.local.simulator.simulate import simulate

    for n in range(1, 4):
        if n > 1:
            simulate(source, minutes=15, seed=n)
        report = run_pipeline(settings, run_id=f"real-on-forged-{n}")
        if not report.succeeded:
            raise RuntimeError(f"real run {n} on the forged history failed: {report.to_dict()}")


def print_table(results: list[dict[str, Any]]) -> None:
    print("\n== history benchmark: per-run cost after N runs (in-process seconds, best / median)")
    print(f"{'N':>8} {'history':<10} {'no-change':>16} {'72-row delta':>16} {'status':>16} "
          f"{'S3 req no-change':>17} {'S3 req delta':>13}")  # fmt: skip
    for r in results:
        loc, s3 = r["local"], r["s3"]

        def cell(k: str, loc: dict[str, Any] = loc) -> str:
            return f"{loc[k]['best']:.3f} / {loc[k]['median']:.3f}"

        idle, delta = (s3[k].get("requests", "error") for k in ("no_change", "delta"))
        print(f"{r['runs']:>8,} {r['history'].split()[0]:<10} {cell('no_change'):>16} "
              f"{cell('delta'):>16} {cell('status'):>16} {idle:>17} {delta:>13}")  # fmt: skip
    first = min(results, key=lambda r: int(r["runs"]))  # (ratios against the smallest N)
    for r in results:
        if r is first:
            continue
        ratio = {
            k: r["local"][k]["median"] / first["local"][k]["median"] for k in ("no_change", "delta")
        }
        print(f"N={r['runs']:,} vs N={first['runs']:,}: no-change {ratio['no_change']:.2f}x, "
              f"delta {ratio['delta']:.2f}x (medians)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", default="10,1000,35000", help="comma-separated N")
    p.add_argument("--real-up-to", type=int, default=1000, help="largest N built from real runs")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--keep-all", action="store_true", help="forge without retention")
    p.add_argument("--admin-dsn", default=os.environ.get("BENCH_PG_DSN"))
    p.add_argument("--json", default="benchmarks/results/history.json")
    args = p.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # (one line per S3 request)
    moto = CountingMotoServer()
    url = moto.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(key, value)
    runs = [int(x) for x in args.runs.split(",")]
    results: list[dict[str, Any]] = []
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)

    def save(current: dict[str, Any]) -> None:
        Path(args.json).write_text(json.dumps([*results, current], indent=1, default=str))

    with (
        pgserver.throwaway_postgres(dsn=args.admin_dsn) as server,  # (a DSN: used as is)
        tempfile.TemporaryDirectory(prefix="history-bench-") as workdir,
    ):
        print(server.description, flush=True)
        for n in runs:
            results.append(bench_one(n, args, server.dsn, moto, url, save, workdir))
            print_table(results)  # (as each N is done: a year's history takes a while)
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
