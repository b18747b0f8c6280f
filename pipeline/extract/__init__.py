"""The extract stage: one totesys table's new or changed rows into the ingestion zone.

Modules follow the data flow: `source` (one read-only snapshot of the source, rows as
Arrow), `drift` (the live columns against the catalog), `watermark` (how far each table
has been read), `run` (the step function).
"""

from pipeline.extract.run import ExtractResult, extract_table

__all__ = ["ExtractResult", "extract_table"]
