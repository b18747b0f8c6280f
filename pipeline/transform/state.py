"""The transform's own state in the processed zone, committed together with the run manifest.

Every run writes its state snapshots under run-specific keys and points at them from
`_state/head.json` (written just before the run manifest). A reader trusts the head only
if the head's run manifest exists; otherwise that run crashed before committing and the
head's `previous` pointer is the committed state. So state and outputs commit atomically
with the manifest, a crashed run's files are ignored, and no listing is needed.

State kinds (keys in `StatePointers`):
- `current/<table>`: latest valid version per primary key of each lookup source table;
- `seen/<table>`: fact row versions already handled (the newest 4M: skip re-deliveries);
- `pending/<table>`: fact rows waiting for a missing dimension row;
- `consumed`: the ingestion manifest keys consumed so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipeline.lake import Lake

HEAD_KEY = "_state/head.json"
RUN_MANIFEST = "_manifests/{run_id}.json"


def manifest_key(run_id: str) -> str:
    return RUN_MANIFEST.format(run_id=run_id)


@dataclass
class StatePointers:
    """Keys of the state files of one committed run (empty on the very first run)."""

    run_id: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # "current/staff" -> lake key

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "files": dict(sorted(self.files.items()))}

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> StatePointers:
        if not obj:
            return cls()
        return cls(run_id=obj.get("run_id"), files=dict(obj.get("files", {})))


def committed_state(lake: Lake) -> StatePointers:
    """The state of the last committed run: the head, or its predecessor if it crashed."""
    if not lake.exists(HEAD_KEY):
        return StatePointers()
    head = lake.read_json(HEAD_KEY)
    current = StatePointers.from_json(head.get("current"))
    if current.run_id and lake.exists(manifest_key(current.run_id)):
        return current
    return StatePointers.from_json(head.get("previous"))


def write_head(lake: Lake, new: StatePointers, base: StatePointers) -> None:
    lake.write_json(HEAD_KEY, {"current": new.to_json(), "previous": base.to_json()})


def state_key(kind: str, run_id: str) -> str:
    return f"_state/{kind}/run={run_id}.parquet"


def read_state(lake: Lake, pointers: StatePointers, kind: str, empty: pl.DataFrame) -> pl.DataFrame:
    """A state snapshot as a DataFrame (state files are small), or `empty` if there is none."""
    key = pointers.files.get(kind)
    if key is None:
        return empty
    table = lake.read_parquet([key])
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df.cast(empty.schema)  # the stored file may carry looser Arrow types


def write_state(lake: Lake, run_id: str, kind: str, df: pl.DataFrame) -> str:
    key = state_key(kind, run_id)
    lake.write_parquet(key, df.to_arrow())
    return key
