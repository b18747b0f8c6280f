"""The report's charts as Plotly figures, built from the grouped rows the queries return.

Money is charted per currency: every money chart has one panel per currency with its own
axis (`GBP 2B`, `USD 1.5B`), so amounts in different currencies never share an axis, a
stack or a total. Counts (orders, units, payments, rows) may share one.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from pipeline.report.money import axis_prefix, hover_money

Rows = list[dict[str, Any]]
HEIGHT = 380
PANEL_HEIGHT = 230
TEMPLATE = "plotly_white"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


@dataclass(frozen=True)
class Chart:
    key: str  # stable id: the page's element ids and the tests use it
    title: str
    caption: str  # what is counted: which rows, which dates, which currency
    figure: go.Figure


def label(text: Any) -> str:
    """Data text as Plotly shows it literally (it would read `<a href=...>` as markup)."""
    return html.escape(str(text), quote=False)


def number(value: Decimal | int | float | None) -> float:
    return float(value or 0)


@contextmanager
def template() -> Iterator[None]:
    """Figures made inside start from `TEMPLATE` instead of Plotly's default, which
    `_layout` would replace: Plotly deep-copies and validates a template per figure, so a
    second one doubles that cost (about half of building the report's figures)."""
    previous = pio.templates.default
    pio.templates.default = TEMPLATE
    try:
        yield
    finally:
        pio.templates.default = previous


def _layout(fig: go.Figure, height: int = HEIGHT, **extra: Any) -> go.Figure:
    settings: dict[str, Any] = {
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 36, "b": 10},
        "font": {"family": FONT, "size": 12},
        "legend": {"orientation": "h", "y": -0.12},
        "hoverlabel": {"font": {"family": FONT}},
    }
    if pio.templates.default != TEMPLATE:  # made outside `template()`
        settings["template"] = TEMPLATE
    fig.update_layout(**{**settings, **extra})
    return fig


def empty(message: str = "no rows in this window") -> go.Figure:
    """A figure that says there is nothing to draw (still a rendered plot)."""
    fig = go.Figure()
    fig.add_annotation(
        text=label(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, height=160)


def currencies(rows: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({r["currency"] for r in rows if r.get("currency")})


def money_by_month(rows: Rows, what: str) -> go.Figure:
    """One bar panel per currency: `what` value by month."""
    codes = currencies(rows)
    if not codes:
        return empty()
    fig = make_subplots(
        rows=len(codes),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=[f"{what} in {c}" for c in codes],
    )
    for i, code in enumerate(codes, start=1):
        mine = [r for r in rows if r["currency"] == code]
        fig.add_trace(
            go.Bar(
                name=code,
                x=[r["period"].isoformat() for r in mine],
                y=[number(r["value"]) for r in mine],
                customdata=[[int(r["n"] or 0)] for r in mine],
                hovertemplate=f"%{{x|%b %Y}}<br>{hover_money(code, 'y')}"
                "<br>%{customdata[0]:,} orders<extra></extra>",
                showlegend=False,
            ),
            row=i,
            col=1,
        )
        fig.update_yaxes(tickprefix=axis_prefix(code), exponentformat="B", row=i, col=1)
    fig.update_xaxes(type="date", dtick="M3", tickformat="%b %Y")
    return _layout(fig, height=max(HEIGHT, PANEL_HEIGHT * len(codes)))


def top_by_currency(rows: Rows, unit: str = "orders") -> go.Figure:
    """One horizontal bar panel per currency: the highest values first."""
    codes = currencies(rows)
    if not codes:
        return empty()
    fig = make_subplots(rows=1, cols=len(codes), subplot_titles=codes, horizontal_spacing=0.12)
    for i, code in enumerate(codes, start=1):
        mine = [r for r in rows if r["currency"] == code][::-1]  # largest on top
        fig.add_trace(
            go.Bar(
                orientation="h",
                name=code,
                y=[label(r["label"]) for r in mine],
                x=[number(r["value"]) for r in mine],
                customdata=[[int(r["n"] or 0)] for r in mine],
                hovertemplate=f"%{{y}}<br>{hover_money(code)}"
                f"<br>%{{customdata[0]:,}} {unit}<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(tickprefix=axis_prefix(code), exponentformat="B", row=1, col=i)
    fig.update_yaxes(automargin=True, tickfont={"size": 10})
    return _layout(fig, height=HEIGHT + 40)


def cities_treemap(rows: Rows) -> go.Figure:
    """One treemap per currency: delivery country, then city, sized by sales value."""
    codes = currencies(rows)
    if not codes:
        return empty()
    fig = make_subplots(
        rows=1, cols=len(codes), specs=[[{"type": "domain"}] * len(codes)], subplot_titles=codes
    )
    for i, code in enumerate(codes, start=1):
        mine = [r for r in rows if r["currency"] == code]
        countries: dict[str, float] = {}
        for r in mine:
            countries[r["detail"]] = countries.get(r["detail"], 0.0) + number(r["value"])
        ids = [f"{code}/{c}" for c in countries] + [
            f"{code}/{r['detail']}/{r['label']}" for r in mine
        ]
        fig.add_trace(
            go.Treemap(
                ids=[label(x) for x in ids],
                labels=[label(c) for c in countries] + [label(r["label"]) for r in mine],
                parents=[""] * len(countries) + [label(f"{code}/{r['detail']}") for r in mine],
                values=list(countries.values()) + [number(r["value"]) for r in mine],
                branchvalues="total",
                hovertemplate=f"%{{label}}<br>{code} %{{value:,.2f}}<extra></extra>",
                name=code,
            ),
            row=1,
            col=i,
        )
    return _layout(fig, height=HEIGHT + 60, margin={"l": 4, "r": 4, "t": 36, "b": 4})


def staff_units(rows: Rows) -> go.Figure:
    """Units sold by staff member (all currencies: units are not money), by department."""
    if not rows:
        return empty()
    fig = go.Figure()
    ordered = sorted(rows, key=lambda r: number(r["units"]))
    for department in sorted({r["detail"] for r in rows}):
        mine = [r for r in ordered if r["detail"] == department]
        fig.add_trace(
            go.Bar(
                orientation="h",
                name=label(department),
                y=[label(r["label"]) for r in mine],
                x=[number(r["units"]) for r in mine],
                customdata=[[int(r["n"] or 0)] for r in mine],
                hovertemplate="%{y}<br>%{x:,} units<br>%{customdata[0]:,} orders"
                f"<extra>{label(department)}</extra>",
            )
        )
    fig.update_yaxes(
        categoryorder="array", categoryarray=[label(r["label"]) for r in ordered], automargin=True
    )
    fig.update_xaxes(title_text="units sold")
    return _layout(fig, height=max(HEIGHT, 18 * len(rows) + 120))


def department_value(rows: Rows) -> go.Figure:
    """Sales value by department, one panel per currency."""
    codes = currencies(rows)
    if not codes:
        return empty()
    fig = make_subplots(rows=1, cols=len(codes), subplot_titles=codes, horizontal_spacing=0.12)
    for i, code in enumerate(codes, start=1):
        mine = sorted((r for r in rows if r["currency"] == code), key=lambda r: number(r["value"]))
        fig.add_trace(
            go.Bar(
                orientation="h",
                y=[label(r["label"]) for r in mine],
                x=[number(r["value"]) for r in mine],
                customdata=[[number(r["units"])] for r in mine],
                hovertemplate=f"%{{y}}<br>{hover_money(code)}"
                "<br>%{customdata[0]:,} units<extra></extra>",
                showlegend=False,
                name=code,
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(tickprefix=axis_prefix(code), exponentformat="B", row=1, col=i)
    fig.update_yaxes(automargin=True)
    return _layout(fig)


PAID_COLOURS = {"paid": "#2a9d8f", "unpaid": "#e76f51"}


def payments_status(rows: Rows) -> go.Figure:
    """Payments paid and unpaid per month of the payment date, one panel per type."""
    types = sorted({r["label"] for r in rows})
    if not types:
        return empty()
    columns = 2 if len(types) > 1 else 1
    panels = -(-len(types) // columns)
    fig = make_subplots(
        rows=panels,
        cols=columns,
        shared_xaxes=True,
        subplot_titles=[label(t) for t in types],
        vertical_spacing=0.14,
    )
    for i, kind in enumerate(types):
        for status in ("paid", "unpaid"):
            mine = [r for r in rows if r["label"] == kind and r["detail"] == status]
            fig.add_trace(
                go.Bar(
                    name=status,
                    legendgroup=status,
                    showlegend=i == 0,
                    marker_color=PAID_COLOURS[status],
                    x=[r["period"].isoformat() for r in mine],
                    y=[int(r["n"] or 0) for r in mine],
                    hovertemplate=f"%{{x|%b %Y}}<br>%{{y:,}} {status}<extra>{label(kind)}</extra>",
                ),
                row=i // columns + 1,
                col=i % columns + 1,
            )
    fig.update_layout(barmode="stack")
    fig.update_xaxes(type="date", tickformat="%b %Y")
    fig.update_yaxes(title_text="payments", exponentformat="SI")
    return _layout(fig, height=max(HEIGHT, 260 * panels), barmode="stack")


def ledger_runs(rows: Rows) -> go.Figure:
    """Rows written per load run, one line per table (log scale: first loads are big)."""
    if not rows:
        return empty("no load run in this window")
    fig = go.Figure()
    for table in sorted({r["table_name"] for r in rows}):
        mine = [r for r in rows if r["table_name"] == table]
        fig.add_trace(
            go.Scatter(
                name=label(table),
                mode="lines+markers",
                x=[_iso(r["loaded_at"]) for r in mine],
                y=[max(int(r["n"] or 0), 0) for r in mine],
                customdata=[[label(r["load_run_id"]), int(r["batches"])] for r in mine],
                hovertemplate="%{customdata[0]}<br>%{y:,} rows in %{customdata[1]} batches"
                f"<extra>{label(table)}</extra>",
            )
        )
    fig.update_yaxes(type="log", title_text="rows written")
    fig.update_xaxes(title_text="load run (time loaded)")
    return _layout(fig)


def lineage(rows: Rows) -> go.Figure:
    """Current rows by the day their batch was loaded, per table (log scale)."""
    rows = [r for r in rows if int(r["n"] or 0) > 0]
    if not rows:
        return empty("the warehouse holds no rows yet")
    fig = go.Figure()
    for table in sorted({r["table_name"] for r in rows}):
        mine = [r for r in rows if r["table_name"] == table]
        fig.add_trace(
            go.Bar(
                name=label(table),
                x=[_day_label(r["loaded_on"]) for r in mine],
                y=[int(r["n"]) for r in mine],
                hovertemplate=f"%{{x}}<br>%{{y:,}} rows<extra>{label(table)}</extra>",
            )
        )
    fig.update_yaxes(type="log", title_text="current rows")
    fig.update_xaxes(type="category", title_text="day the batch was loaded")
    return _layout(fig, barmode="group")


def quarantine(counts: Sequence[Any]) -> go.Figure:
    """Quarantined rows by rule, stacked by source table."""
    if not counts:
        return empty("no quarantined rows in this window")
    rules = sorted({c.rule for c in counts})
    fig = go.Figure()
    for table in sorted({c.source_table for c in counts}):
        per_rule = {rule: 0 for rule in rules}
        for c in counts:
            if c.source_table == table:
                per_rule[c.rule] += c.rows
        fig.add_trace(
            go.Bar(
                name=label(table),
                x=[label(r) for r in rules],
                y=list(per_rule.values()),
                hovertemplate=f"%{{x}}<br>%{{y:,}} rows<extra>{label(table)}</extra>",
            )
        )
    fig.update_yaxes(title_text="rows quarantined")
    fig.update_xaxes(title_text="rule")
    return _layout(fig, barmode="stack")


def freshness(ages: Sequence[tuple[str, float | None]]) -> go.Figure:
    """How long ago each thing happened (newest source update per table, last load)."""
    known = [(name, hours) for name, hours in ages if hours is not None]
    if not known:
        return empty("nothing loaded yet")
    in_days = max(h for _, h in known) >= 72
    unit, scale = ("days", 24.0) if in_days else ("hours", 1.0)
    fig = go.Figure(
        go.Bar(
            orientation="h",
            y=[label(name) for name, _ in known],
            x=[round(h / scale, 2) for _, h in known],
            marker_color=["#457b9d"] * len(known),
            hovertemplate=f"%{{y}}<br>%{{x:,.2f}} {unit} ago<extra></extra>",
        )
    )
    fig.update_xaxes(title_text=f"{unit} before the report was built", rangemode="tozero")
    fig.update_yaxes(automargin=True)
    return _layout(fig, height=260)


def _iso(value: datetime | date) -> str:
    return value.isoformat()


def _day_label(value: date | None) -> str:
    return value.isoformat() if value else "not loaded by the pipeline"
