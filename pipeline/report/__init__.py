"""The warehouse report: one self-contained HTML page of charts (docs/CONTRACTS.md).

Modules: `queries` (the SQL: current rows, one grouped pass per fact), `warehouse` (runs
them concurrently on one snapshot), `quarantine` (rejected rows by rule, from the processed
zone), `charts` (Plotly figures, money per currency), `page` (the inline HTML), `run`
(`build_report`, `write_report`, `publish_report`).
"""

from pipeline.report.run import Report, build_report, publish_report, write_report

__all__ = ["Report", "build_report", "publish_report", "write_report"]
