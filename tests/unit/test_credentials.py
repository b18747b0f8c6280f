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


# -- redaction by shape and by value --------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://u:p%sw0rdLeakMe@h:1/db failed", "sw0rdLeakMe"),
        ("postgresql://u:p@ssLeakMe@h:1/db failed", "ssLeakMe"),
        ("postgresql://u:a/bLeakMe@h/db", "bLeakMe"),
        ("conn 'host=h password=\\'qu\\\\oteLeakMe\\' dbname=d'", "oteLeakMe"),
        ('host=h password="dqLeakMe" dbname=d', "dqLeakMe"),
        ("PASSWORD = upperLeakMe", "upperLeakMe"),
    ],
)
def test_redact_masks_passwords_that_do_not_parse(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_registered_dsn_pieces_are_redacted_wherever_they_appear() -> None:
    from pipeline.redaction import register_dsn

    register_dsn("postgresql://postgres:p@ssPieceLeak@127.0.0.1:1/totesys")
    # libpq splits at the first @: the rest of the password shows up as a "host"
    assert "PieceLeak" not in redact("failed to resolve host 'ssPieceLeak@127.0.0.1'")


def test_scrub_keeps_json_valid_whatever_the_password() -> None:
    import json

    from pipeline.redaction import register_secret, scrub

    register_secret('q"uo{te}')
    doc = scrub({"error": 'got q"uo{te} back', "n": 1, "list": ['q"uo{te}']})
    assert json.loads(json.dumps(doc)) == {"error": "got *** back", "n": 1, "list": ["***"]}


def test_settings_repr_hides_the_dsns() -> None:
    settings = Settings(source_dsn="host=h password=ReprLeak1", warehouse_dsn="host=w")
    assert "ReprLeak1" not in repr(settings) and "host=w" not in repr(settings)


# -- DSNs are checked before libpq sees them --------------------------------------------------
@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres:p%sw0rd@127.0.0.1:5432/totesys",  # % not followed by hex
        "postgresql://postgres:p@ss@127.0.0.1:5432/totesys",  # an unencoded @
        "postgresql://postgres:a/b@127.0.0.1:5432/totesys",  # an unencoded /
        "postgresql://postgres:a b@127.0.0.1/totesys",  # a space
        "host=h password=a b dbname=d",  # unquoted space in key=value
        "host=h password='unterminated dbname=d",
        "mysql://u:p@h/db",
    ],
)
def test_malformed_dsns_are_rejected_without_quoting_them(dsn: str) -> None:
    from pipeline.credentials import check_dsn

    with pytest.raises(ConfigurationError) as info:
        check_dsn(dsn, "the source DSN (from --source-dsn)")
    message = str(info.value)
    assert "--source-dsn" in message and "percent-encode" in message
    for part in ("sw0rd", "ss@", "a/b", ":a b", "unterminated", "p@h"):
        assert part not in message


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres:p%25sw0rd%40x%2Fy%20z@127.0.0.1:5432/totesys",
        "postgresql://postgres:a:b?c#d@127.0.0.1/totesys",  # libpq reads these as we do
        "postgresql://127.0.0.1/totesys",
        "host=h password='it\\'s a \\\\ pw' dbname=d",
        "",
    ],
)
def test_well_formed_dsns_pass(dsn: str) -> None:
    from pipeline.credentials import check_dsn

    check_dsn(dsn, "the DSN")


@pytest.mark.parametrize(
    ("dsn", "match"),
    [
        ("host=h port=abc dbname=d", "port 'abc'"),
        ("host=h port=70000 dbname=d", "port '70000'"),
        ("host=h sslmode=bogus dbname=d", "sslmode 'bogus'"),
    ],
)
def test_bad_port_or_sslmode_is_a_configuration_error(dsn: str, match: str) -> None:
    from pipeline.credentials import check_dsn

    with pytest.raises(ConfigurationError, match=match):
        check_dsn(dsn, "the warehouse DSN (from WAREHOUSE_DSN)")


# -- errors name the database, the cause and the setting used ------------------------------
def _db(role_name: str, origin: str):
    from pipeline.credentials import SOURCE, WAREHOUSE, Database

    role = SOURCE if role_name == "source" else WAREHOUSE
    return Database(role, "host=db.example port=5432 user=etl dbname=totesys", origin)


@pytest.mark.parametrize(
    ("text", "error", "cause"),
    [
        ('failed: FATAL:  password authentication failed for user "etl"', "AuthenticationError",
         "authentication failed"),
        ('failed: FATAL:  role "etl" does not exist', "AuthenticationError", "authentication"),
        ('failed: FATAL:  database "nosuch" does not exist', "ConfigurationError",
         "does not exist"),
        ('connection is bad: invalid sslmode value: "bogus"', "ConfigurationError", "sslmode"),
        ("failed: server does not support SSL, but SSL was required", "ConfigurationError", "SSL"),
        ("failed: Connection refused\n\tIs the server running on that host", "Unavailable",
         "unreachable"),
        ("failed: timeout expired", "Unavailable", "unreachable"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("role", ["source", "warehouse"])
def test_connection_errors_are_classified(text: str, error: str, cause: str, role: str) -> None:
    from pipeline.credentials import connection_error

    exc = connection_error(_db(role, "--warehouse-dsn"), text)
    expected = f"{role.capitalize()}UnavailableError" if error == "Unavailable" else error
    assert type(exc).__name__ == expected
    assert cause in str(exc) and f"{role} database" in str(exc)
    assert "--warehouse-dsn" in str(exc)


def test_the_message_names_the_setting_actually_used() -> None:
    from pipeline.credentials import SOURCE, resolve

    flag = Settings().with_flags(source_dsn="host=h dbname=d")
    env = Settings.from_env({"TOTESYS_DSN": "host=h dbname=d"})
    assert resolve(SOURCE, flag).origin == "--source-dsn"
    assert resolve(SOURCE, env).origin == "TOTESYS_DSN"
    assert "--source-dsn" in resolve(SOURCE, flag).where
