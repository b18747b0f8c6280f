"""The report in a real browser: Debian's Chromium, headless, with networking disabled.

The page built from a seeded, loaded warehouse must load with no console error, draw
every chart (an SVG with marks in it), and make no request but for the file itself:
the browser's own request log is the proof that nothing is fetched. A full-page
screenshot is kept as a test artifact (`$TEST_ARTIFACTS`, default `test-artifacts/`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.local.cli import main
from tests.integration.report.conftest import LoadedWarehouse

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in CI; the page is our own file
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]
# Marks Plotly draws for bars, lines, treemap tiles; an annotation-only plot has none.
MARKS = ", ".join(
    (
        ".barlayer .point",
        ".scatterlayer path.js-line",
        ".scatterlayer .point",
        ".treemaplayer .slice",
    )
)


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail("REQUIRE_BROWSER=1 but Debian's chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def artifacts() -> Path:
    folder = Path(os.environ.get("TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_report_renders_offline_with_no_console_error_and_no_request(
    loaded: LoadedWarehouse, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium()
    out = tmp_path / "report.html"
    args = ["report", "--warehouse-dsn", loaded.warehouse, "--processed-url"]
    assert main([*args, loaded.processed_url, "--out", str(out)]) == 0
    console: list[tuple[str, str]] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
            page = context.new_page()
            # Rendering a few MB of chart JSON takes seconds idle, much longer on a machine
            # with a load average of 20 (Playwright's default 30 s ran out there).
            page.set_default_timeout(180_000)
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: requests.append(r.url))
            page.goto(out.as_uri(), wait_until="load")
            page.evaluate("window.reportReady.then(() => true)")
            rendered = page.evaluate(
                """(marks) => Array.from(document.querySelectorAll("figure.chart")).map(f => {
                     const svg = f.querySelector("svg.main-svg");
                     const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
                     return [f.dataset.chart, box.width, box.height,
                             f.querySelectorAll(marks).length];
                   })""",
                MARKS,
            )
            page.screenshot(path=str(artifacts() / "report.png"), full_page=True)
        finally:
            browser.close()
    assert [m for m in console if m[0] in ("error", "pageerror", "warning")] == []
    assert requests == [out.as_uri()]  # the page itself, nothing else
    assert len(rendered) == 16
    for key, width, height, marks in rendered:
        assert width > 100 and height > 100, f"chart {key} has no drawing area"
        assert marks > 0, f"chart {key} drew no bars, lines or tiles"
