"""Synthesize the CDK app in-process, once per test process, into a temporary directory.

Both tests/stacks (template assertions, cdk-nag) and tests/statemachine (the definition
run in moto) read the same cloud assembly, so the ~10 s synth happens once.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_DISABLE_CLI_TELEMETRY", "true")

STACK_NAME = "TotesysEtl"


@dataclass(frozen=True)
class Assembly:
    outdir: Path
    template: dict[str, Any]
    validation_report: dict[str, Any]

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == type_}

    def one(self, type_: str) -> tuple[str, dict[str, Any]]:
        found = self.resources(type_)
        assert len(found) == 1, f"expected one {type_}, found {sorted(found)}"
        return next(iter(found.items()))


def synthesize(context: dict[str, Any] | None = None) -> Assembly:
    """Build and synthesize app.py's app with `context` into a fresh temporary directory."""
    from app import build_app

    outdir = Path(tempfile.mkdtemp(prefix="cdk-synth-"))
    atexit.register(shutil.rmtree, outdir, True)
    build_app(outdir=str(outdir), context=context).synth()
    template = json.loads((outdir / f"{STACK_NAME}.template.json").read_text())
    report_path = outdir / "validation-report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return Assembly(outdir=outdir, template=template, validation_report=report)


@functools.cache
def default_assembly() -> Assembly:
    """The app with no context at all (what `cdk synth` does offline)."""
    return synthesize()


@functools.cache
def report_assembly() -> Assembly:
    """The app with the report option on (`-c reportEnabled=true`)."""
    return synthesize({"reportEnabled": "true"})
