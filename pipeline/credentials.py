"""Database credentials: a DSN locally, a Secrets Manager secret in AWS.

A secret comes in either shape people use: the full RDS shape (host, port, username,
password, dbname) or an RDS-managed master secret (`rds!db-...`: username and password
only). What the secret lacks comes from the settings (`source_db_host`, `_port`, `_name`,
or the RDS instance or cluster named by `source_db_instance` / `_cluster`, whose endpoint,
port and database name are read once per process; the same for `warehouse_db_*`); a value
given in the settings takes precedence over the secret's own field. `_dsn_from_secret` is
the one place a secret's JSON becomes a DSN.

Secrets are fetched through Powertools' `SecretsProvider`, whose cache keeps a value for
`Settings.secret_max_age` (so a warm Lambda does not call Secrets Manager per table). When
a password from the cache fails to authenticate, the secret is fetched again at once and,
if it changed (a rotation), the connection is tried once more: a rotation heals on the
next run, without waiting for a cold start or the cache to expire.

Nothing here ever puts a password into a message. A DSN is checked before libpq sees it
(`check_dsn`): one libpq would split at the wrong `@` or `/` (an unencoded password) is
rejected, so libpq never prints part of a password as a host or a port. Every password is
registered with `pipeline.redaction`, whose `redact` every output path applies, and
messages describe a database as `user@host:port/dbname` plus the setting it came from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.errors import (
    AuthenticationError,
    ConfigurationError,
    InsufficientPrivilegeError,
    PipelineError,
    SecretUnavailableError,
    SourceUnavailableError,
    TransientError,
    WarehouseUnavailableError,
)
from pipeline.redaction import redact, register_dsn, register_secret
from pipeline.settings import Settings, env_name

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

__all__ = [
    "SOURCE",
    "WAREHOUSE",
    "Database",
    "DatabaseRole",
    "Endpoint",
    "as_database",
    "check_dsn",
    "check_dsns",
    "clear_secret_cache",
    "connect",
    "connection_error",
    "describe",
    "redact",
    "resolve",
    "resolve_dsn",
]

log = logging.getLogger(__name__)

_URL = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://")
_NEEDS_ENCODING = re.compile(r"[@/\s]|%(?![0-9A-Fa-f]{2})")
_SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
_AUTH_MARKERS = (
    "authentication failed",
    "no password supplied",
    "pg_hba.conf",
    "password authentication",
)
_BAD_SETTING_MARKERS = ("invalid ", "unsupported", "ssl was required", "does not support ssl")
_RETRYABLE_SECRET_CODES = {
    "ThrottlingException",
    "InternalServiceError",
    "InternalServiceErrorException",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
}
_ENCODING_HINT = (
    "percent-encode the user name and password of a postgresql:// URL (% as %25, @ as %40, "
    "/ as %2F, a space as %20), or use the key=value form with the password in single "
    "quotes (password='...', with \\' and \\\\ for a quote and a backslash)"
)


@dataclass(frozen=True)
class Endpoint:
    """Where a database is, per the settings (`<role>_db_<field>`): direct values and/or an
    RDS identifier whose endpoint is read at run time."""

    host: str | None = None
    port: int | None = None
    name: str | None = None
    instance: str | None = None
    cluster: str | None = None


@dataclass(frozen=True)
class DatabaseRole:
    """Which `Settings` fields hold one database's credentials, and its transient error."""

    name: str  # "source" (totesys) or "warehouse"
    dsn_field: str
    secret_field: str
    unavailable: type[TransientError]

    def setting_names(self) -> tuple[str, str]:
        """The environment variables behind the two fields (for messages)."""
        return env_name(self.dsn_field), env_name(self.secret_field)

    def endpoint(self, settings: Settings) -> Endpoint:
        """What the settings say about where this database is (`<name>_db_*` fields)."""
        prefix = f"{self.name}_db_"
        return Endpoint(
            **{f.name: getattr(settings, prefix + f.name) for f in dataclasses.fields(Endpoint)}
        )

    def endpoint_env(self, key: str) -> str:
        """The environment variable of one `<name>_db_<key>` field (for messages)."""
        return env_name(f"{self.name}_db_{key}")


SOURCE = DatabaseRole("source", "source_dsn", "source_secret_arn", SourceUnavailableError)
WAREHOUSE = DatabaseRole(
    "warehouse", "warehouse_dsn", "warehouse_secret_arn", WarehouseUnavailableError
)


@dataclass(frozen=True)
class Database:
    """One database's checked credentials and where they came from (for messages)."""

    role: DatabaseRole
    dsn: str = field(repr=False)
    origin: str  # the CLI flag, the environment variable or "secret <arn>"
    secret_arn: str | None = None
    max_age_s: int = 0
    cached: bool = False  # the secret came from the cache, not from Secrets Manager now
    endpoint: Endpoint = Endpoint()  # what the settings add to the secret (module docstring)

    @property
    def where(self) -> str:
        return f"{self.role.name} database {describe(self.dsn)} (from {self.origin})"

    def refetched(self) -> Database | None:
        """After an authentication failure: the secret fetched anew, if the value used came
        from the cache and has changed since (a rotation); else None (fail as is)."""
        if self.secret_arn is None or not self.cached:
            return None
        dsn, _ = _secret_dsn(self.role, self.secret_arn, self.endpoint, self.max_age_s, force=True)
        if dsn == self.dsn:
            return None
        log.warning(
            "cached secret failed to authenticate and has changed: retrying with the new value",
            extra={"database": self.role.name, "secret_arn": self.secret_arn},
        )
        return dataclasses.replace(self, dsn=dsn, cached=False)


# -- DSNs ----------------------------------------------------------------------------------
def check_dsn(dsn: str, what: str) -> None:
    """Reject a DSN that libpq would misread or that is malformed, before anything uses it.

    `what` names it in the message ("the source DSN (from --source-dsn)"). The message
    never quotes the DSN or libpq's complaint about it (both may hold the password).
    """
    register_dsn(dsn)
    url = _URL.match(dsn) is not None
    user = password = None
    if url:
        rest = dsn.split("://", 1)[1]
        if "@" in rest:
            userinfo = rest.rsplit("@", 1)[0]
            if _NEEDS_ENCODING.search(userinfo):
                raise ConfigurationError(
                    f"{what} is not a valid connection URL: its user name or password holds "
                    f"a character that must be percent-encoded; {_ENCODING_HINT}"
                )
            name, colon, secret = userinfo.partition(":")
            user, password = unquote(name), (unquote(secret) if colon else None)
    try:
        parsed = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        form = "URL" if url else "key=value string"
        raise ConfigurationError(
            f"{what} is not a valid PostgreSQL connection {form}; {_ENCODING_HINT}"
        ) from None
    if (
        url
        and user is not None
        and (parsed.get("user"), parsed.get("password"))
        != (
            user or None,
            password,
        )
    ):
        raise ConfigurationError(
            f"{what} is ambiguous: libpq would read its user name or password differently; "
            f"{_ENCODING_HINT}"
        )
    for port in str(parsed.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigurationError(f"{what}: port {port!r} is not a port number (1-65535)")
    sslmode = parsed.get("sslmode")
    if sslmode and sslmode not in _SSLMODES:
        raise ConfigurationError(
            f"{what}: sslmode {sslmode!r} is not one of {', '.join(sorted(_SSLMODES))}"
        )


def describe(dsn: str) -> str:
    """A printable `user@host:port/dbname` for messages (never the password)."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    host = d.get("host") or "localhost"
    return redact(f"{d.get('user') or ''}@{host}:{d.get('port') or 5432}/{d.get('dbname') or ''}")


# -- resolving -----------------------------------------------------------------------------
def resolve(role: DatabaseRole, settings: Settings) -> Database:
    """`role`'s credentials: its DSN setting (checked), else the DSN built from its secret."""
    if dsn := getattr(settings, role.dsn_field):
        origin = settings.origin(role.dsn_field)
        check_dsn(str(dsn), f"the {role.name} DSN (from {origin})")
        return Database(role, str(dsn), origin)
    if arn := getattr(settings, role.secret_field):
        max_age = int(settings.secret_max_age.total_seconds())
        endpoint = role.endpoint(settings)
        dsn, cached = _secret_dsn(role, str(arn), endpoint, max_age)
        return Database(role, dsn, f"secret {arn}", str(arn), max_age, cached, endpoint)
    dsn_env, secret_env = role.setting_names()
    raise ConfigurationError(
        f"no {role.name} database configured: pass a DSN, or set {dsn_env} "
        f"(local) or {secret_env} (a Secrets Manager secret ARN)"
    )


def check_dsns(settings: Settings) -> None:
    """Check every DSN setting now (an entry point's fail-fast, before anything is written)."""
    for role in (SOURCE, WAREHOUSE):
        if dsn := getattr(settings, role.dsn_field):
            check_dsn(str(dsn), f"the {role.name} DSN (from {settings.origin(role.dsn_field)})")


def resolve_dsn(role: DatabaseRole, settings: Settings) -> str:
    """The DSN for `role` (see `resolve`)."""
    return resolve(role, settings).dsn


_provider: SecretsProvider | None = None


def _secrets() -> SecretsProvider:
    global _provider
    if _provider is None:
        from aws_lambda_powertools.utilities.parameters import SecretsProvider

        _provider = SecretsProvider()
    return _provider


def clear_secret_cache() -> None:
    """Forget every cached secret and RDS endpoint (tests; a process that knows they
    changed). A rotated password needs no call: see `Database.refetched`."""
    global _provider
    _provider = None
    _rds_endpoint.cache_clear()


def _secret_dsn(
    role: DatabaseRole, arn: str, endpoint: Endpoint, max_age_s: int, *, force: bool = False
) -> tuple[str, bool]:
    """The DSN built from secret `arn` (plus `endpoint`) and whether it came from the cache."""
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    provider = _secrets()
    # The key Powertools' own `get` looks up (`_build_cache_key` is how it builds it).
    cached = not force and provider.has_not_expired_in_cache(provider._build_cache_key(arn))
    try:
        value = provider.get(arn, max_age=max_age_s, force_fetch=force)
    except GetParameterError as exc:
        raise _secret_error(arn, exc.__cause__ or exc) from None
    return _dsn_from_secret(role, arn, str(value), endpoint), cached


def _secret_error(arn: str, exc: BaseException) -> PipelineError:
    """Secrets Manager's answer as a typed error: retry its outages, not a wrong ARN."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _RETRYABLE_SECRET_CODES or status >= 500 or status == 429:
            return SecretUnavailableError(f"secret {arn}: Secrets Manager answered {code}")
        return ConfigurationError(
            f"secret {arn}: {code or 'error'} ({redact(str(exc))}); check the ARN and that "
            "this function may read the secret"
        )
    if isinstance(exc, BotoCoreError):
        return SecretUnavailableError(f"secret {arn}: Secrets Manager unreachable: {exc}")
    return ConfigurationError(f"secret {arn}: {type(exc).__name__}: {redact(str(exc))}")


def _dsn_from_secret(role: DatabaseRole, arn: str, value: str, endpoint: Endpoint) -> str:
    """A secret's JSON as a DSN: username and password from the secret; host, port and
    dbname from the secret, then the RDS instance or cluster, then explicit settings (the
    last one given wins; module docstring)."""
    try:
        data = json.loads(value)
        user, password = data["username"], data["password"]
        register_secret(str(password or ""))
        secret_fields = {
            "host": data.get("host"),
            "port": data.get("port"),
            "dbname": data.get("dbname") or data.get("database"),
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        missing = f" {exc.args[0]!r}" if isinstance(exc, KeyError) else ""
        raise ConfigurationError(
            f"secret {arn} must be JSON with at least username and password, and host, port "
            f"and dbname unless the settings give them (missing or malformed:"
            f"{missing or ' ' + type(exc).__name__})"
        ) from None
    fields = {k: v for k, v in secret_fields.items() if v not in (None, "")}
    fields.update(_rds_endpoint(role, endpoint.instance, endpoint.cluster))
    explicit = {"host": endpoint.host, "port": endpoint.port, "dbname": endpoint.name}
    fields.update({k: v for k, v in explicit.items() if v})
    if "host" not in fields:
        raise ConfigurationError(
            f"{role.name} database: secret {arn} has no host (an RDS-managed secret holds "
            f"only username and password): set {role.endpoint_env('host')}, or "
            f"{role.endpoint_env('instance')} / {role.endpoint_env('cluster')} (CDK context "
            f"{role.name}Host, {role.name}DbInstance or {role.name}DbCluster, docs/DEPLOY.md)"
        )
    try:
        dsn = make_conninfo(
            host=str(fields["host"]),
            port=str(fields.get("port", 5432)),
            user=str(user),
            password=str(password),
            dbname=str(fields.get("dbname", "postgres")),
        )
    except psycopg.ProgrammingError:
        raise ConfigurationError(f"secret {arn}: its fields do not form a valid DSN") from None
    register_dsn(dsn)
    return dsn


@functools.cache
def _rds_endpoint(role: DatabaseRole, instance: str | None, cluster: str | None) -> dict[str, str]:
    """Host, port and database name of the RDS instance or cluster the settings name (read
    once per process: an endpoint outlives failovers and password rotations)."""
    if not (instance or cluster):
        return {}
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    rds = boto3.client("rds")
    what = f"instance {instance}" if instance else f"cluster {cluster}"
    try:
        if instance:
            db = rds.describe_db_instances(DBInstanceIdentifier=instance)["DBInstances"][0]
            address = db.get("Endpoint") or {}
            found = {"host": address.get("Address"), "port": address.get("Port")}
            name = db.get("DBName")
        else:
            db = rds.describe_db_clusters(DBClusterIdentifier=cluster)["DBClusters"][0]
            found = {"host": db.get("Endpoint"), "port": db.get("Port")}
            name = db.get("DatabaseName")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if "NotFound" in code or "AccessDenied" in code:  # retrying cannot fix these
            raise ConfigurationError(
                f"{role.name} database: RDS {what}: {code}; check the identifier in the "
                "CDK context and that the function may describe it"
            ) from None
        raise role.unavailable(
            f"{role.name} database: reading RDS {what} failed ({code}: {redact(str(exc))})"
        ) from None
    except BotoCoreError as exc:
        raise role.unavailable(
            f"{role.name} database: reading RDS {what} failed ({type(exc).__name__}: {exc})"
        ) from None
    if name:
        found["dbname"] = name
    return {k: str(v) for k, v in found.items() if v}


# -- connecting ----------------------------------------------------------------------------
def connection_error(db: Database, text: str, *, context: str = "") -> PipelineError:
    """A libpq connection failure as a typed error naming the database and its setting.

    Bad credentials, a missing database and an invalid setting are permanent (retrying
    cannot help, and retried logins lock accounts); anything else is the role's transient
    error (`SourceUnavailableError`, `WarehouseUnavailableError`).
    """
    low = text.lower()  # classified on the raw text, printed redacted
    text = redact(text.strip()).replace("\n\t", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[0] if lines else "no details"
    where = f"{context}: {db.where}" if context else db.where
    # A refused CONNECT arrives before any result, so without a SQLSTATE: by its text.
    if "does not have connect privilege" in low:
        return InsufficientPrivilegeError(
            f"{where}: the user lacks CONNECT on the database; grant it (docs/DEPLOY.md, "
            "Warehouse user)"
        )
    if any(m in low for m in _AUTH_MARKERS) or ("role " in low and "does not exist" in low):
        return AuthenticationError(
            f"{where}: authentication failed ({detail}); check the user name and password "
            f"in {db.origin}"
        )
    if "database " in low and "does not exist" in low:
        return ConfigurationError(
            f"{where}: the database does not exist ({detail}); check the database name in "
            f"{db.origin}"
        )
    if any(m in low for m in _BAD_SETTING_MARKERS):
        return ConfigurationError(f"{where}: {detail}; fix the setting in {db.origin}")
    return db.role.unavailable(f"{where} is unreachable: {detail}")


def as_database(target: Database | str, what: str = "source") -> Database:
    """`target` itself, or a DSN given directly (checked) as the `what` database."""
    if isinstance(target, Database):
        return target
    role = WAREHOUSE if what == "warehouse" else SOURCE
    check_dsn(target, f"the {what} DSN")
    return Database(role, target, "the DSN given")


def connect(target: Database | str, *, what: str = "database", **kwargs: Any) -> psycopg.Connection:
    """Open a psycopg connection, turning failures into typed, password-free errors
    (`connection_error`); a cached secret that fails to authenticate is refetched once."""
    db = as_database(target, what)
    kwargs.setdefault("connect_timeout", 10)
    try:
        return _connect_once(db, kwargs)
    except AuthenticationError:
        fresh = db.refetched()
        if fresh is None:
            raise
        return _connect_once(fresh, kwargs)


def _connect_once(db: Database, kwargs: dict[str, Any]) -> psycopg.Connection:
    try:
        return psycopg.connect(db.dsn, **kwargs)
    except psycopg.OperationalError as exc:
        raise connection_error(db, str(exc)) from None
    except psycopg.ProgrammingError:
        raise ConfigurationError(
            f"{db.where}: not a valid connection string; {_ENCODING_HINT}"
        ) from None
