"""Build the report: warehouse numbers (and quarantine counts from the processed zone)
into one self-contained HTML page; write it to a file or publish it to the lake.

`build_report` validates its input before it reads anything; `publish_report` writes
`reports/latest.html` and `reports/daily/<YYYY-MM-DD>.html` (docs/CONTRACTS.md), each
replaced atomically, so the newest report of each day is kept.
"""

from __future__ import annotations

import html
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.credentials import WAREHOUSE, describe, resolve_dsn
from pipeline.errors import ConfigurationError
from pipeline.lake import Lake
from pipeline.report import charts
from pipeline.report.money import format_money
from pipeline.report.page import Section, render
from pipeline.report.quarantine import QuarantineCount, quarantine_counts
from pipeline.report.warehouse import WarehouseResults, gather
from pipeline.report.window import ReportWindow
from pipeline.settings import Settings

log = logging.getLogger(__name__)

LATEST_KEY = layout.latest_report()
FACT_STARS = {
    "sales": "fact_sales_order",
    "purchases": "fact_purchase_order",
    "payments": "fact_payment",
}


def daily_key(day: date) -> str:
    return layout.daily_report(day.isoformat())


@dataclass(frozen=True)
class Report:
    html: str
    charts: tuple[str, ...]  # chart keys, in page order
    generated_at: datetime
    seconds: float
    quarantine_read: bool
    keys: tuple[str, ...] = field(default=())  # where it was written

    def to_dict(self) -> dict[str, Any]:
        return {
            "charts": list(self.charts),
            "bytes": len(self.html.encode()),
            "generated_at": self.generated_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "quarantine_read": self.quarantine_read,
            "written": list(self.keys),
        }


def build_report(
    settings: Settings,
    *,
    since: date | None = None,
    until: date | None = None,
    quarantine: bool = True,
    now: datetime | None = None,
) -> Report:
    """The report of `settings`' warehouse as of `now` (UTC; default: the current time).

    With `quarantine`, the quarantine chart reads `settings.processed_url` (else it says
    it was not read). Dates select business rows (orders by creation date, payments by
    payment date) and pipeline runs (by load or commit day), both inclusive.
    """
    started = time.perf_counter()
    window = ReportWindow(since, until)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    dsn = resolve_dsn(WAREHOUSE, settings)
    lake = _processed_lake(settings) if quarantine else None
    results = gather(dsn, window, now.date())
    counts = quarantine_counts(lake, window) if lake is not None else None
    with charts.template():
        sections = _sections(results, counts, window, now, lake)
    facts = [
        ("built", f"{now:%Y-%m-%d %H:%M:%S} UTC"),
        ("warehouse", describe(dsn)),
        ("window", window.describe()),
        ("processed zone", lake.uri("") if lake else "not read (no processed zone given)"),
    ]
    page = render(title="totesys warehouse report", facts=facts, sections=sections)
    report = Report(
        html=page,
        charts=tuple(c.key for s in sections for c in s.charts),
        generated_at=now,
        seconds=time.perf_counter() - started,
        quarantine_read=counts is not None,
    )
    log.info("report built", extra={"charts": len(report.charts), "seconds": report.seconds})
    return report


def write_report(report: Report, path: str | os.PathLike[str]) -> Report:
    """Write the page to a local file (atomically: readers see the old or the new page)."""
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        raise ConfigurationError(f"report output {target} is a directory; give a file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(report.html, encoding="utf-8")
    tmp.replace(target)
    return _written(report, (str(target),))


def publish_report(report: Report, settings: Settings) -> Report:
    """`reports/latest.html` and the day's `reports/daily/<date>.html` in the processed zone."""
    lake = settings.processed_lake()
    data = report.html.encode()
    keys = (daily_key(report.generated_at.date()), LATEST_KEY)
    for key in keys:
        lake.write_bytes(key, data, content_type="text/html; charset=utf-8")
    return _written(report, tuple(lake.uri(k) for k in keys))


def _written(report: Report, keys: tuple[str, ...]) -> Report:
    return Report(
        report.html,
        report.charts,
        report.generated_at,
        report.seconds,
        report.quarantine_read,
        keys,
    )


def _processed_lake(settings: Settings) -> Lake:
    url = settings.processed_url
    if "://" not in url or url.startswith("file://"):
        path = Path(url.removeprefix("file://")).expanduser()
        if not path.is_dir():  # Lake() would create it: a typo must not pass as "no rows"
            raise ConfigurationError(
                f"processed zone {path} does not exist: pass the folder the transform "
                "writes (--processed-url), or skip the quarantine chart (--no-quarantine)"
            )
    return settings.processed_lake()


# -- the page's content -----------------------------------------------------------------
def _current(what: str, dates: str, window: ReportWindow) -> str:
    return (
        f"Current version of each {what} (its newest by last_updated; earlier versions and "
        f"deleted rows are not counted), {dates} {window.describe()}."
    )


MONEY = "Each amount stays in its own currency: panels are per currency, never summed across them."


def _sections(
    r: WarehouseResults,
    counts: list[QuarantineCount] | None,
    window: ReportWindow,
    now: datetime,
    lake: Lake | None,
) -> list[Section]:
    sales = _current("sales order", "created", window)
    purchases = _current("purchase order", "created", window)
    payments = _current("payment", "with a payment date", window)
    sales_section = Section(
        "sales",
        "Sales",
        [
            charts.Chart(
                "sales-by-month",
                "Sales value by month and currency",
                f"{sales} Value = units_sold * unit_price. {MONEY}",
                charts.money_by_month(r.part("sales", "month"), "sales"),
            ),
            charts.Chart(
                "sales-top-designs",
                "Top designs by sales value",
                f"{sales} The 10 designs with the highest value in each currency. {MONEY}",
                charts.top_by_currency(r.part("sales", "design")),
            ),
            charts.Chart(
                "sales-top-counterparties",
                "Top counterparties by sales value",
                f"{sales} The 10 counterparties with the highest value in each currency. {MONEY}",
                charts.top_by_currency(r.part("sales", "counterparty")),
            ),
            charts.Chart(
                "sales-by-delivery-city",
                "Sales value by delivery country and city",
                f"{sales} Agreed delivery location; the 20 cities with the highest value in "
                f"each currency, grouped by country. {MONEY}",
                charts.cities_treemap(r.part("sales", "city")),
            ),
            charts.Chart(
                "sales-units-by-staff",
                "Units sold by staff member and department",
                f"{sales} Units are counted across currencies (they are not money); the 25 "
                "staff members with the most units.",
                charts.staff_units(r.part("sales", "staff_units")),
            ),
            charts.Chart(
                "sales-value-by-staff",
                "Sales value by staff member",
                f"{sales} The same 25 staff members, value in each currency. {MONEY}",
                charts.top_by_currency(r.part("sales", "staff")),
            ),
            charts.Chart(
                "sales-value-by-department",
                "Sales value by department",
                f"{sales} Department of the sales staff member. {MONEY}",
                charts.department_value(r.part("sales", "department")),
            ),
        ],
        intro=_totals_table(r),
        wide=frozenset({"sales-by-month", "sales-by-delivery-city"}),
    )
    purchases_section = Section(
        "purchases",
        "Purchases",
        [
            charts.Chart(
                "purchases-by-month",
                "Purchase value by month and currency",
                f"{purchases} Value = item_quantity * item_unit_price. {MONEY}",
                charts.money_by_month(r.part("purchases", "month"), "purchases"),
            ),
            charts.Chart(
                "purchases-top-items",
                "Top items by purchase value",
                f"{purchases} The 10 item codes with the highest value in each currency. {MONEY}",
                charts.top_by_currency(r.part("purchases", "item")),
            ),
            charts.Chart(
                "purchases-by-counterparty",
                "Purchase value by counterparty",
                f"{purchases} The 10 counterparties with the highest value in each currency. "
                f"{MONEY}",
                charts.top_by_currency(r.part("purchases", "counterparty")),
            ),
        ],
        wide=frozenset({"purchases-by-month"}),
    )
    payments_section = Section(
        "payments",
        "Payments",
        [
            charts.Chart(
                "payments-paid-vs-unpaid",
                "Payments paid and unpaid by month and type",
                f"{payments} Number of payments per month of the payment date.",
                charts.payments_status(r.part("payments", "month")),
            ),
            charts.Chart(
                "payments-overdue",
                "Overdue amounts by counterparty",
                f"{payments} Overdue = not paid and the agreed payment date is before "
                f"{now.date()} (the day the report was built); the 15 counterparties with "
                f"the most overdue in each currency. {MONEY}",
                charts.top_by_currency(r.part("payments", "overdue"), unit="payments"),
            ),
        ],
        intro=_overdue_table(r),
        wide=frozenset({"payments-paid-vs-unpaid"}),
    )
    health_section = Section(
        "pipeline",
        "Pipeline health",
        [
            charts.Chart(
                "pipeline-rows-per-run",
                "Rows written per load run and table",
                "From the load ledger (etl_load_ledger): rows each load run wrote per table, "
                f"for runs loaded {window.describe()}. Log scale.",
                charts.ledger_runs(r.ledger),
            ),
            charts.Chart(
                "pipeline-lineage",
                "Current rows by the day their batch was loaded",
                "From the lineage column (_loaded_batch) joined to the ledger: every dimension "
                "row, and the current version of every fact row, by the load day of the "
                "batch that last wrote it; all dates. Log scale.",
                charts.lineage(_lineage_rows(r)),
            ),
            charts.Chart(
                "pipeline-quarantine",
                "Quarantined rows by rule",
                (
                    f"From the processed zone's quarantine ({lake.uri('_quarantine')}), runs "
                    f"committed {window.describe()}: rows the transform rejected, by the "
                    "first rule each broke and by source table."
                    if lake is not None
                    else "The processed zone was not given, so the quarantine was not read."
                ),
                charts.quarantine(counts or [])
                if counts is not None
                else charts.empty("processed zone not read"),
            ),
            charts.Chart(
                "pipeline-freshness",
                "Freshness",
                "Newest source last_updated the warehouse has seen in each fact table (any "
                "version it holds), and the last load (ledger), measured against the time "
                "the report was built; all dates.",
                charts.freshness(_ages(r, now)),
            ),
        ],
        intro=_freshness_table(r, now),
    )
    return [sales_section, purchases_section, payments_section, health_section]


def _lineage_rows(r: WarehouseResults) -> list[dict[str, Any]]:
    rows = list(r.dimension_lineage)
    for star, table in FACT_STARS.items():
        rows += [
            {"table_name": table, "loaded_on": x["period"], "n": x["n"]}
            for x in r.part(star, "lineage")
        ]
    return rows


def _newest(r: WarehouseResults) -> dict[str, datetime | None]:
    newest: dict[str, datetime | None] = {}
    for star, table in FACT_STARS.items():
        stamps = [x["newest"] for x in r.part(star, "freshness") if x["newest"]]
        newest[table] = max(stamps) if stamps else None
    return newest


def _hours(then: datetime | None, now: datetime) -> float | None:
    if then is None:
        return None
    then = then if then.tzinfo else then.replace(tzinfo=UTC)  # source times are UTC
    return (now - then).total_seconds() / 3600


def _ages(r: WarehouseResults, now: datetime) -> list[tuple[str, float | None]]:
    ages = [(f"{t}: newest last_updated", _hours(t_at, now)) for t, t_at in _newest(r).items()]
    ages.append(("last load", _hours(r.ledger_summary.get("last_loaded_at"), now)))
    return ages


def _table(head: list[str], rows: list[list[str]], note: str = "") -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    extra = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f'<table class="summary"><tr>{cells}</tr>{body}</table>{extra}'


def _totals_table(r: WarehouseResults) -> str:
    sales = {x["currency"]: x for x in r.part("sales", "total")}
    purchases = {x["currency"]: x for x in r.part("purchases", "total")}
    rows = [
        [
            code,
            f"{int(sales[code]['n']):,}" if code in sales else "0",
            format_money(sales[code]["value"], code) if code in sales else "-",
            f"{int(purchases[code]['n']):,}" if code in purchases else "0",
            format_money(purchases[code]["value"], code) if code in purchases else "-",
        ]
        for code in sorted(set(sales) | set(purchases))
    ]
    return _table(
        ["currency", "sales orders", "sales value", "purchase orders", "purchase value"],
        rows,
        "Totals per currency of the current version of each order in the window.",
    )


def _overdue_table(r: WarehouseResults) -> str:
    rows = [
        [x["currency"], f"{int(x['n']):,}", format_money(x["value"], x["currency"])]
        for x in r.part("payments", "overdue_total")
    ]
    return _table(
        ["currency", "overdue payments", "overdue amount"],
        rows or [["-", "0", "-"]],
        "Not paid, agreed payment date passed; current version of each payment.",
    )


def _freshness_table(r: WarehouseResults, now: datetime) -> str:
    rows = [[table, _stamp(at), _age(_hours(at, now))] for table, at in _newest(r).items()]
    summary = r.ledger_summary
    rows.append(
        [
            "last load",
            _stamp(summary.get("last_loaded_at")),
            _age(_hours(summary.get("last_loaded_at"), now)),
        ]
    )
    return _table(
        ["what", "when (UTC)", "age"],
        rows,
        f"The ledger holds {int(summary.get('batches') or 0):,} loaded batches; newest "
        f"committed {_stamp(summary.get('last_committed_at'))}.",
    )


def _stamp(value: datetime | None) -> str:
    if value is None:
        return "-"
    value = value.astimezone(UTC) if value.tzinfo else value
    return f"{value:%Y-%m-%d %H:%M:%S}"


def _age(hours: float | None) -> str:
    if hours is None:
        return "-"
    return f"{hours / 24:,.1f} days" if hours >= 72 else f"{hours:,.1f} hours"
