"""What one transform run reports (docs/CONTRACTS.md): small, JSON-safe, rebuilt on replay."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.layout import ProcessedManifest


@dataclass
class TransformResult:
    """Counts per source table (`rows_in = accepted + quarantined + duplicates`, always) and
    rows written per warehouse table. `pending` counts fact rows held back for a missing
    dimension row and retried by later runs."""

    run_id: str
    status: str  # "ok" | "replayed" | "nothing_to_do"
    inputs: list[str] = field(default_factory=list)
    rows_in: dict[str, int] = field(default_factory=dict)
    rows_out: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    corrected: dict[str, int] = field(default_factory=dict)  # re-deliveries with new content
    deleted: dict[str, dict[str, int]] = field(default_factory=dict)  # {"deleted", "restored"}
    pending: dict[str, dict[str, int]] = field(default_factory=dict)
    manifest: str | None = None
    more: bool = False  # batches were left for the next run (TRANSFORM_MAX_ROWS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, manifest: ProcessedManifest, key: str) -> TransformResult:
        """The recorded result of a committed run, reported again as `replayed`."""
        return cls(
            run_id=manifest["run_id"],
            status="replayed",
            inputs=list(manifest["inputs"]),
            rows_in=dict(manifest["rows_in"]),
            rows_out={t: o["rows"] for t, o in manifest["outputs"].items()},
            quarantined=dict(manifest["quarantined"]),
            duplicates=dict(manifest.get("duplicates", {})),
            corrected=dict(manifest.get("corrected", {})),
            deleted={t: dict(v) for t, v in manifest.get("deleted", {}).items()},
            pending={t: dict(v) for t, v in manifest.get("pending", {}).items()},
            manifest=key,
            more=bool(manifest.get("more", False)),
        )
