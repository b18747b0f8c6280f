import pytest

from pipeline.credentials import SOURCE, describe, redact, resolve_dsn
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings


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


def test_resolve_dsn_prefers_the_dsn_setting_over_the_secret() -> None:
    settings = Settings(source_dsn="host=explicit", source_secret_arn="arn:never-fetched")
    assert resolve_dsn(SOURCE, settings) == "host=explicit"


def test_resolve_dsn_without_configuration_says_what_to_set() -> None:
    with pytest.raises(ConfigurationError, match="TOTESYS_DSN"):
        resolve_dsn(SOURCE, Settings())
