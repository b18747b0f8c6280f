"""The settings object: defaults, the environment, validation, and the generated docs table."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings, markdown_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "SETTINGS.md"


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.extract_lag == timedelta(minutes=15) and settings.extract_max_rows == 2_000_000


def test_variables_override_defaults_and_empty_means_unset() -> None:
    env = {
        "INGEST_URL": "s3://bucket/ingestion",
        "EXTRACT_LAG_SECONDS": "60",
        "EXTRACT_MAX_ROWS": "5000",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "TRANSFORM_MAX_ROWS": "",
    }
    settings = Settings.from_env(env)
    assert settings.ingest_url == "s3://bucket/ingestion"
    assert settings.extract_lag == timedelta(seconds=60) and settings.extract_max_rows == 5000
    assert settings.s3_endpoint == "http://127.0.0.1:5000"
    assert settings.transform_max_rows == Settings().transform_max_rows


def test_the_more_specific_variable_wins() -> None:
    env = {"AWS_ENDPOINT_URL": "http://generic", "AWS_ENDPOINT_URL_S3": "http://s3-only"}
    assert Settings.from_env(env).s3_endpoint == "http://s3-only"


@pytest.mark.parametrize(
    ("name", "value"),
    [("EXTRACT_MAX_ROWS", "0"), ("EXTRACT_PART_ROWS", "many"), ("EXTRACT_LAG_SECONDS", "-1")],
)
def test_a_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_required_settings_must_come_from_the_environment() -> None:
    with pytest.raises(ConfigurationError, match="PROCESSED_URL"):
        Settings.from_env({"INGEST_URL": "s3://b/i"}, required=("ingest_url", "processed_url"))


def test_replace_ignores_options_that_were_not_given() -> None:
    base = Settings(ingest_url="a")
    assert base.replace(ingest_url=None, extract_workers=2) == Settings(
        ingest_url="a", extract_workers=2
    )


def test_the_docs_table_is_generated_from_the_fields() -> None:
    assert markdown_table() in DOCS.read_text(), "run `python -m pipeline.settings` into docs"


def test_reconcile_cadence_and_delete_share_parse_and_validate() -> None:
    from pipeline.settings import Cadence

    assert Settings().reconcile_every == Cadence("runs", 1)
    assert Settings.from_env({"RECONCILE_EVERY": "6h"}).reconcile_every == Cadence("hours", 6)
    assert Settings.from_env({"RECONCILE_EVERY": "3"}).reconcile_every == Cadence("runs", 3)
    assert Settings.from_env({"RECONCILE_EVERY": "off"}).reconcile_every.kind == "off"
    assert str(Cadence("hours", 6)) == "6h"
    for bad in ({"RECONCILE_EVERY": "-2"}, {"RECONCILE_MAX_DELETE_SHARE": "1.5"}):
        with pytest.raises(ConfigurationError):
            Settings.from_env(bad)
    assert (
        Settings.from_env({"RECONCILE_MAX_DELETE_SHARE": "0.2"}).reconcile_max_delete_share == 0.2
    )


def test_a_folder_holds_both_zones_side_by_side(tmp_path: Path) -> None:
    settings = Settings.in_folder(tmp_path / "lake", source_dsn="postgresql://h/db")
    assert settings.ingest_url == str(tmp_path / "lake" / "ingestion")
    assert settings.processed_url == str(tmp_path / "lake" / "processed")
    assert settings.source_dsn == "postgresql://h/db"
