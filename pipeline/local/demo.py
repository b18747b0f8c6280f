"""`totesys-etl demo`: the whole job end to end on a throwaway PostgreSQL, nothing to set up.

Seeds a synthetic totesys database, runs the pipeline into a warehouse database with a
local lake folder, simulates a few days of business, runs again incrementally, runs once
more with nothing new, then answers a few business questions from the warehouse and
writes the HTML report (`pipeline.report`) next to the lake. The report is kept, even
when the databases and the lake are removed, and its path is printed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
from rich.table import Table

from pipeline.catalog import TABLE_NAMES
from pipeline.local import pgserver
from pipeline.local.console import console, print_run_summary, run_progress
from pipeline.local.runner import RunReport, run_pipeline
from pipeline.settings import Settings

DEMO_DIR = Path(".demo")
REPORT_NAME = "report.html"

# Rows deleted in totesys stay in the warehouse with `_deleted_at` set: current-state
# questions filter them out (docs/OPERATIONS.md, Deleted rows).
REPORTS: dict[str, str] = {
    "sales value by month and currency (last 6 months)": """
        SELECT to_char(d.date_id, 'YYYY-MM') AS month, c.currency_code AS currency,
               count(*) AS orders, sum(f.units_sold * f.unit_price)::numeric(14, 2) AS value
        FROM fact_sales_order f
        JOIN dim_date d ON d.date_id = f.created_date
        JOIN dim_currency c USING (currency_id)
        WHERE f._deleted_at IS NULL
          AND d.date_id >= (SELECT max(created_date) FROM fact_sales_order) - interval '6 months'
        GROUP BY 1, 2 ORDER BY 1 DESC, 2 LIMIT 18""",
    "top designs by sales value": """
        SELECT d.design_name AS design, count(*) AS orders,
               sum(f.units_sold * f.unit_price)::numeric(14, 2) AS value
        FROM fact_sales_order f JOIN dim_design d USING (design_id)
        WHERE f._deleted_at IS NULL AND d._deleted_at IS NULL
        GROUP BY 1 ORDER BY 3 DESC LIMIT 5""",
    # Dimension history (docs/HISTORY.md): each sale with its seller's department as it was
    # when the sale was made, next to the type 1 department of today.
    "sales by department at the time of sale, and today": """
        SELECT h.department_name AS department_at_sale, s.department_name AS department_now,
               count(*) AS orders, sum(f.units_sold * f.unit_price)::numeric(14, 2) AS value
        FROM fact_sales_order f
        JOIN dim_staff s ON s.staff_id = f.sales_staff_id
        LEFT JOIN dim_staff_history h
          ON h.staff_id = f.sales_staff_id
         AND h.valid_from <= f.created_date + f.created_time
         AND (h.valid_to IS NULL OR f.created_date + f.created_time < h.valid_to)
        GROUP BY 1, 2 ORDER BY 4 DESC LIMIT 12""",
    "payments by type and status": """
        SELECT t.payment_type_name AS type, f.paid, count(*) AS payments
        FROM fact_payment f JOIN dim_payment_type t USING (payment_type_id)
        WHERE f._deleted_at IS NULL
        GROUP BY 1, 2 ORDER BY 1, 2""",
}


def _run(label: str, settings: Settings) -> RunReport:
    console.rule(f"[bold]{label}")
    with run_progress([*TABLE_NAMES, "transform", "load"]) as progress:
        report = run_pipeline(settings, progress=progress)
    print_run_summary(report)
    return report


def _print_query(conn: psycopg.Connection, title: str, query: str) -> None:
    cur = conn.execute(query)  # constant SQL, no user input
    table = Table(title=title, title_justify="left")
    for column in cur.description or []:
        table.add_column(column.name)
    for row in cur.fetchall():
        table.add_row(*(str(v) for v in row))
    console.print(table)


def _rows_per_run(reports: list[tuple[str, RunReport]]) -> None:
    table = Table(title="warehouse rows written per run", title_justify="left")
    table.add_column("table")
    for label, _ in reports:
        table.add_column(label, justify="right")
    names = sorted({n for _, r in reports for n in (r.load or {}).get("rows", {})})
    for name in names:
        table.add_row(
            name, *(f"{(r.load or {}).get('rows', {}).get(name, 0):,}" for _, r in reports)
        )
    console.print(table)


def write_demo_report(settings: Settings, workdir: Path) -> Path:
    """The HTML report of the demo's warehouse, next to its lake; returns its path."""
    from pipeline.report import build_report, write_report

    console.rule("[bold]report")
    report = write_report(build_report(settings), workdir / REPORT_NAME)
    console.print(f"{len(report.charts)} charts built in {report.seconds:.1f} s")
    return Path(report.keys[0])


def run_demo(*, keep: bool = False, days: int = 5, scale: float = 1.0) -> int:
    from pipeline.local.simulator.seed import seed
    from pipeline.local.simulator.simulate import simulate

    console.rule("[bold]totesys-etl demo")
    console.print("starting a throwaway PostgreSQL ...")
    try:
        server = pgserver.start_postgres(fast=not keep)
    except pgserver.PostgresUnavailableError as exc:
        console.print(f"[red]cannot start PostgreSQL:[/] {exc}")
        return 3
    console.print(server.description)
    admin_dsn = server.dsn
    workdir = DEMO_DIR if keep else Path(tempfile.mkdtemp(prefix="totesys-demo-"))
    try:
        source = pgserver.create_database(admin_dsn, "totesys")
        warehouse = pgserver.create_database(admin_dsn, "warehouse")
        settings = Settings.in_folder(workdir / "lake", source_dsn=source, warehouse_dsn=warehouse)
        console.print(f"seeding a synthetic totesys database (scale {scale}) ...")
        counts = seed(source, scale=scale, seed=42)
        console.print(", ".join(f"{t} {n:,}" for t, n in counts.items()))

        reports = [("first run", _run("run 1: full extract into an empty warehouse", settings))]
        console.rule(f"[bold]simulating {days} days of business")
        summary = simulate(source, days=days, seed=7)
        console.print(
            ", ".join(f"{k} {v:,}" for k, v in summary.items() if type(v) is int)
            + f" (simulated {summary['from']} to {summary['until']})"
        )
        reports.append(("after simulation", _run("run 2: incremental", settings)))
        reports.append(("no changes", _run("run 3: nothing new", settings)))

        console.rule("[bold]what the warehouse says")
        _rows_per_run(reports)
        with psycopg.connect(warehouse) as conn:
            for title, query in REPORTS.items():
                _print_query(conn, title, query)
        report_path = write_demo_report(settings, workdir)
        ok = all(r.succeeded for _, r in reports)
        if keep:
            _explain_kept(workdir, warehouse, server)
        console.print(f"[bold]report:[/] {report_path}")
        return 0 if ok else 1
    finally:
        if not keep:
            server.stop()
            import shutil

            for child in workdir.iterdir() if workdir.exists() else ():
                if child.name != REPORT_NAME:  # the report outlives the demo's data
                    shutil.rmtree(child, ignore_errors=True)


def _explain_kept(workdir: Path, warehouse_dsn: str, server: pgserver.Server) -> None:
    """Write the connection settings to a private file instead of printing the password."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(warehouse_dsn)
    env_file = workdir / "connection.env"
    env_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            f"export PGHOST={params.get('host')} PGPORT={params.get('port')} "
            f"PGUSER={params.get('user')} PGPASSWORD='{params.get('password')}'\n"
        )
    console.rule("[bold]kept")
    console.print(
        f"lake: {workdir / 'lake'}\n"
        f"connect: source {env_file} && {server.psql} -d warehouse   (or -d totesys)\n"
        f"stop the server: {server.stop_hint}"
    )
