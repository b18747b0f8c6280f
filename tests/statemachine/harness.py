"""Run the synthesized state machine in moto, with Lambda calls routed to the real handlers.

How it works: the CDK `DefinitionString` is an `Fn::Join` of JSON text and
`Ref`/`Fn::GetAtt` tokens; `resolve` maps each token to a fake but well-formed value
(function name = logical id), giving runnable ASL. Moto runs in server mode in this
process (a `ThreadedMotoServer`), so boto3 (AWS_ENDPOINT_URL), pyarrow's S3 filesystem
(the lake) and moto's own Step Functions interpreter all reach the same backends.
`LambdaSimpleBackend.invoke` is patched to call the handler named by the function's
`ImageConfig.Command`; an exception becomes `{"errorType", "errorMessage"}` with the
`x-amz-function-error` header, exactly as the Lambda runtime reports it, so the Step
Functions error name is the Python exception class. Retry waits are recorded, not slept.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.stacks.synth import Assembly

ACCOUNT = "123456789012"
REGION = "us-east-1"
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "TotesysEtl",
}


# -- template -> concrete values ---------------------------------------------------------
def fake_ref(logical_id: str, resource: dict[str, Any]) -> str:
    """What `Ref` returns for each resource type the definition and environment use."""
    kind = resource["Type"]
    if kind == "AWS::Lambda::Function":
        return logical_id
    if kind == "AWS::SNS::Topic":
        return f"arn:aws:sns:{REGION}:{ACCOUNT}:{logical_id}"
    if kind == "AWS::S3::Bucket":
        return logical_id.lower()
    if kind == "AWS::StepFunctions::StateMachine":
        name = resource["Properties"].get("StateMachineName", logical_id)
        return f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}"
    return logical_id


def fake_attr(logical_id: str, resource: dict[str, Any], attr: str) -> str:
    kind = resource["Type"]
    if attr == "Arn" and kind == "AWS::Lambda::Function":
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{logical_id}"
    if attr == "Arn" and kind == "AWS::S3::Bucket":
        return f"arn:aws:s3:::{logical_id.lower()}"
    if attr == "Arn":
        return f"arn:aws:{kind.split('::')[1].lower()}:{REGION}:{ACCOUNT}:{logical_id}"
    raise KeyError(f"no fake for Fn::GetAtt {logical_id}.{attr}")


def resolve(value: Any, resources: dict[str, dict[str, Any]]) -> Any:
    """Replace CloudFormation intrinsics (Ref, Fn::GetAtt, Fn::Join) with fake values."""
    if isinstance(value, list):
        return [resolve(v, resources) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Ref"}:
        name = value["Ref"]
        return PSEUDO[name] if name in PSEUDO else fake_ref(name, resources[name])
    if set(value) == {"Fn::GetAtt"}:
        logical_id, attr = value["Fn::GetAtt"]
        return fake_attr(logical_id, resources[logical_id], attr)
    if set(value) == {"Fn::Join"}:
        sep, parts = value["Fn::Join"]
        return sep.join(str(resolve(p, resources)) for p in parts)
    return {k: resolve(v, resources) for k, v in value.items()}


def state_machine_definition(assembly: Assembly) -> dict[str, Any]:
    """The concrete ASL of the one state machine in the template."""
    _, machine = assembly.one("AWS::StepFunctions::StateMachine")
    text = resolve(machine["Properties"]["DefinitionString"], assembly.template["Resources"])
    return json.loads(text)


def function_handlers(assembly: Assembly) -> dict[str, str]:
    """Function name (= logical id) -> handler import path, from `ImageConfig.Command`."""
    return {
        logical_id: fn["Properties"]["ImageConfig"]["Command"][0]
        for logical_id, fn in assembly.resources("AWS::Lambda::Function").items()
    }


def function_environment(assembly: Assembly) -> dict[str, str]:
    """The union of every function's environment, resolved (values agree where shared)."""
    merged: dict[str, str] = {}
    for fn in assembly.resources("AWS::Lambda::Function").values():
        env = fn["Properties"].get("Environment", {}).get("Variables", {})
        for key, value in resolve(env, assembly.template["Resources"]).items():
            assert merged.setdefault(key, value) == value, f"functions disagree on {key}"
    return merged


def topic_logical_id(assembly: Assembly) -> str:
    return assembly.one("AWS::SNS::Topic")[0]


# -- fake Lambda runtime -------------------------------------------------------------------
@dataclass
class Invocation:
    function: str
    handler: str
    event: dict[str, Any]
    error: str | None = None
    result: Any = None


@dataclass
class FakeContext:
    """The attributes of a Lambda context object that Powertools reads."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/test"
    log_stream_name: str = "test"
    remaining_ms: int = 900_000  # a fresh invocation of a 15-minute function

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class LambdaRouter:
    """Routes moto's Lambda invocations to handlers; records every call."""

    handlers: dict[str, str]
    invocations: list[Invocation] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Return True to lose a successful call's response (Lambda.ServiceException): the
    # handler ran, the caller cannot know, Step Functions retries (an ambiguous invoke).
    lose_response: Callable[[Invocation], bool] | None = None

    def handler_for(self, function_name: str) -> tuple[str, Callable[..., Any]]:
        name = function_name.split(":function:")[-1].split(":")[0]
        path = self.handlers[name]
        module, _, attr = path.rpartition(".")
        # Looked up at call time so tests can monkeypatch pipeline.handlers.<name>.
        return name, getattr(importlib.import_module(module), attr)

    def invoke(self, function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
        name, handler = self.handler_for(function_name)
        event = json.loads(body) if body else {}
        call = Invocation(function=name, handler=self.handlers[name], event=event)
        with self.lock:
            self.invocations.append(call)
        context = FakeContext(name, f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}")
        try:
            call.result = handler(event, context)
        except Exception as exc:  # what the Lambda runtime does with an unhandled error
            call.error = type(exc).__name__
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": call.error, "errorMessage": str(exc)}).encode()
        if self.lose_response and self.lose_response(call):
            from moto.core.exceptions import JsonRESTError

            call.error = "Lambda.ServiceException (response lost)"
            raise JsonRESTError("ServiceException", "simulated: response lost", code=500)
        return json.dumps(call.result).encode()

    def calls(self, handler_suffix: str) -> list[Invocation]:
        return [c for c in self.invocations if c.handler.endswith(handler_suffix)]


@dataclass
class RetryRecorder:
    """Stands in for `time` and `random` in moto's retrier: records waits, never sleeps."""

    delays: list[float] = field(default_factory=list)
    jitter_bounds: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    def uniform(self, low: float, high: float) -> float:
        # FULL jitter draws from [0, backoff delay]: take the upper bound so the recorded
        # delays show the configured backoff exactly, and note that jitter was applied.
        self.jitter_bounds.append(high)
        return high


@contextmanager
def patched_moto(router: LambdaRouter, recorder: RetryRecorder) -> Iterator[None]:
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.stepfunctions.parser.asl.component.common.retry import (
        jitter_strategy_decl,
        retrier_decl,
    )

    def invoke(self, function_name, qualifier, body, headers, response_headers):
        return router.invoke(function_name, body, response_headers)

    from moto.core.config import default_user_config

    saved = (LambdaSimpleBackend.invoke, retrier_decl.time, jitter_strategy_decl.random)
    saved_config = json.loads(json.dumps(default_user_config))
    # Execute definitions (not just store them); Lambda without Docker (our router).
    default_user_config["stepfunctions"]["execute_state_machine"] = True
    default_user_config["lambda"]["use_docker"] = False
    LambdaSimpleBackend.invoke = invoke
    retrier_decl.time = recorder  # type: ignore[assignment]
    jitter_strategy_decl.random = recorder  # type: ignore[assignment]
    try:
        yield
    finally:
        LambdaSimpleBackend.invoke, retrier_decl.time, jitter_strategy_decl.random = saved
        default_user_config.update(saved_config)


# -- executions ---------------------------------------------------------------------------
@dataclass
class Execution:
    arn: str
    status: str
    output: Any
    error: str | None
    cause: str | None
    history: list[dict[str, Any]]

    def payload_sizes(self) -> list[int]:
        """Byte sizes of every state input/output and task result in the history."""
        sizes = []
        for event in self.history:
            for key, details in event.items():
                if key.endswith("EventDetails") and isinstance(details, dict):
                    for name in ("input", "output"):
                        if isinstance(details.get(name), str):
                            sizes.append(len(details[name].encode()))
        return sizes


def run_execution(
    sfn: Any, machine_arn: str, name: str, execution_input: dict[str, Any], timeout: float = 540
) -> Execution:
    """Start a named execution and wait for it to finish (moto runs it in a thread).

    The wait is generous (a scenario takes well under a minute on an idle machine) but
    below pytest's 600 s timeout, so a slow machine fails with this message, not a kill."""
    arn = sfn.start_execution(
        stateMachineArn=machine_arn, name=name, input=json.dumps(execution_input)
    )["executionArn"]
    deadline = time.monotonic() + timeout
    while True:
        desc = sfn.describe_execution(executionArn=arn)
        if desc["status"] != "RUNNING":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"execution {name} still RUNNING after {timeout}s")
        time.sleep(0.2)
    history: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        history.extend(page["events"])
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    output = json.loads(desc["output"]) if desc.get("output") else None
    return Execution(
        arn=arn,
        status=desc["status"],
        output=output,
        error=desc.get("error"),
        cause=desc.get("cause"),
        history=history,
    )


# -- the alert rule (EventBridge, which moto does not wire to Step Functions) ------------
def alert_rule(assembly: Assembly) -> tuple[dict[str, Any], str]:
    """The rule's event pattern (resolved) and the function name its one target invokes."""
    _, rule = assembly.one("AWS::Events::Rule")
    resources = assembly.template["Resources"]
    [target] = rule["Properties"]["Targets"]
    function = target["Arn"]["Fn::GetAtt"][0]
    return resolve(rule["Properties"]["EventPattern"], resources), function


def status_change_event(sfn: Any, execution_arn: str) -> dict[str, Any]:
    """The "Step Functions Execution Status Change" event AWS sends when an execution ends
    (the documented shape: the execution's description as `detail`)."""
    desc = sfn.describe_execution(executionArn=execution_arn)
    detail = {
        "executionArn": execution_arn,
        "stateMachineArn": desc["stateMachineArn"],
        "name": desc["name"],
        "status": desc["status"],
        "startDate": int(desc["startDate"].timestamp() * 1000),
        "stopDate": int(desc["stopDate"].timestamp() * 1000) if desc.get("stopDate") else None,
        "input": desc.get("input"),
        "output": desc.get("output"),
        "error": desc.get("error"),
        "cause": desc.get("cause"),
    }
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": ACCOUNT,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": REGION,
        "resources": [execution_arn],
        "detail": detail,
    }


def matches(pattern: Any, value: Any) -> bool:
    """EventBridge matching for the pattern forms the stack uses (nested keys, value lists)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(matches(p, value.get(k)) for k, p in pattern.items())
    assert isinstance(pattern, list), pattern
    return value in pattern


# -- redrive (moto has none): re-execution the way AWS documents it ----------------------
# RedriveExecution "continues the failed execution from the unsuccessful step and uses the
# same input"; succeeded steps are not re-run; an Inline Map "reschedules and redrives only
# those iterations that failed or aborted" (each from its unsuccessful step: the console
# walk-through resumes the failed Task inside a Parallel branch); retry counts restart at 0
# and a Fail state "reenters the Fail state and fails again". So: start the same
# definition at the unsuccessful top-level state with its recorded input, under the same
# execution name (run ids derive from it); for an Inline Map, each iteration that
# succeeded returns its recorded output and each other one resumes at its own
# unsuccessful state with that state's recorded input.
def _entered(event: dict[str, Any]) -> dict[str, Any] | None:
    return event.get("stateEnteredEventDetails")


def _threads(history: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Events of each Map iteration, keyed by its MapIterationStarted event id.

    Within an iteration every event's previousEventId is the one before it in the same
    iteration, back to MapIterationStarted (how moto's interpreter and AWS chain them).
    Callers filter by state name: an event after the Map may chain onto an iteration.
    """
    owner: dict[int, int] = {}
    threads: dict[int, list[dict[str, Any]]] = {}
    for event in sorted(history, key=lambda e: e["id"]):
        if event["type"] == "MapIterationStarted":
            owner[event["id"]] = event["id"]
            threads[event["id"]] = []
        elif event.get("previousEventId") in owner:
            owner[event["id"]] = owner[event["previousEventId"]]
            threads[owner[event["id"]]].append(event)
    return threads


def _unsuccessful_state(events: list[dict[str, Any]], names: set[str]) -> tuple[str, Any] | None:
    """The last state among `names` entered and never exited, with its recorded input."""
    exited: set[str] = set()
    for event in sorted(events, key=lambda e: e["id"], reverse=True):
        if (details := event.get("stateExitedEventDetails")) and details["name"] in names:
            exited.add(details["name"])
        if (details := _entered(event)) and details["name"] in names:
            if details["name"] not in exited:
                return details["name"], json.loads(details["input"])
            exited.discard(details["name"])
    return None


def _path(document: Any, path: str) -> Any:
    assert path.startswith("$"), path
    for part in [p for p in path[1:].split(".") if p]:
        document = document[part]
    return document


def _redriven_map(
    name: str, state: dict[str, Any], state_input: Any, history: list[dict[str, Any]]
) -> tuple[dict[str, Any], Any]:
    """The Map rewritten so that it re-runs only its failed, aborted or unstarted items."""
    assert "ItemSelector" not in state and "Parameters" not in state, (
        f"{name}: redrive of a Map with an ItemSelector is not modelled here"
    )
    processor = state["ItemProcessor"]
    inner = set(processor["States"])
    items = _path(state_input, state.get("ItemsPath", "$"))
    [entered] = [e for e in history if (_entered(e) or {}).get("name") == name][
        -1:
    ]  # the last attempt of this Map
    threads = _threads([e for e in history if e["id"] > entered["id"]])
    plan: list[dict[str, Any]] = [{"resume": processor["StartAt"], "input": item} for item in items]
    for start_id, events in threads.items():
        start = next(e for e in history if e["id"] == start_id)
        index = start["mapIterationStartedEventDetails"]["index"]
        if any(e["type"] == "MapIterationSucceeded" for e in events):
            last = max(
                (
                    e
                    for e in events
                    if (e.get("stateExitedEventDetails") or {}).get("name") in inner
                ),
                key=lambda e: e["id"],
            )
            plan[index] = {"done": json.loads(last["stateExitedEventDetails"]["output"])}
        else:
            unsuccessful = _unsuccessful_state(events, inner)
            if unsuccessful is not None:
                plan[index] = {"resume": unsuccessful[0], "input": unsuccessful[1]}
    dispatch: dict[str, Any] = {
        "Type": "Choice",
        "Choices": [
            {"Variable": "$.done", "IsPresent": True, "Next": "RedriveDone"},
            *(
                {"Variable": "$.resume", "StringEquals": s, "Next": f"RedriveResume{s}"}
                for s in sorted(inner)
            ),
        ],
    }
    states = {
        "RedriveDispatch": dispatch,
        "RedriveDone": {"Type": "Pass", "InputPath": "$.done", "End": True},
        **{
            f"RedriveResume{s}": {"Type": "Pass", "InputPath": "$.input", "Next": s}
            for s in sorted(inner)
        },
        **processor["States"],
    }
    rewritten = {
        **state,
        "ItemsPath": "$.redrive_items",
        "ItemProcessor": {**processor, "StartAt": "RedriveDispatch", "States": states},
    }
    return rewritten, {**state_input, "redrive_items": plan}


def redrive_definition(
    definition: dict[str, Any], history: list[dict[str, Any]]
) -> tuple[dict[str, Any], Any, str]:
    """(definition to run, its input, the unsuccessful state) for redriving `history`."""
    found = _unsuccessful_state(history, set(definition["States"]))
    assert found is not None, "no unsuccessful top-level state: nothing to redrive"
    name, state_input = found
    state = definition["States"][name]
    states = dict(definition["States"])
    if state["Type"] == "Map":
        states[name], state_input = _redriven_map(name, state, state_input, history)
    else:
        assert state["Type"] in {"Task", "Pass", "Choice", "Fail"}, state["Type"]
    return {**definition, "StartAt": name, "States": states}, state_input, name
