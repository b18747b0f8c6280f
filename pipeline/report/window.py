"""The report window: which business dates the charts cover (both ends inclusive)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from pipeline.errors import ConfigurationError


@dataclass(frozen=True)
class ReportWindow:
    since: date | None = None
    until: date | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, date) or hasattr(value, "hour")):
                raise ConfigurationError(f"report {name} must be a date, got {value!r}")
        if self.since and self.until and self.since > self.until:
            raise ConfigurationError(
                f"report window: since {self.since} is after until {self.until}; "
                "give a since on or before until"
            )

    def contains(self, day: date) -> bool:
        return (self.since is None or day >= self.since) and (
            self.until is None or day <= self.until
        )

    def params(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until}

    def describe(self) -> str:
        if self.since and self.until:
            return f"{self.since} to {self.until}"
        if self.since:
            return f"from {self.since}"
        if self.until:
            return f"up to {self.until}"
        return "all dates"
