import json

import psycopg
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


def test_a_no_break_space_does_not_end_an_unquoted_password() -> None:
    """libpq ends a key=value password at ASCII whitespace only, so a no-break space is
    inside it: the server's echo of the part after it must be masked too (found by the
    property test in tests/integration/test_secrets_never_leave.py)."""
    from pipeline.redaction import register_dsn

    register_dsn("host=127.0.0.1 user=etl password=Zq0000\xa0NbspTail= dbname=totesys")
    echoed = 'password authentication failed for user "etl": got "Zq0000\xa0NbspTail="'
    assert "NbspTail" not in redact(echoed)
    assert "NbspTail" not in redact("password=Zq0000\xa0NbspTail= dbname=x")


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


# -- secret shapes (Secrets Manager and RDS in moto) -------------------------------------
@pytest.fixture
def aws(moto_server: str):
    import boto3
    from moto.moto_api._internal.models import moto_api_backend

    from pipeline import credentials

    moto_api_backend.reset()
    credentials.clear_secret_cache()
    yield boto3
    credentials.clear_secret_cache()


def put_secret(aws, name: str, value: dict) -> str:
    client = aws.client("secretsmanager")
    arn = client.create_secret(Name=name, SecretString=json.dumps(value))["ARN"]
    return arn


def fields(dsn: str) -> dict:
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(dsn)


def test_the_full_rds_shape_is_a_dsn(aws):
    arn = put_secret(
        aws,
        "totesys-etl/totesys",
        {
            "host": "db.internal",
            "port": 5433,
            "username": "etl",
            "password": "pw-1",
            "database": "totesys",
        },
    )
    assert fields(resolve_dsn(SOURCE, Settings(source_secret_arn=arn))) == {
        "host": "db.internal",
        "port": "5433",
        "user": "etl",
        "password": "pw-1",
        "dbname": "totesys",
    }


def test_an_rds_managed_secret_takes_host_port_and_database_from_the_settings(aws):
    """`rds!db-...` secrets hold only username and password; the Lambda gets the rest as
    TOTESYS_DB_HOST / TOTESYS_DB_NAME (read into the settings)."""
    arn = put_secret(aws, "rds!db-0a1b2c3d", {"username": "postgres", "password": "pw-2"})
    settings = Settings.from_env(
        {
            "TOTESYS_SECRET_ARN": arn,
            "TOTESYS_DB_HOST": "totesys.abc.eu-west-2.rds.amazonaws.com",
            "TOTESYS_DB_NAME": "totesys",
        }
    )
    assert fields(resolve_dsn(SOURCE, settings)) == {
        "host": "totesys.abc.eu-west-2.rds.amazonaws.com",
        "port": "5432",
        "user": "postgres",
        "password": "pw-2",
        "dbname": "totesys",
    }


def test_an_rds_managed_secret_reads_the_endpoint_of_the_named_instance(aws):
    aws.client("rds").create_db_instance(
        DBInstanceIdentifier="totesys-prod",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        DBName="totesys",
        MasterUsername="postgres",
        MasterUserPassword="not-used-here",
        AllocatedStorage=20,
    )
    arn = put_secret(aws, "rds!db-0e9f8a7b", {"username": "postgres", "password": "pw-3"})
    settings = Settings(source_secret_arn=arn, source_db_instance="totesys-prod")
    got = fields(resolve_dsn(SOURCE, settings))
    endpoint = aws.client("rds").describe_db_instances(DBInstanceIdentifier="totesys-prod")[
        "DBInstances"
    ][0]["Endpoint"]
    assert (got["host"], got["port"], got["dbname"]) == (
        endpoint["Address"],
        str(endpoint["Port"]),
        "totesys",
    )
    assert (got["user"], got["password"]) == ("postgres", "pw-3")


def test_an_unknown_instance_is_a_configuration_error_naming_it(aws):
    arn = put_secret(aws, "rds!db-11112222", {"username": "postgres", "password": "pw-4"})
    settings = Settings(source_secret_arn=arn, source_db_instance="no-such-db")
    with pytest.raises(ConfigurationError, match="no-such-db"):
        resolve_dsn(SOURCE, settings)


def test_a_secret_without_host_says_which_settings_supply_it(aws):
    arn = put_secret(aws, "rds!db-33334444", {"username": "postgres", "password": "pw-5"})
    with pytest.raises(ConfigurationError, match="TOTESYS_DB_HOST") as raised:
        resolve_dsn(SOURCE, Settings(source_secret_arn=arn))
    assert "sourceHost" in str(raised.value) and "pw-5" not in str(raised.value)


def test_a_setting_wins_over_the_secrets_own_field(aws):
    from pipeline.credentials import WAREHOUSE

    arn = put_secret(
        aws,
        "totesys-etl/warehouse",
        {"host": "old.internal", "port": 5432, "username": "loader", "password": "pw-6"},
    )
    settings = Settings.from_env({"WAREHOUSE_SECRET_ARN": arn, "WAREHOUSE_DB_PORT": "6543"})
    got = fields(resolve_dsn(WAREHOUSE, settings))
    assert (got["host"], got["port"], got["user"]) == ("old.internal", "6543", "loader")


def test_a_port_setting_outside_the_tcp_range_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="TOTESYS_DB_PORT"):
        Settings.from_env({"TOTESYS_DB_PORT": "70000"})


@pytest.mark.postgres
def test_a_rotated_rds_managed_secret_is_fetched_again_with_the_same_endpoint(aws, pg_server):
    """An RDS-managed secret (username and password only, the endpoint from the settings)
    is rotated while its old value is cached: the failed login fetches it again at once
    (`Database.refetched`) and the DSN built from it keeps the endpoint the settings give."""
    from psycopg.conninfo import conninfo_to_dict

    from pipeline.credentials import WAREHOUSE, connect, resolve

    admin = conninfo_to_dict(pg_server)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute("CREATE ROLE rotated_user LOGIN PASSWORD 'old-pw'")
    try:
        arn = put_secret(aws, "rds!db-rotating", {"username": "rotated_user", "password": "old-pw"})
        settings = Settings(
            warehouse_secret_arn=arn,
            warehouse_db_host=str(admin.get("host") or "localhost"),
            warehouse_db_port=int(admin.get("port") or 5432),
            warehouse_db_name=str(admin.get("dbname") or "postgres"),
        )
        connect(resolve(WAREHOUSE, settings)).close()
        with psycopg.connect(pg_server, autocommit=True) as conn:  # the rotation
            conn.execute("ALTER ROLE rotated_user PASSWORD 'new-pw'")
        aws.client("secretsmanager").put_secret_value(
            SecretId=arn,
            SecretString=json.dumps({"username": "rotated_user", "password": "new-pw"}),
        )
        stale = resolve(WAREHOUSE, settings)
        assert stale.cached and conninfo_to_dict(stale.dsn)["password"] == "old-pw"
        with connect(stale) as conn:  # fetched again, same endpoint, new password
            assert conn.info.user == "rotated_user" and conn.info.port == settings.warehouse_db_port
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute("DROP ROLE rotated_user")
