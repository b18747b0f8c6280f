"""Faulty infrastructure in "AWS": S3 throttling and 5xx, and a rotated database password.

1. S3 answers `503 SlowDown` to an extract and `500 InternalError` to a transform for a
   while (tests/faulty_s3.py, a proxy in front of moto, through which the lake's pyarrow
   and boto3 clients go): the SDKs' own retries run out, the step raises
   `LakeUnavailableError`, the state machine retries it, and the run loads exactly what
   a clean pass loads.
2. A warm handler's cached secret: the password is rotated in the database and in
   Secrets Manager (moto); the next invocation fails to authenticate with the cached
   value, fetches the secret again and succeeds, with no cold start (the source through
   ADBC, the warehouse through psycopg). A password wrong in the secret itself still fails
   at once, after a single refetch.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import pipeline.handlers
from pipeline.errors import AuthenticationError
from tests.faulty_s3 import running
from tests.statemachine.harness import FakeContext
from tests.statemachine.test_scenarios import clean_pass, databases  # noqa: F401 (fixture)
from tests.warehouse_compare import warehouse_contents

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SDK_ATTEMPTS = 3  # pyarrow's and boto3's own attempts per request: all of them must fail


def _armed_once(monkeypatch, name: str, arm: Callable[[dict[str, Any]], bool]) -> None:
    """Wrap handler `name`: before the first call for which `arm(event)` is true, arm."""
    real = getattr(pipeline.handlers, name)
    done: list[bool] = []

    def wrapped(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if not done and arm(event):
            done.append(True)
        return real(event, context)

    monkeypatch.setattr(pipeline.handlers, name, wrapped)


def test_s3_throttling_and_5xx_are_retried_by_the_state_machine_and_the_run_succeeds(
    pipeline_aws,
    databases,  # noqa: F811 (the fixture imported above)
    make_database,
    tmp_path,
    monkeypatch,
):
    ingest_bucket = pipeline_aws.lake_url("INGEST_URL").removeprefix("s3://")
    processed_bucket = pipeline_aws.lake_url("PROCESSED_URL").removeprefix("s3://")
    with running(pipeline_aws.url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # the lake's S3, not the rest

        def throttle_currency(event: dict[str, Any]) -> bool:
            if event.get("table") != "currency":
                return False
            proxy.arm(SDK_ATTEMPTS, 503, "SlowDown", path=f"{ingest_bucket}/_manifests/currency")
            return True

        def fail_processed(event: dict[str, Any]) -> bool:
            proxy.arm(SDK_ATTEMPTS, 500, "InternalError", path=processed_bucket)
            return True

        _armed_once(monkeypatch, "extract_handler", throttle_currency)
        _armed_once(monkeypatch, "transform_handler", fail_processed)
        execution = pipeline_aws.run({}, name="run-s3-faults")

    assert execution.status == "SUCCEEDED", execution.cause
    assert len(proxy.faults.injected) == 2 * SDK_ATTEMPTS, proxy.faults.injected
    assert any("503 SlowDown" in f for f in proxy.faults.injected)
    assert any("500 InternalError" in f for f in proxy.faults.injected)
    currency = [
        c for c in pipeline_aws.router.calls("extract_handler") if c.event["table"] == "currency"
    ]
    assert [c.error for c in currency] == ["LakeUnavailableError", None]
    transform = pipeline_aws.router.calls("transform_handler")
    assert [c.error for c in transform] == ["LakeUnavailableError", None]
    assert pipeline_aws.recorder.delays == [10, 10]  # each retried once, after 10 s
    assert warehouse_contents(databases["warehouse"]) == clean_pass(
        databases["source"], make_database, tmp_path
    )


# -- rotation --------------------------------------------------------------------------------
@pytest.fixture
def rotating_role(pg_server: str, make_database) -> Iterator[dict[str, str]]:
    """A login role with its own password on a seeded source and an empty warehouse."""
    from pipeline.local.simulator.seed import seed

    source, warehouse = make_database("rot_source"), make_database("rot_warehouse")
    seed(source, scale=0.01, seed=2)
    role = f"rot_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal("first-Password-1")
            )
        )
    yield {"role": role, "source": source, "warehouse": warehouse, "admin": pg_server}
    from pipeline.extract import source as source_module

    source_module._POOL.clear()  # kept sessions of this role
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
    for dsn in (warehouse, source):  # the migrations it ran own the warehouse tables
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _secret(dsn: str, user: str, password: str) -> str:
    d = conninfo_to_dict(dsn)
    return json.dumps(
        {"host": d.get("host") or "localhost", "port": int(d.get("port") or 5432),
         "username": user, "password": password, "dbname": d["dbname"]}
    )  # fmt: skip


def _rotate(rotating_role: dict[str, str], client: Any, arns: list[str], password: str) -> None:
    with psycopg.connect(rotating_role["admin"], autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(rotating_role["role"]), sql.Literal(password)
            )
        )
    for arn, key in zip(arns, ("source", "warehouse"), strict=True):
        client.put_secret_value(
            SecretId=arn, SecretString=_secret(rotating_role[key], rotating_role["role"], password)
        )


def test_a_rotated_password_heals_on_the_next_invocation_of_a_warm_handler(
    moto_server, rotating_role, tmp_path, monkeypatch, caplog
):
    import boto3

    from pipeline import credentials
    from pipeline.extract import source as source_module

    credentials.clear_secret_cache()
    client = boto3.client("secretsmanager")
    role = rotating_role["role"]
    arns = [
        client.create_secret(
            Name=f"{key}-{uuid.uuid4().hex[:6]}",
            SecretString=_secret(rotating_role[key], role, "first-Password-1"),
        )["ARN"]
        for key in ("source", "warehouse")
    ]
    for name, value in {
        "TOTESYS_SECRET_ARN": arns[0],
        "WAREHOUSE_SECRET_ARN": arns[1],
        "INGEST_URL": str(tmp_path / "in"),
        "PROCESSED_URL": str(tmp_path / "out"),
        "SECRET_MAX_AGE_SECONDS": "3600",  # the cache outlives the rotation
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("TOTESYS_DSN", "WAREHOUSE_DSN"):
        monkeypatch.delenv(name, raising=False)
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    fetches: list[str] = []
    real_get = SecretsProvider._get

    def counting(self, name: str, **kwargs):
        fetches.append(name)
        return real_get(self, name, **kwargs)

    monkeypatch.setattr(SecretsProvider, "_get", counting)

    def invoke(name: str, event: dict[str, Any]) -> dict[str, Any]:
        context = FakeContext(name, f"arn:aws:lambda:us-east-1:123456789012:function:{name}")
        return getattr(pipeline.handlers, name)(event, context)

    assert invoke("extract_handler", {"table": "currency", "run_id": "r1"})["rows"] > 0
    assert invoke("load_handler", {"run_id": "l1"})["status"] == "nothing_to_do"
    assert sorted(fetches) == sorted(arns)  # one fetch each, then the cache

    _rotate(rotating_role, client, arns, "second-Password-2")
    source_module._POOL.clear()  # the kept session idled out: the next call logs in again
    caplog.clear()
    assert invoke("extract_handler", {"table": "staff", "run_id": "r2"})["rows"] > 0
    assert invoke("load_handler", {"run_id": "l2"})["status"] == "nothing_to_do"
    assert sorted(fetches) == sorted(arns * 2)  # each refetched exactly once
    assert caplog.text.count("cached secret failed to authenticate") == 2

    # A wrong password in the secret itself: one refetch, then a permanent error.
    client.put_secret_value(
        SecretId=arns[0], SecretString=_secret(rotating_role["source"], role, "not-it-3")
    )
    source_module._POOL.clear()
    credentials.clear_secret_cache()
    with pytest.raises(AuthenticationError) as info:
        invoke("extract_handler", {"table": "currency", "run_id": "r3"})
    assert "not-it-3" not in str(info.value) and arns[0] in str(info.value)
