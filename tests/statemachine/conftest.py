"""Fixtures: one in-process moto server per session; per test, fresh AWS state with the
synthesized state machine, the lake buckets, the alert topic and the Lambda router."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.stacks.synth import Assembly, default_assembly
from tests.statemachine import harness


@pytest.fixture(scope="session")
def assembly() -> Assembly:
    return default_assembly()


@pytest.fixture(scope="session")
def moto_url(moto_server: str) -> str:
    """The session's moto server, with its Lambda request router built by one request.

    moto builds that router lazily, on the first Lambda request; when those are the Map's
    concurrent invokes, the build runs in several threads at once and CPython 3.11's
    `ast.parse` (used by werkzeug to compile the routes) can fail with "SystemError: AST
    constructor recursion depth mismatch": a 500 that the execution sees as
    `States.Runtime`. One sequential request first makes that impossible.
    """
    import boto3

    boto3.client("lambda").list_functions()
    return moto_server


@dataclass
class PipelineAws:
    """The deployed pipeline, in moto: what a test drives and inspects."""

    url: str
    sfn: Any
    machine_arn: str
    topic_arn: str
    env: dict[str, str]
    router: harness.LambdaRouter
    recorder: harness.RetryRecorder
    definition: dict[str, Any]
    rule: tuple[dict[str, Any], str]  # the alert rule's pattern and target function

    def run(self, execution_input: dict[str, Any], name: str | None = None) -> harness.Execution:
        # Always named: moto reuses the name "None" for unnamed executions.
        name = name or f"run-{uuid.uuid4().hex[:12]}"
        execution = harness.run_execution(self.sfn, self.machine_arn, name, execution_input)
        self._status_changed(execution.arn)
        return execution

    def redrive(self, execution: harness.Execution) -> harness.Execution:
        """Redrive `execution` as AWS documents it (harness.redrive_definition)."""
        definition, state_input, _ = harness.redrive_definition(self.definition, execution.history)
        machine = self.sfn.create_state_machine(
            name=f"totesys-etl-redrive-{uuid.uuid4().hex[:8]}",
            definition=json.dumps(definition),
            roleArn=f"arn:aws:iam::{harness.ACCOUNT}:role/totesys-etl-states",
        )["stateMachineArn"]
        name = execution.arn.rsplit(":", 1)[-1]  # the same name: run ids derive from it
        redriven = harness.run_execution(self.sfn, machine, name, state_input)
        self._status_changed(redriven.arn, as_machine=self.machine_arn)
        return redriven

    def _status_changed(self, execution_arn: str, as_machine: str | None = None) -> None:
        """What EventBridge does with the status change: invoke the rule's target if the
        event matches its pattern (a redrive keeps the state machine, so `as_machine`)."""
        event = harness.status_change_event(self.sfn, execution_arn)
        if as_machine:
            event["detail"]["stateMachineArn"] = as_machine
        pattern, function = self.rule
        if harness.matches(pattern, event):
            response = self.router.invoke(function, json.dumps(event), headers := {})
            assert "x-amz-function-error" not in headers, response

    def notifications(self) -> list[dict[str, Any]]:
        """Messages published to the alert topic (subject + parsed JSON body)."""
        from moto.sns.models import sns_backends

        topic = sns_backends[harness.ACCOUNT][harness.REGION].topics[self.topic_arn]
        return [
            {"subject": subject, "message": json.loads(message)}
            for _id, message, subject, *_ in topic.sent_notifications
        ]

    def put_database_secrets(self, source_dsn: str, warehouse_dsn: str) -> list[str]:
        """Create the two secrets the stack's functions name, in the RDS JSON shape.

        Returns the passwords they hold, for the R18 checks: a server without password
        authentication (CI's trust auth) still gets a distinctive one, which it ignores.
        """
        import boto3

        client = boto3.client("secretsmanager")
        passwords = []
        for env_key, dsn in (
            ("TOTESYS_SECRET_ARN", source_dsn),
            ("WAREHOUSE_SECRET_ARN", warehouse_dsn),
        ):
            value = secret_value(dsn)
            passwords.append(value["password"])
            client.create_secret(Name=self.env[env_key], SecretString=json.dumps(value))
        return passwords

    def lake_url(self, env_key: str) -> str:
        return self.env[env_key]


def secret_value(dsn: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(dsn)
    return {
        "host": d.get("host") or "localhost",
        "port": int(d.get("port") or 5432),
        "username": d.get("user"),
        "password": d.get("password") or f"pw-{uuid.uuid4().hex}",
        "dbname": d.get("dbname"),
    }


@pytest.fixture
def pipeline_aws(
    assembly: Assembly, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PipelineAws]:
    import boto3
    from moto.moto_api._internal.models import moto_api_backend

    from pipeline import credentials

    moto_api_backend.reset()  # the server runs in this process: same backends
    credentials.clear_secret_cache()  # secrets are per test (fresh databases)
    env = harness.function_environment(assembly)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3")
    for key in ("INGEST_URL", "PROCESSED_URL"):
        s3.create_bucket(Bucket=env[key].removeprefix("s3://"))
    topic_arn = boto3.client("sns").create_topic(Name=harness.topic_logical_id(assembly))[
        "TopicArn"
    ]
    warm_up_moto_routers(env)
    router = harness.LambdaRouter(harness.function_handlers(assembly))
    recorder = harness.RetryRecorder()
    with harness.patched_moto(router, recorder):
        # Created after patching: moto picks its executing Step Functions backend by config.
        sfn = boto3.client("stepfunctions")
        definition = harness.state_machine_definition(assembly)
        machine_arn = sfn.create_state_machine(
            name="totesys-etl",
            definition=json.dumps(definition),
            roleArn=f"arn:aws:iam::{harness.ACCOUNT}:role/totesys-etl-states",
        )["stateMachineArn"]
        yield PipelineAws(
            moto_url,
            sfn,
            machine_arn,
            topic_arn,
            env,
            router,
            recorder,
            definition,
            harness.alert_rule(assembly),
        )


def warm_up_moto_routers(env: dict[str, str]) -> None:
    """One request of each kind the handlers send, from one thread, before any execution.

    moto builds a service's request router lazily, on its first request; several
    extracts building one at once can trip a CPython 3.11 compiler race inside werkzeug
    (`SystemError: AST constructor recursion depth mismatch`), failing a random scenario.
    """
    import boto3

    s3 = boto3.client("s3")
    bucket = env["PROCESSED_URL"].removeprefix("s3://")
    s3.put_object(Bucket=bucket, Key="_warm-up", Body=b"")
    s3.get_object(Bucket=bucket, Key="_warm-up")
    s3.head_object(Bucket=bucket, Key="_warm-up")
    s3.list_objects_v2(Bucket=bucket)
    s3.delete_object(Bucket=bucket, Key="_warm-up")
    boto3.client("secretsmanager").list_secrets()
    boto3.client("sns").list_topics()
