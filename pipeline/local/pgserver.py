"""Throwaway PostgreSQL servers for the demo, the tests and the benchmarks.

Order of preference: a Docker container through testcontainers when a Docker engine
answers (checked in well under a second), else a private cluster made with the local
`initdb`/`pg_ctl` binaries (run as the `postgres` OS user when we are root, since
`initdb` refuses root). The cluster uses password authentication so that credential
handling is exercised for real.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.errors import ConfigurationError

DOCKER_PROBE_TIMEOUT_S = 0.3


class PostgresUnavailableError(ConfigurationError):
    """Neither a Docker engine nor local PostgreSQL binaries are available."""


def docker_engine_available(timeout: float = DOCKER_PROBE_TIMEOUT_S) -> bool:
    """True if a Docker engine answers `/_ping` on its socket within `timeout` seconds."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(host[len("unix://") :])
        elif host.startswith("tcp://"):
            addr, _, port = host[len("tcp://") :].partition(":")
            sock = socket.create_connection((addr, int(port or 2375)), timeout=timeout)
        else:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


def _pg_bin(name: str) -> str | None:
    if found := shutil.which(name):
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    return str(candidates[0]) if candidates else None


def local_binaries_available() -> bool:
    return _pg_bin("initdb") is not None and _pg_bin("pg_ctl") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalCluster:
    """A private PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only."""

    fast: bool = True  # fsync off: fine for throwaway data, not for anything kept
    directory: Path | None = None
    port: int = 0
    password: str = ""

    @property
    def dsn(self) -> str:
        return make_conninfo(
            host="127.0.0.1",
            port=str(self.port),
            user="postgres",
            password=self.password,
            dbname="postgres",
        )

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise PostgresUnavailableError(
                    "running as root needs `runuser` to start PostgreSQL"
                )
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PostgresUnavailableError(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )

    def start(self) -> LocalCluster:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (initdb and pg_ctl):
            raise PostgresUnavailableError(
                "no Docker engine and no PostgreSQL binaries (initdb, pg_ctl) found: install "
                "PostgreSQL (e.g. `apt-get install postgresql`) or start Docker"
            )
        self.directory = Path(tempfile.mkdtemp(prefix="totesys-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.password = secrets.token_urlsafe(16)
        pwfile = self.directory / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        data = self.directory / "data"
        self._run(
            initdb, "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
            f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        self.port = _free_port()
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.directory}",
            "-c max_connections=200",
            "-c shared_buffers=256MB",
            "-c max_wal_size=4GB",
            "-c timezone=UTC",
        ]
        if self.fast:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            pg_ctl, "-D", str(data), "-l", str(self.directory / "server.log"),
            "-o", " ".join(options), "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.directory is None:
            return
        pg_ctl = _pg_bin("pg_ctl")
        with contextlib.suppress(PostgresUnavailableError):
            if pg_ctl:
                self._run(pg_ctl, "-D", str(self.directory / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None


@contextlib.contextmanager
def throwaway_postgres(*, prefer_docker: bool = True) -> Iterator[str]:
    """Yield the superuser DSN of a new PostgreSQL server; remove it afterwards."""
    if prefer_docker and docker_engine_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15-alpine", driver=None) as container:
            yield container.get_connection_url(driver=None)
        return
    cluster = LocalCluster().start()
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


def with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def create_database(admin_dsn: str, name: str, *, replace: bool = True) -> str:
    """Create database `name` on the server of `admin_dsn` and return its DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if replace:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_dbname(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
