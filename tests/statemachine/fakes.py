"""Stand-in step modules for exercising the state machine and the real handlers alone.

They are installed as `pipeline.extract`, `pipeline.transform` and `pipeline.load` in
`sys.modules`, so the real `pipeline.handlers` run unchanged against them. Results are
shaped like docs/CONTRACTS.md and sized like the largest realistic run: thousands of
part files and consumed manifests, warnings, every warehouse table.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.catalog import TABLE_NAMES
from pipeline.settings import Settings
from pipeline.warehouse_schema import WAREHOUSE_TABLES


@dataclass
class Result:
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    def __getattr__(self, name: str) -> Any:
        """Fields as attributes, like the real result classes (absent ones are None)."""
        if name.startswith("_"):
            raise AttributeError(name)
        return self.data.get(name)


@dataclass
class FakeSteps:
    """Configurable fake steps; every call is recorded as (step, args)."""

    chunks: dict[str, int] = field(default_factory=dict)  # table -> invocations needed
    files_per_call: int = 2_000
    fail: dict[str, Exception] = field(default_factory=dict)  # table -> error to raise
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    before_extract: Callable[[str, str], None] | None = None
    # How many transform calls report `more: true` (a backlog over TRANSFORM_MAX_ROWS);
    # math.inf for a transform that never stops saying so.
    transform_more: float = 0
    reconcile: dict[str, Any] | None = None  # what each extract call's reconciliation found
    lock: threading.Lock = field(default_factory=threading.Lock)

    def extract_table(self, table: str, run_id: str, settings: Settings, **kwargs: Any) -> Result:
        call = {"table": table, "run_id": run_id, "settings": settings, **kwargs}
        with self.lock:
            self.calls.append(("extract", call))
        if self.before_extract:
            self.before_extract(table, run_id)
        if table in self.fail:
            raise self.fail[table]
        # Continuations are `<base>+<n>` (inside the run id pattern, like the real `.n`).
        chunk = int(run_id.rsplit("+", 1)[1]) if "+" in run_id else 0
        more = chunk + 1 < self.chunks.get(table, 1)
        base = run_id.rsplit("+", 1)[0]
        files = [
            f"{table}/date=2026-11-26/{run_id}/part-{i:05d}.parquet"
            for i in range(self.files_per_call)
        ]
        return Result(
            {
                "table": table,
                "run_id": run_id,
                "status": "ok",
                "rows": 1000,
                "files": files,
                "manifest": f"_manifests/{table}/{run_id}.json",
                "cursor": {"from": "2026-11-26T09:00:00.000", "to": "2026-11-26T09:29:59.999"},
                "warnings": [
                    f"source table {table!r} has a new column 'extra_{i}'" for i in range(3)
                ],
                "more": more,
                **({"next_run_id": f"{base}+{chunk + 1}"} if more else {}),
                "reconcile": None if more else self.reconcile,
            }
        )

    def transform(self, run_id: str, settings: Settings, **kwargs: Any) -> Result:
        with self.lock:
            self.calls.append(("transform", {"run_id": run_id, "settings": settings, **kwargs}))
            # Per distinct run id, so a retried invocation reports what the first one did.
            seen = list(dict.fromkeys(a["run_id"] for a in self.transforms()))
            more = seen.index(run_id) < self.transform_more
        return Result(
            {
                "run_id": run_id,
                "status": "ok",
                "inputs": [f"_manifests/{t}/run-{i}.json" for t in TABLE_NAMES for i in range(500)],
                "rows_in": {t: 1000 for t in TABLE_NAMES},
                "rows_out": {t: 1000 for t in WAREHOUSE_TABLES},
                "quarantined": {t: 3 for t in TABLE_NAMES},
                "duplicates": {t: 1 for t in TABLE_NAMES},
                "corrected": {t: 1 for t in TABLE_NAMES},
                "deleted": {t: {"deleted": 1, "restored": 0} for t in TABLE_NAMES},
                "pending": {},
                "manifest": f"_manifests/{run_id}.json",
                "more": more,
            }
        )

    def load(self, run_id: str, settings: Settings) -> Result:
        with self.lock:
            self.calls.append(("load", {"run_id": run_id, "settings": settings}))
        return Result(
            {
                "run_id": run_id,
                "status": "ok",
                "batches": [f"run-{i}" for i in range(500)],
                "rows": {t: 1000 for t in WAREHOUSE_TABLES},
            }
        )

    def modules(self) -> dict[str, types.ModuleType]:
        extract = types.ModuleType("pipeline.extract")
        extract.extract_table = self.extract_table  # type: ignore[attr-defined]
        transform = types.ModuleType("pipeline.transform")
        transform.transform = self.transform  # type: ignore[attr-defined]
        load = types.ModuleType("pipeline.load")
        load.load = self.load  # type: ignore[attr-defined]
        return {"pipeline.extract": extract, "pipeline.transform": transform, "pipeline.load": load}

    def transforms(self) -> list[dict[str, Any]]:
        return [a for s, a in self.calls if s == "transform"]

    def extracts(self, table: str | None = None) -> list[dict[str, Any]]:
        return [a for s, a in self.calls if s == "extract" and table in (None, a["table"])]
