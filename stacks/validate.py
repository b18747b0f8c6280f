"""Synthesize the documented deployment variants for AWS's own validators (`make validate`).

`python -m stacks.validate <outdir>` writes `<outdir>/<variant>/TotesysEtl.template.json`
for each variant below and prints the template paths; cfn-lint and checkov then read
them with the repository's `.cfnlintrc.yaml` and `.checkov.yaml`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    # A private RDS in a VPC with RDS-managed secrets (docs/DEPLOY.md's walk-through), with
    # the optional report function too.
    "vpc-rds-managed": {
        "vpcId": "vpc-0123456789abcdef0",
        "subnetIds": "subnet-0aaa1111bbbb2222c,subnet-0ddd3333eeee4444f",
        "sourceSecret": "arn:aws:secretsmanager:eu-west-2:111122223333:secret:rds!db-0a1b2c3d",
        "sourceDbInstance": "totesys-prod",
        "warehouseSecret": (
            "arn:aws:secretsmanager:eu-west-2:111122223333:secret:rds!db-9f8e7d6c-AbCdEf"
        ),
        "warehouseHost": "warehouse.abcdefghijkl.eu-west-2.rds.amazonaws.com",
        "warehouseDatabase": "warehouse",
        "alertEmail": "data-team@example.com",
        "reportEnabled": "true",
    },
}


def synthesize(outdir: Path) -> list[Path]:
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    from app import build_app

    paths = []
    for name, context in VARIANTS.items():
        target = outdir / name
        build_app(outdir=str(target), context=context).synth()
        paths.append(target / "TotesysEtl.template.json")
    return paths


if __name__ == "__main__":
    for path in synthesize(Path(sys.argv[1] if len(sys.argv) > 1 else "cdk.out/validate")):
        print(path)
