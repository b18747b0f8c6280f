"""The state machine definition's shape: fan-out, retries, catch-up, continuation, bounds.

Redrive needs the unsuccessful step to be the work that failed: only the first extract
Map catches (so the other tables go on), and nothing ends in a Fail state but the
backlog bound. tests/statemachine/test_redrive.py runs the consequences.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import pipeline
from pipeline import errors
from pipeline.catalog import TABLE_NAMES
from pipeline.settings import Settings
from tests.statemachine.harness import state_machine_definition

# The stack's default bound is the setting's (stacks/config.py), which the local runner uses.
DEFAULT_TRANSFORM_RUNS = Settings.__dataclass_fields__["transform_max_rounds"].default

LAMBDA_SERVICE_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.TooManyRequestsException",
    "Lambda.SdkClientException",
    "Lambda.AWSLambdaException",
}


@pytest.fixture(scope="module")
def asl(assembly):
    return state_machine_definition(assembly)


def all_states(definition: dict) -> dict[str, dict]:
    """Every state, including those inside Map item processors."""
    states = {}
    for name, state in definition["States"].items():
        states[name] = state
        if state["Type"] == "Map":
            states.update(all_states(state["ItemProcessor"]))
    return states


def transient_family() -> set[str]:
    """Every TransientError subclass anywhere in the package (Step Functions needs names)."""
    for module in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        importlib.import_module(module.name)

    def family(cls: type) -> set[str]:
        return {cls.__name__}.union(*(family(s) for s in cls.__subclasses__()))

    return family(errors.TransientError)


def test_defaults_then_map_over_tables_with_bounded_concurrency(asl):
    assert asl["StartAt"] == "Defaults"
    assert asl["States"]["Defaults"]["Parameters"]["defaults"]["tables"] == list(TABLE_NAMES)
    assert asl["States"]["Configure"]["Parameters"] == {
        "config.$": "States.JsonMerge($.defaults, $.input, false)"
    }
    fan_out = asl["States"]["ExtractTables"]
    assert fan_out["Type"] == "Map"
    assert fan_out["MaxConcurrency"] == 4
    assert fan_out["ItemsPath"] == "$.config.tables"
    assert fan_out["ItemSelector"]["run_id.$"] == "$$.Execution.Name"
    assert fan_out["ItemSelector"]["table.$"] == "$$.Map.Item.Value"


@pytest.mark.parametrize("state", ["Extract", "ExtractAgain", "Transform", "Load"])
def test_lambda_tasks_retry_transient_and_service_errors_with_backoff_and_jitter(asl, state):
    task = all_states(asl)[state]
    assert task["Resource"] == "arn:aws:states:::lambda:invoke"
    transient, service = task["Retry"]
    assert set(transient["ErrorEquals"]) == transient_family()
    assert not set(transient["ErrorEquals"]) & {c.__name__ for c in _permanent()}
    assert set(service["ErrorEquals"]) >= LAMBDA_SERVICE_ERRORS
    for retry in (transient, service):
        assert retry["BackoffRate"] == 2
        assert retry["JitterStrategy"] == "FULL"
        assert retry["MaxDelaySeconds"] >= retry["IntervalSeconds"]
        assert retry["MaxAttempts"] >= 3
    if state == "Extract":  # the first pass over the tables: the others go on
        [catch] = task["Catch"]
        assert catch == {
            "ErrorEquals": ["States.ALL"],
            "ResultPath": "$.failure",
            "Next": "TableFailed",
        }
    else:  # the unsuccessful step is the work that failed: a Redrive re-runs it
        assert "Catch" not in task


def test_nothing_but_the_backlog_bound_ends_in_a_fail_state_and_nothing_publishes(asl):
    """A Fail state is where a Redrive fails again; alerts come from the EventBridge rule."""
    states = all_states(asl)
    assert [n for n, s in states.items() if s["Type"] == "Fail"] == ["TransformBacklogLimit"]
    assert not [n for n, s in states.items() if "sns" in str(s.get("Resource", ""))]
    assert [n for n, s in states.items() if "Catch" in s] == ["Extract"]


def _permanent() -> list[type]:
    return [errors.PermanentError, *errors.PermanentError.__subclasses__()]


@pytest.mark.parametrize("suffix", ["", "Again"])
def test_extract_loops_while_more_rows_remain_up_to_the_invocation_bound(asl, suffix):
    states = all_states(asl)
    more = states[f"MoreRows{suffix}"]
    [choice] = more["Choices"]
    assert choice == {
        "And": [
            {"Variable": "$.result.more", "BooleanEquals": True},
            {"Variable": "$.invocation", "NumericLessThan": 10},
        ],
        "Next": f"NextChunk{suffix}",
    }
    assert more["Default"] == f"Extracted{suffix}"
    step = states[f"NextChunk{suffix}"]
    assert step["Next"] == f"Extract{suffix}"
    assert step["Parameters"]["run_id.$"] == "$.result.next_run_id"
    assert step["Parameters"]["invocation.$"] == "States.MathAdd($.invocation, 1)"
    assert states[f"Extract{suffix}"]["ResultSelector"]["more.$"] == "$.Payload.more"
    assert states[f"Extracted{suffix}"]["Parameters"]["more_left.$"] == "$.result.more"


def test_failed_tables_are_recorded_where_they_stopped_and_extracted_again_after_the_load(asl):
    states = all_states(asl)
    resume = states["TableFailed"]["Parameters"]["resume"]
    assert resume == {
        "table.$": "$.table",
        "run_id.$": "$.run_id",
        "since.$": "$.since",
        "until.$": "$.until",
        "rows.$": "$.rows",
        "invocation.$": "$.invocation",
        # The catch-up extracts the table again with the execution's reconciliation options.
        "allow_mass_delete.$": "$.allow_mass_delete",
        "repair.$": "$.repair",
    }
    assert states["Summarise"]["Parameters"]["failures"] == {
        "tables.$": "$.extracted[*].failed_table",
        "errors.$": "$.extracted[*].failure",
        "resume.$": "$.extracted[*].resume",
    }
    assert states["Summarise"]["Next"] == "Transform"
    assert states["MoreToTransform"]["Default"] == "Load"
    assert states["Load"]["Next"] == "AnyTableFailed"
    assert states["AnyTableFailed"]["Default"] == "BacklogCleared"
    [choice] = states["AnyTableFailed"]["Choices"]
    assert choice == {
        "Variable": "$.failures.tables[0]",
        "IsPresent": True,
        "Next": "ExtractFailedTables",
    }
    again = asl["States"]["ExtractFailedTables"]
    assert again["Type"] == "Map" and again["ItemsPath"] == "$.failures.resume"
    # The items are the resume points: an iteration redriven or never started has them.
    assert "ItemSelector" not in again and "Catch" not in again
    assert again["ItemProcessor"]["StartAt"] == "ExtractAgain"
    assert again["Next"] == "TablesCaughtUp"
    caught_up = asl["States"]["TablesCaughtUp"]
    assert caught_up["Result"] == {"tables": [], "errors": [], "resume": []}
    assert caught_up["ResultPath"] == "$.failures" and caught_up["Next"] == "NextTransform"


def test_transform_loops_under_derived_run_ids_while_more_then_loads_once(asl):
    states = all_states(asl)
    assert states["Summarise"]["Parameters"]["transform_call"] == {
        "n": 1,
        "run_id.$": "$$.Execution.Name",
    }
    transform = states["Transform"]
    assert transform["Parameters"]["Payload"]["run_id.$"] == "$.transform_call.run_id"
    assert transform["ResultSelector"]["more.$"] == "$.Payload.more"
    assert transform["ResultPath"] == "$.transform"
    assert transform["Next"] == "MoreToTransform"

    loop = states["MoreToTransform"]
    [choice] = loop["Choices"]
    assert choice == {
        "And": [
            {"Variable": "$.transform.more", "BooleanEquals": True},
            {"Variable": "$.transform_call.n", "NumericLessThan": DEFAULT_TRANSFORM_RUNS},
        ],
        "Next": "NextTransform",
    }
    assert loop["Default"] == "Load"  # the only way to Load: one load after the loop

    step = states["NextTransform"]
    assert step["Type"] == "Pass" and step["Next"] == "Transform"  # same Retry/Catch
    assert step["ResultPath"] == "$.transform_call"
    assert step["Parameters"] == {
        "n.$": "States.MathAdd($.transform_call.n, 1)",
        "run_id.$": (
            "States.Format('{}.t{}', $$.Execution.Name, States.MathAdd($.transform_call.n, 1))"
        ),
    }
    # Load keeps the execution name as its run id.
    assert states["Load"]["Parameters"]["Payload"] == {"run_id.$": "$.run_id"}
    assert [n for n, s in states.items() if s.get("Next") == "Load"] == []


def test_a_backlog_left_at_the_bound_is_reported_then_the_run_fails(asl):
    states = all_states(asl)
    [left] = states["BacklogCleared"]["Choices"]
    assert left == {
        "Variable": "$.transform.more",
        "BooleanEquals": True,
        "Next": "TransformBacklogLimit",
    }
    assert states["BacklogCleared"]["Default"] == "Done"
    fail = states["TransformBacklogLimit"]
    assert fail["Error"] == "TransformBacklogLimit"
    assert "$.transform_call.run_id" in fail["CausePath"]


def test_the_execution_timeout_covers_the_worst_case_the_definition_allows(asl, assembly):
    """Recomputed from the synthesized ASL and template alone: every Retry spent, every
    attempt to the function timeout, every loop to its bound, every table caught up."""
    import math

    states = all_states(asl)
    function_timeout = max(
        fn["Properties"]["Timeout"] for fn in assembly.resources("AWS::Lambda::Function").values()
    )

    def task_worst(name: str) -> float:
        total = function_timeout
        for retry in states[name]["Retry"]:
            for k in range(retry["MaxAttempts"]):
                wait = retry["IntervalSeconds"] * retry["BackoffRate"] ** k
                total += function_timeout + min(wait, retry["MaxDelaySeconds"])
        return total

    def bound(choice: str) -> int:
        [rule] = states[choice]["Choices"]
        return next(c["NumericLessThan"] for c in rule["And"] if "NumericLessThan" in c)

    waves = math.ceil(len(TABLE_NAMES) / asl["States"]["ExtractTables"]["MaxConcurrency"])
    extract = waves * bound("MoreRows") * task_worst("Extract")
    catch_up = waves * bound("MoreRowsAgain") * task_worst("ExtractAgain")
    transforms = (bound("MoreToTransform") + 1) * task_worst("Transform")
    worst = extract + catch_up + transforms + 2 * task_worst("Load")
    assert asl["TimeoutSeconds"] >= worst
    assert asl["TimeoutSeconds"] < worst + 3600  # rounded up to the hour, no more
