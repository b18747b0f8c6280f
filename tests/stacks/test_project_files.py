"""The files around the CDK app: cdk.json, the pinned CLI and the CI/CD workflows."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from stacks.config import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]


def test_cdk_json_runs_app_py_and_documents_the_code_defaults():
    cdk = json.loads((ROOT / "cdk.json").read_text())
    assert "app.py" in cdk["app"]
    for key, value in cdk["context"].items():
        if key.startswith("@aws-cdk"):
            continue  # a feature flag (next test)
        assert key in DEFAULTS, f"cdk.json context {key} is not a setting"
        assert DEFAULTS[key] == value, f"cdk.json says {key}={value}, code says {DEFAULTS[key]}"


def test_the_cdk_cli_is_pinned_exactly_and_locked():
    package = json.loads((ROOT / "package.json").read_text())
    version = package["devDependencies"]["aws-cdk"]
    assert version[0].isdigit(), "pin an exact version, not a range"
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/aws-cdk"]["version"] == version


def test_ci_lints_tests_with_postgres_required_and_synthesizes():
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    job = ci["jobs"]["test"]
    assert "postgres" in job["services"]
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "make lint" in runs and "pytest" in runs and "npx cdk synth" in runs
    suite, again = [s for s in job["steps"] if "pytest" in s.get("run", "")]
    assert suite["env"]["REQUIRE_POSTGRES"] == "1" and "TEST_PG_DSN" in suite["env"]
    # The tests that reach PostgreSQL run once more on the newest server version.
    assert again["env"] == {"TOTESYS_PG": "embedded", "REQUIRE_POSTGRES": "1"}
    assert "-m postgres" in again["run"]


def test_deploy_assumes_a_role_by_oidc_with_no_stored_keys():
    text = (ROOT / ".github/workflows/deploy.yml").read_text()
    deploy = yaml.safe_load(text)
    job = deploy["jobs"]["deploy"]
    assert job["needs"] == "ci"
    assert job["permissions"]["id-token"] == "write"
    [creds] = [
        s
        for s in job["steps"]
        if s.get("uses", "").startswith("aws-actions/configure-aws-credentials")
    ]
    assert "role-to-assume" in creds["with"]
    assert "aws-access-key-id" not in text and "secrets." not in text
    assert any(
        "cdk deploy" in s.get("run", "") and "--require-approval never" in s["run"]
        for s in job["steps"]
    )
    # `on:` parses as True in YAML 1.1.
    triggers = deploy[True]
    assert triggers["push"]["branches"] == ["main"] and triggers["push"]["tags"] == ["v*"]


def test_cdk_json_sets_every_flag_a_new_cdk_init_app_sets():
    """aws-cdk-lib's recommended-feature-flags.json (what `cdk init` writes), read from
    the installed package, every one set in cdk.json with its recommended value."""
    import tarfile

    import aws_cdk

    [bundle] = (Path(aws_cdk.__file__).parent / "_jsii").glob("aws-cdk-lib@*.jsii.tgz")
    with tarfile.open(bundle) as tar:
        member = tar.extractfile("package/recommended-feature-flags.json")
        assert member is not None
        recommended = json.loads(member.read())
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    assert len(recommended) > 80
    assert {k: context.get(k) for k in recommended} == recommended
