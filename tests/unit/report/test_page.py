"""The page on its own: self-contained, escaped, and money never mixed across currencies."""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal
from html.parser import HTMLParser

import pytest

from pipeline.errors import ConfigurationError
from pipeline.layout import quarantine_file, quarantine_file_of
from pipeline.report import charts
from pipeline.report.money import format_money
from pipeline.report.page import CSP, Section, render
from pipeline.report.window import ReportWindow

HOSTILE = '</script><script>alert(1)</script><a href="https://evil.example/x">x</a>'


class Collector(HTMLParser):
    """Every tag with its attributes, and the text of each <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)


def page_with(label: str) -> str:
    rows = [
        {"currency": "GBP", "label": label, "n": 2, "units": 3, "value": Decimal("10.50")},
        {"currency": "USD", "label": "other", "n": 1, "units": 1, "value": Decimal("99.99")},
    ]
    chart = charts.Chart("top", "Top", f"caption {label}", charts.top_by_currency(rows))
    return render(
        title=f"t {label}", facts=[("who", label)], sections=[Section("s", f"S {label}", [chart])]
    )


def test_page_loads_nothing_from_outside():
    page = page_with("plain")
    parsed = Collector()
    parsed.feed(page)
    fetching = {"src", "href", "srcset", "poster", "action", "data", "formaction", "background"}
    for tag, attrs in parsed.tags:
        for name, value in attrs.items():
            if name in fetching:
                assert value == "data:," or str(value).startswith("#"), (tag, name, value)
    assert all("src" not in attrs for tag, attrs in parsed.tags if tag == "script")
    assert not [
        t
        for t, a in parsed.tags
        if t in ("link", "iframe", "img", "object", "embed") and a.get("rel") != "icon"
    ]
    assert not re.search(r"url\(|@import", "".join(parsed.styles))
    [csp] = [
        a["content"] for t, a in parsed.tags if a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp == CSP and "default-src 'none'" in csp and "connect-src 'none'" in csp
    assert len(parsed.scripts) == 4  # figures JSON, config JSON, plotly.js, the drawing code


def test_warehouse_text_cannot_break_out_of_the_page():
    page = page_with(HOSTILE)
    parsed = Collector()
    parsed.feed(page)
    assert [t for t, _ in parsed.tags].count("script") == 4  # no injected script element
    assert "https://evil.example" not in "".join(str(a) for _, a in parsed.tags)
    figures = json.loads(parsed.scripts[0])
    # Plotly shows the text literally (its labels accept a little HTML, so it is escaped)
    assert figures["top"]["data"][0]["y"] == [
        "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
        '&lt;a href="https://evil.example/x"&gt;x&lt;/a&gt;'
    ]


def test_money_panels_are_per_currency():
    page = page_with("design")
    figures = json.loads(scripts_of(page)[0])
    layout = figures["top"]["layout"]
    assert layout["xaxis"]["tickprefix"] == "GBP " and layout["xaxis2"]["tickprefix"] == "USD "
    assert [t["name"] for t in figures["top"]["data"]] == ["GBP", "USD"]
    assert format_money(Decimal("1234567.891"), "EUR") == "EUR 1,234,567.89"
    assert format_money(None, "EUR") == "-"


def scripts_of(page: str) -> list[str]:
    parsed = Collector()
    parsed.feed(page)
    return parsed.scripts


def test_window_is_validated_before_anything_runs():
    with pytest.raises(ConfigurationError, match="after until"):
        ReportWindow(date(2024, 2, 1), date(2024, 1, 1))
    assert ReportWindow(date(2024, 1, 1), date(2024, 1, 31)).contains(date(2024, 1, 31))
    assert not ReportWindow(since=date(2024, 1, 2)).contains(date(2024, 1, 1))


def test_quarantine_keys_round_trip():
    key = quarantine_file("sales_order", "run.t2")
    assert quarantine_file_of(key) == ("sales_order", "run.t2")
    assert quarantine_file_of("_quarantine/sales_order/other.parquet") is None
    assert quarantine_file_of("sales_order/run=x.parquet") is None
