"""The state machine definition's shape: fan-out, retries, catch, continuation and alerts."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import pipeline
from pipeline import errors
from pipeline.catalog import TABLE_NAMES
from tests.statemachine.harness import fake_ref, state_machine_definition, topic_logical_id

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


@pytest.mark.parametrize("state", ["Extract", "Transform", "Load"])
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
    [catch] = task["Catch"]
    assert catch["ErrorEquals"] == ["States.ALL"]
    assert catch["ResultPath"] == "$.failure"
    expected = "TableFailed" if state == "Extract" else "DescribeStepFailure"
    assert catch["Next"] == expected


def _permanent() -> list[type]:
    return [errors.PermanentError, *errors.PermanentError.__subclasses__()]


def test_extract_loops_while_more_rows_remain(asl):
    states = all_states(asl)
    more = states["MoreRows"]
    [choice] = more["Choices"]
    assert choice == {"Variable": "$.result.more", "BooleanEquals": True, "Next": "NextChunk"}
    assert states["NextChunk"]["Next"] == "Extract"
    assert states["NextChunk"]["Parameters"]["run_id.$"] == "$.result.next_run_id"
    assert states["Extract"]["ResultSelector"]["more.$"] == "$.Payload.more"


def test_failed_tables_are_recorded_then_reported_through_sns_and_the_run_fails(asl, assembly):
    states = all_states(asl)
    topic = topic_logical_id(assembly)
    resources = assembly.template["Resources"]
    assert states["TableFailed"]["Parameters"]["failed_table.$"] == "$.table"
    assert states["Summarise"]["Next"] == "Transform"
    assert states["MoreToTransform"]["Default"] == "Load"
    assert states["Load"]["Next"] == "AnyTableFailed"
    assert states["AnyTableFailed"]["Default"] == "BacklogCleared"
    [choice] = states["AnyTableFailed"]["Choices"]
    assert choice["Next"] == "DescribeTableFailures"
    alert = states["DescribeTableFailures"]["Parameters"]["alert"]
    assert alert["rerun_input"] == {"tables.$": "$.failed_tables"}
    assert alert["execution_arn.$"] == "$$.Execution.Id"
    for notify, fail in (
        ("NotifyTablesFailed", "TablesFailed"),
        ("NotifyStepFailed", "StepFailed"),
        ("NotifyBacklogLimit", "TransformBacklogLimit"),
    ):
        assert states[notify]["Resource"] == "arn:aws:states:::sns:publish"
        assert states[notify]["Parameters"]["TopicArn"] == fake_ref(topic, resources[topic])
        assert states[notify]["Next"] == fail
        assert states[fail]["Type"] == "Fail"


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
            {"Variable": "$.transform_call.n", "NumericLessThan": 20},
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
        "Next": "DescribeBacklogLimit",
    }
    assert states["BacklogCleared"]["Default"] == "Done"
    alert = states["DescribeBacklogLimit"]["Parameters"]["alert"]
    assert alert["last_transform_run_id.$"] == "$.transform_call.run_id"
    assert alert["transform_runs.$"] == "$.transform_call.n"
    assert "20 invocations" in alert["problem"]
    fail = states["TransformBacklogLimit"]
    assert fail["Error"] == "TransformBacklogLimit"
    assert "$.transform_call.run_id" in fail["CausePath"]
