import pytest

from pipeline.credentials import SOURCE, describe, redact, resolve_dsn
from pipeline.errors import ConfigurationError


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://etl:s3cr3t-pw@db.example:5432/totesys",
        "host=db user=etl password=s3cr3t-pw dbname=totesys",
        "host=db user=etl password='s3cr3t-pw' dbname=totesys",
    ],
)
def test_redact_removes_passwords(text: str) -> None:
    assert "s3cr3t-pw" not in redact(text)


def test_redact_removes_literal_secrets() -> None:
    assert redact("failed for hunter2 somewhere", "hunter2") == "failed for *** somewhere"


def test_describe_never_shows_the_password() -> None:
    assert describe("postgresql://etl:pw123@db:5433/totesys") == "etl@db:5433/totesys"


def test_resolve_dsn_prefers_explicit_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOTESYS_DSN", "host=env")
    assert resolve_dsn(SOURCE, "host=explicit") == "host=explicit"
    assert resolve_dsn(SOURCE) == "host=env"


def test_resolve_dsn_without_configuration_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TOTESYS_DSN", raising=False)
    monkeypatch.delenv("TOTESYS_SECRET_ARN", raising=False)
    with pytest.raises(ConfigurationError, match="TOTESYS_DSN"):
        resolve_dsn(SOURCE)
