"""One policy, two executors: the local runner and the synthesized state machine.

pipeline/orchestration.py states the rules; stacks/workflow.py states them again in Step
Functions terms. Each scenario here runs through the local runner and through the
machine in moto (the real handlers over the same fake steps) and compares the step calls
they make and how the pass ends. The docstrings' rule headlines are compared too, so the
two statements of the policy cannot drift apart either.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pipeline.orchestration
import stacks.workflow
from pipeline.errors import CorruptBatchError, SchemaDriftError
from pipeline.local.runner import run_pipeline
from pipeline.settings import Settings
from tests.statemachine.fakes import FakeSteps


def _rule_headlines(doc: str | None) -> dict[int, str]:
    return {int(n): text for n, text in re.findall(r"^(\d)\. \*\*(.+?)\*\*", doc or "", re.M)}


def test_the_state_machine_states_the_orchestration_rules() -> None:
    policy = _rule_headlines(pipeline.orchestration.__doc__)
    machine = _rule_headlines(stacks.workflow.__doc__)
    assert sorted(policy) == [1, 2, 3, 4, 5]
    assert {n: machine.get(n) for n in policy} == policy


@dataclass
class Scenario:
    """Fake-step behaviour for one pass; `setup` gets fresh FakeSteps for each executor."""

    tables: list[str]
    setup: Callable[[FakeSteps], None] = lambda steps: None
    input: dict[str, Any] = field(default_factory=dict)


def _fails_first_time(table: str) -> Callable[[FakeSteps], None]:
    """`table` drifts on its first extract only (fixed by the time of the catch-up)."""

    def setup(steps: FakeSteps) -> None:
        seen: list[str] = []

        def before(name: str, run_id: str) -> None:
            if name == table and not seen:
                seen.append(run_id)
                raise SchemaDriftError(table, "email_address", "column was renamed")

        steps.before_extract = before

    return setup


def _always_fails(table: str) -> Callable[[FakeSteps], None]:
    def setup(steps: FakeSteps) -> None:
        steps.fail = {table: SchemaDriftError(table, "email_address", "column was dropped")}

    return setup


def _broken_transform(steps: FakeSteps) -> None:
    def broken(run_id: str, settings: Settings, **kwargs: Any) -> Any:
        with steps.lock:
            steps.calls.append(("transform", {"run_id": run_id}))
        raise CorruptBatchError("lake file s3://ingest/x.parquet does not exist")

    steps.transform = broken  # type: ignore[method-assign]


def _setup(**attrs: Any) -> Callable[[FakeSteps], None]:
    def setup(steps: FakeSteps) -> None:
        for name, value in attrs.items():
            setattr(steps, name, value)

    return setup


SCENARIOS = {
    "clean": Scenario(["staff", "currency", "sales_order"]),
    "continuations": Scenario(["sales_order", "payment"], _setup(chunks={"sales_order": 3})),
    "extract bound": Scenario(["sales_order"], _setup(chunks={"sales_order": 12})),
    "failed, then caught up": Scenario(["staff", "currency"], _fails_first_time("staff")),
    "failed twice": Scenario(["staff", "currency"], _always_fails("staff")),
    "caught up over a backlog": Scenario(
        ["staff", "currency"],
        lambda steps: (_fails_first_time("staff")(steps), _setup(transform_more=2)(steps)),
    ),
    "backlog at the bound": Scenario(["currency"], _setup(transform_more=float("inf"))),
    "transform fails": Scenario(["staff", "currency"], _broken_transform),
}


def _calls(steps: FakeSteps) -> dict[str, Any]:
    return {
        "extract": Counter((c["table"], c["run_id"]) for c in steps.extracts()),
        "transform": [c["run_id"] for c in steps.transforms()],
        "load": [a["run_id"] for s, a in steps.calls if s == "load"],
    }


def _install(steps: FakeSteps, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, module in steps.modules().items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_runner_and_the_state_machine_make_the_same_calls_and_end_alike(
    name: str, pipeline_aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scenario = SCENARIOS[name]
    run_id = f"policy-{name.replace(' ', '-').replace(',', '')}"

    local_steps = FakeSteps(files_per_call=1)
    scenario.setup(local_steps)
    _install(local_steps, monkeypatch)
    report = run_pipeline(
        Settings(ingest_url=str(tmp_path / "ingest")), tables=scenario.tables, run_id=run_id
    )
    local_error = (report.error or "").split(":")[0] or None
    if local_error is None and report.failed_tables:
        local_error = report.tables[report.failed_tables[0]]["error"].split(":")[0]
    local = {
        "calls": _calls(local_steps),
        "succeeded": report.succeeded,
        "failed_tables": report.failed_tables,
        "error": local_error,
    }

    aws_steps = FakeSteps(files_per_call=1)
    scenario.setup(aws_steps)
    _install(aws_steps, monkeypatch)
    execution = pipeline_aws.run({"tables": scenario.tables}, name=run_id)
    alerts = pipeline_aws.notifications()
    aws = {
        "calls": _calls(aws_steps),
        "succeeded": execution.status == "SUCCEEDED",
        "failed_tables": alerts[0]["message"]["failed_tables"] if alerts else [],
        "error": execution.error,
    }

    assert aws == local
