"""docs/RELIABILITY.md stays true: each scenario once, each named test real, nothing hidden.

The page maps the failure scenarios R1..R28 to the tests that prove them. A test renamed
or deleted, a scenario dropped or listed twice, a row with neither a test nor the word
`uncovered`, or an uncovered row missing from the summary line at the top fails here.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "RELIABILITY.md"
SCENARIOS = [f"R{n}" for n in range(1, 29)]
ROW = re.compile(r"^\|\s*(R\d+)\s*\|(.*)\|\s*$")
NODE_ID = re.compile(r"`(tests/[^`\s]+?\.py::[^`\s]+)`")
SUMMARY = re.compile(r"^\*\*Uncovered:\*\*\s*(.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Row:
    scenario: str
    cells: list[str]
    node_ids: list[str]

    @property
    def tests_cell(self) -> str:
        return self.cells[-1]

    @property
    def uncovered(self) -> bool:
        return self.tests_cell.lstrip().startswith("uncovered")


def parse_rows(text: str) -> list[Row]:
    rows = []
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            cells = [c.strip() for c in match.group(2).split("|")]
            rows.append(Row(match.group(1), cells, NODE_ID.findall(cells[-1])))
    return rows


def parse_summary(text: str) -> list[str]:
    """The ids on the `**Uncovered:**` line, which must sit before the table."""
    [match] = SUMMARY.findall(text)
    return [] if match == "none" else [s.strip() for s in match.split(",")]


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """`name` and `Class::name` for every test function pytest would collect from `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and node.name.startswith("test"):
            found.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, functions) and item.name.startswith("test"):
                    found.add(f"{node.name}::{item.name}")
    return frozenset(found)


def missing_reason(node_id: str) -> str | None:
    """Why `node_id` names no collected test, or None if it does."""
    file, _, name = node_id.partition("::")
    name = re.sub(r"\[.*\]$", "", name)  # a parametrized case: the function must exist
    path = ROOT / file
    if not (path.is_file() and path.name.startswith("test_")):
        return f"{file} is not a test file"
    if name not in defined_tests(path):
        return f"{file} defines no test {name!r}"
    return None


def check(text: str) -> list[str]:
    """Every problem with the page's text, as messages (empty when it is true)."""
    problems = []
    rows = parse_rows(text)
    ids = [r.scenario for r in rows]
    if ids != SCENARIOS:
        problems.append(f"rows must be {SCENARIOS[0]}..{SCENARIOS[-1]} once each, in order: {ids}")
    for row in rows:
        if len(row.cells) != 3:
            problems.append(f"{row.scenario}: expected id, scenario, must hold, tests")
        if not row.uncovered and not row.node_ids:
            problems.append(f"{row.scenario}: names no test and is not marked uncovered")
        if row.uncovered and len(row.tests_cell.split(":", 1)[-1].strip()) < 20:
            problems.append(f"{row.scenario}: uncovered without saying what is missing")
        for node_id in row.node_ids:
            reason = missing_reason(node_id)
            if reason:
                problems.append(f"{row.scenario}: {node_id}: {reason}")
    summary = SUMMARY.search(text)
    table = text.find("\n| R1 ")
    if summary is None or len(SUMMARY.findall(text)) != 1:
        problems.append("one `**Uncovered:**` summary line is required")
    elif table != -1 and summary.start() > table:
        problems.append("the `**Uncovered:**` line must come before the table")
    else:
        uncovered = [r.scenario for r in rows if r.uncovered]
        if parse_summary(text) != uncovered:
            problems.append(f"summary says {parse_summary(text)}, rows say {uncovered}")
    return problems


def test_the_reliability_page_is_true() -> None:
    assert check(DOC.read_text(encoding="utf-8")) == []


def test_every_scenario_row_names_tests_that_exist() -> None:
    rows = parse_rows(DOC.read_text(encoding="utf-8"))
    named = [n for r in rows for n in r.node_ids]
    assert len(named) > len(SCENARIOS)  # the parser really finds node ids
    assert all(missing_reason(n) is None for n in named)


# -- the checker itself fails on what it is meant to catch -----------------------------------
GOOD_ID = "tests/unit/test_reliability_map.py::test_the_reliability_page_is_true"


def _page(rows: dict[str, str], summary: str) -> str:
    lines = [
        f"**Uncovered:** {summary}",
        "",
        "| id | scenario | must hold | tests |",
        "|---|---|---|---|",
    ]
    lines += [f"| {sid} | s | h | {rows.get(sid, f'`{GOOD_ID}`')} |" for sid in SCENARIOS]
    return "\n".join(lines) + "\n"


def test_a_true_page_passes() -> None:
    assert check(_page({}, "none")) == []
    gap = "uncovered: nothing builds this yet, so nothing tests it"
    assert check(_page({"R21": gap}, "R21")) == []


@pytest.mark.parametrize(
    ("rows", "summary", "says"),
    [
        ({"R3": "`tests/unit/test_reliability_map.py::test_renamed_away`"}, "none", "no test"),
        ({"R3": "`tests/unit/test_no_such_file.py::test_x`"}, "none", "not a test file"),
        ({"R3": "see the extract tests"}, "none", "names no test"),
        ({"R3": "uncovered"}, "R3", "without saying"),
        ({"R3": "uncovered: nothing builds this yet, so nothing tests it"}, "none", "summary"),
        ({}, "R3", "summary says"),
    ],
)
def test_a_false_page_is_caught(rows: dict[str, str], summary: str, says: str) -> None:
    problems = check(_page(rows, summary))
    assert any(says in p for p in problems), problems


def test_a_missing_or_repeated_scenario_is_caught() -> None:
    page = _page({}, "none")
    assert check(page.replace("| R7 |", "| R6 |"))
    assert check(page.replace(f"| R28 | s | h | `{GOOD_ID}` |\n", ""))


def test_a_summary_after_the_table_is_caught() -> None:
    summary, rest = _page({}, "none").split("\n", 1)
    assert any("before the table" in p for p in check(rest + "\n" + summary + "\n"))


def test_class_methods_and_parametrized_cases_are_found(tmp_path: Path) -> None:
    path = tmp_path / "test_sample.py"
    path.write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('x', [1])\n"
        "def test_param(x): pass\n"
        "class TestGroup:\n"
        "    def test_method(self): pass\n"
        "def helper(): pass\n"
    )
    assert defined_tests(path) == {"test_param", "TestGroup::test_method"}
