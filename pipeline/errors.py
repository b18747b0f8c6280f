"""Typed errors. Each names what failed (table, column, row) and says what to do next.

The class name is what Step Functions sees as the error name, so the state machine's
Retry/Catch rules match on these names: keep them stable.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error this package raises on purpose."""


class TransientError(PipelineError):
    """Worth retrying as is: the network, a server restart, a lock timeout."""


class PermanentError(PipelineError):
    """Retrying the same input gives the same failure: fix the cause first."""


class UnknownTableError(PermanentError):
    def __init__(self, name: str, valid: tuple[str, ...]) -> None:
        super().__init__(f"unknown totesys table {name!r}; valid tables: {', '.join(valid)}")
        self.table = name


class SourceUnavailableError(TransientError):
    """The database could not be reached (down, restarting, network)."""


class AuthenticationError(PermanentError):
    """Wrong user or password. Messages never contain the password."""


class ConfigurationError(PermanentError):
    """A setting is missing or malformed (DSN, secret, lake URL)."""


class SchemaDriftError(PermanentError):
    """The source table no longer matches the catalog (column dropped or retyped)."""

    def __init__(self, table: str, column: str, problem: str) -> None:
        super().__init__(
            f"schema drift in source table {table!r}, column {column!r}: {problem}. "
            f"Nothing was written for {table!r}; update pipeline/catalog.py (and the "
            "transform) to the new schema, or restore the column, then re-run this table."
        )
        self.table = table
        self.column = column


class DataQualityError(PermanentError):
    """Input that cannot be quarantined row by row (for example, a whole file is unusable)."""


class CorruptBatchError(PermanentError):
    """A lake file listed in a manifest is missing or unreadable."""


class LoadConflictError(TransientError):
    """Another load holds the warehouse lock; retry later."""
