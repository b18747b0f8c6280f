"""The load stage: processed batches into the PostgreSQL warehouse, one transaction each.

Modules: `ddl` and `migrations` (the warehouse schema, generated from
`pipeline.warehouse_schema`), `batches` (processed manifests as the load sees them),
`pgbinary` (Arrow to binary COPY), `apply` (dimensions), `facts` (fact versions),
`run` (the step function).
"""

from pipeline.load.run import LoadResult, load

__all__ = ["LoadResult", "load"]
