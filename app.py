#!/usr/bin/env python3
"""CDK app entry point: `npx cdk synth` (via cdk.json) or `python app.py`.

Settings come from CDK context (see stacks/config.py and docs/DEPLOY.md); with none
given, the app synthesizes offline with documented defaults. cdk-nag's AwsSolutions
checks run on every synth, so an unsuppressed finding is a synth error. The output
directory follows `CDK_OUTDIR` (set by the CDK CLI and by the tests).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from stacks.config import PipelineConfig
from stacks.pipeline_stack import TotesysEtlStack

CDK_JSON = Path(__file__).resolve().with_name("cdk.json")


def feature_flags() -> dict[str, Any]:
    """The CDK feature flags in cdk.json (those a new `cdk init` app sets): applied to
    every build, so an in-process synth (tests, stacks.validate) behaves as `cdk synth`."""
    context = json.loads(CDK_JSON.read_text())["context"]
    return {k: v for k, v in context.items() if k.startswith("@aws-cdk")}


def build_app(outdir: str | None = None, context: dict[str, Any] | None = None) -> cdk.App:
    """Build (not synthesize) the app; tests call this in-process with their own outdir."""
    app = cdk.App(
        outdir=outdir or os.environ.get("CDK_OUTDIR"),
        context={**feature_flags(), **(context or {})},
    )
    config = PipelineConfig.from_context(app.node)
    TotesysEtlStack(
        app,
        config.stack_name,
        config=config,
        description="totesys-etl: incremental ETL from totesys to a star-schema warehouse",
        env=cdk.Environment(
            account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
            region=os.environ.get("CDK_DEFAULT_REGION"),
        ),
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    return app


if __name__ == "__main__":
    build_app().synth()
