"""Structured logging: JSON lines when not on a terminal, short text on one.

Steps log one line per step and table with `extra={"table": ..., "run_id": ..., "rows": ...,
"duration_s": ...}`; those fields become JSON keys. Messages must never contain secrets,
and both formatters pass every line through `pipeline.redaction` as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from pipeline.redaction import redact, scrub

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        payload.update(scrub(json.loads(json.dumps(extras, default=str))))
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        line = f"{record.levelname.lower():7} {record.getMessage()} {extras}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def configure(level: int = logging.INFO, *, json_lines: bool | None = None) -> None:
    """Set up the root logger once (JSON unless stderr is a terminal)."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
