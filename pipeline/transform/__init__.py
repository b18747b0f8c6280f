"""The transform step (docs/CONTRACTS.md): raw ingestion batches -> three star schemas.

Modules follow the data flow: `inputs` (which batches, lazy scans), `quality` (rules and
quarantine), `current` (latest version of lookup tables), `dimensions`, `facts`,
`dim_date`, `output` (exact Arrow schemas), `state` and `lease` (incremental, idempotent,
one run at a time), `run` (the step function).
"""

from pipeline.transform.result import TransformResult
from pipeline.transform.run import transform

__all__ = ["TransformResult", "transform"]
