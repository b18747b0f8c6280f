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
        return f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{logical_id}"
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
    sfn: Any, machine_arn: str, name: str, execution_input: dict[str, Any], timeout: float = 300
) -> Execution:
    """Start a named execution and wait for it to finish (moto runs it in a thread)."""
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
