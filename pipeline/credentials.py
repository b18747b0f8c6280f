"""Database credentials: a DSN locally, a Secrets Manager secret in AWS.

Secrets are fetched once per process (one Lambda container) and cached. Nothing here
ever puts a password into a log line or an exception message: `redact` scrubs any text
that might carry one before it leaves this module.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.errors import AuthenticationError, ConfigurationError, SourceUnavailableError
from pipeline.settings import Settings

_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_AUTH_SQLSTATES = {"28000", "28P01"}
# libpq refuses before the server says anything when the server wants a password and the
# DSN has none: no SQLSTATE, and retrying cannot help.
_MISSING_PASSWORD_MESSAGE = "no password supplied"  # noqa: S105 (libpq's words, not a secret)


@dataclass(frozen=True)
class DatabaseRole:
    """Which `Settings` fields hold one database's credentials (`source` = totesys)."""

    name: str
    dsn_field: str
    secret_field: str

    def setting_names(self) -> tuple[str, str]:
        """The environment variables behind the two fields (for messages)."""
        fields = Settings.__dataclass_fields__
        return (
            fields[self.dsn_field].metadata["env"][0],
            fields[self.secret_field].metadata["env"][0],
        )


SOURCE = DatabaseRole("source", "source_dsn", "source_secret_arn")
WAREHOUSE = DatabaseRole("warehouse", "warehouse_dsn", "warehouse_secret_arn")


def redact(text: str, *secrets: str | None) -> str:
    """Remove passwords from `text`: URL and key=value forms, plus any literal secret given."""
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _password_of(dsn: str) -> str | None:
    try:
        return conninfo_to_dict(dsn).get("password")  # type: ignore[return-value]
    except psycopg.ProgrammingError:
        return None


@functools.cache
def _secret_dsn(secret_arn: str) -> str:
    """Fetch a Secrets Manager secret (RDS JSON shape) once per process and build a DSN."""
    import boto3

    value = boto3.client("secretsmanager").get_secret_value(SecretId=secret_arn)["SecretString"]
    try:
        data = json.loads(value)
        return make_conninfo(
            host=data["host"],
            port=str(data.get("port", 5432)),
            user=data["username"],
            password=data["password"],
            dbname=data.get("dbname") or data.get("database") or "postgres",
        )
    except (ValueError, KeyError) as exc:
        raise ConfigurationError(
            f"secret {secret_arn} must be JSON with host, port, username, password and dbname "
            f"(missing or malformed: {type(exc).__name__} {exc.args[0] if exc.args else ''})"
        ) from None


def resolve_dsn(role: DatabaseRole, settings: Settings) -> str:
    """The DSN for `role`: its DSN setting, else the DSN built from its secret."""
    if dsn := getattr(settings, role.dsn_field):
        return str(dsn)
    if arn := getattr(settings, role.secret_field):
        return _secret_dsn(str(arn))
    dsn_env, secret_env = role.setting_names()
    raise ConfigurationError(
        f"no {role.name} database configured: pass a DSN, or set {dsn_env} "
        f"(local) or {secret_env} (a Secrets Manager secret ARN)"
    )


def describe(dsn: str) -> str:
    """A printable `user@host:port/dbname` for messages (never the password)."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    host = d.get("host") or "localhost"
    return f"{d.get('user') or ''}@{host}:{d.get('port') or 5432}/{d.get('dbname') or ''}"


def connect(dsn: str, *, what: str = "database", **kwargs: object) -> psycopg.Connection:
    """Open a psycopg connection, turning failures into typed, password-free errors.

    Authentication failures are permanent (retrying only locks the account); every other
    connection failure is transient and safe to retry with backoff.
    """
    kwargs.setdefault("connect_timeout", 10)
    try:
        return psycopg.connect(dsn, **kwargs)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        message = redact(str(exc).strip(), _password_of(dsn))
        where = describe(dsn)
        if (
            getattr(exc, "sqlstate", None) in _AUTH_SQLSTATES
            or "authentication" in message
            or _MISSING_PASSWORD_MESSAGE in message
        ):
            raise AuthenticationError(
                f"{what} {where}: authentication failed ({message.splitlines()[-1]}); "
                "check the user name and password in the DSN or secret"
            ) from None
        raise SourceUnavailableError(
            f"{what} {where} is unreachable: {message.splitlines()[-1] if message else exc}"
        ) from None
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(
            f"{what}: malformed DSN ({redact(str(exc), _password_of(dsn))})"
        ) from None
