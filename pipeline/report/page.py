"""One self-contained HTML page: styles, Plotly's JavaScript and every figure inline.

Nothing on the page refers to the network: Plotly's bundle is copied in from the
installed `plotly` package, the figures are JSON in the page, and the Content Security
Policy (`default-src 'none'`) tells the browser to refuse any fetch anyway, so a page
opened offline, from a mail attachment or an S3 download, looks the same. Text from the
warehouse is escaped for HTML, and for the JSON inside `<script>`.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from plotly.utils import PlotlyJSONEncoder

from pipeline.report.charts import Chart

CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; "
    "form-action 'none'"
)
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "showLink": False}

STYLE = """
:root { color-scheme: light; --ink: #1d2731; --muted: #5b6b7a; --line: #e3e8ee; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica,
       Arial, sans-serif; color: var(--ink); background: #f6f8fa; }
header { background: #1d3557; color: #fff; padding: 20px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; color: #d6e2f0; }
nav { display: flex; gap: 16px; padding: 10px 28px; background: #fff;
      border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 5; }
nav a { color: #1d3557; text-decoration: none; font-weight: 600; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section h2 { margin: 28px 0 8px; font-size: 19px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 16px; }
figure.chart { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 6px;
               padding: 12px 12px 8px; min-width: 0; }
figure.chart.wide { grid-column: 1 / -1; }
figure.chart h3 { margin: 0 0 4px; font-size: 15px; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 6px; }
table.summary { border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
table.summary th, table.summary td { padding: 6px 12px; border-bottom: 1px solid var(--line);
                                     text-align: right; }
table.summary th:first-child, table.summary td:first-child { text-align: left; }
.note { color: var(--muted); }
"""

# Draws every figure; `window.reportReady` settles once all are drawn, so a browser test
# (or a screenshot) can wait for it; a failed figure is reported, never silently empty.
SCRIPT = """
(function () {
  var figures = JSON.parse(document.getElementById("report-figures").textContent);
  var config = JSON.parse(document.getElementById("report-config").textContent);
  window.reportReady = Promise.all(Object.keys(figures).map(function (key) {
    var fig = figures[key];
    return Plotly.newPlot("plot-" + key, fig.data, fig.layout, config);
  }));
  window.reportReady.catch(function (err) { console.error("report chart failed:", err); });
})();
"""


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    charts: Sequence[Chart]
    intro: str = ""  # already-escaped HTML (tables, notes) shown above the charts
    wide: frozenset[str] = field(default_factory=frozenset)  # chart keys spanning the row


@functools.cache
def plotly_js() -> str:
    """Plotly's minified bundle, as shipped in the installed package."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def script_json(value: Any) -> str:
    """JSON safe inside `<script>`: no `<`, `>` or `&` that could end or bend the element."""
    text = json.dumps(value, cls=PlotlyJSONEncoder, separators=(",", ":"))
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def _inline_script(source: str) -> str:
    if "</script" in source.lower():  # would end the element early
        source = source.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    return f"<script>{source}</script>"


def render(*, title: str, facts: Sequence[tuple[str, str]], sections: Sequence[Section]) -> str:
    """The whole page. `facts` are (label, value) lines under the title (plain text)."""
    charts = [c for s in sections for c in s.charts]
    figures = {c.key: c.figure.to_plotly_json() for c in charts}
    nav = "".join(f'<a href="#{html.escape(s.key)}">{html.escape(s.title)}</a>' for s in sections)
    header_lines = "".join(
        f"<p>{html.escape(name)}: {html.escape(value)}</p>" for name, value in facts
    )
    body = "".join(_section(s) for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1>{header_lines}</header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        f'<script type="application/json" id="report-figures">{script_json(figures)}</script>'
        f'<script type="application/json" id="report-config">{script_json(PLOTLY_CONFIG)}'
        "</script>"
        f"{_inline_script(plotly_js())}{_inline_script(SCRIPT)}"
        "</body></html>\n"
    )


def _section(section: Section) -> str:
    figures = "".join(
        f'<figure class="chart{" wide" if c.key in section.wide else ""}" '
        f'id="chart-{html.escape(c.key)}" data-chart="{html.escape(c.key)}">'
        f"<h3>{html.escape(c.title)}</h3>"
        f'<div class="plot" id="plot-{html.escape(c.key)}"></div>'
        f"<figcaption>{html.escape(c.caption)}</figcaption></figure>"
        for c in section.charts
    )
    return (
        f'<section id="{html.escape(section.key)}"><h2>{html.escape(section.title)}</h2>'
        f'{section.intro}<div class="grid">{figures}</div></section>'
    )
