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
    """The totesys (source) database could not be reached (down, restarting, network)."""


class WarehouseUnavailableError(TransientError):
    """The warehouse database could not be reached, or its connection broke mid-load."""


class SecretUnavailableError(TransientError):
    """Secrets Manager did not answer (throttling, a 5xx, the network)."""


class LakeUnavailableError(TransientError):
    """The lake's storage did not answer (S3 throttling or a 5xx, a timeout, a reset)."""


class AuthenticationError(PermanentError):
    """Wrong user or password. Messages never contain the password."""


class ConfigurationError(PermanentError):
    """A setting is missing or malformed (DSN, secret, lake URL, database name, port)."""


class InvalidInputError(ConfigurationError):
    """An entry point's argument (run id, table list, event field) is malformed.

    Raised before anything is read or written, so nothing needs cleaning up."""


class LakeStorageError(PermanentError):
    """The lake storage refused an operation: permission denied, a read-only file system, a missing
    bucket, a path under a file, a name too long, a full disk. The message names the key."""


class SchemaDriftError(PermanentError):
    """The source table no longer matches the catalog (column dropped, narrowed or retyped)."""

    def __init__(
        self,
        table: str,
        column: str,
        problem: str,
        *,
        old_type: str | None = None,
        new_type: str | None = None,
    ) -> None:
        super().__init__(
            f"schema drift in source table {table!r}, column {column!r}: {problem}. "
            f"Nothing was written for {table!r}; update pipeline/catalog.py (and the "
            "transform) to the new schema, or restore the column, then re-run this table."
        )
        self.table = table
        self.column = column
        self.old_type = old_type  # the catalog's type, as PostgreSQL spells it
        self.new_type = new_type  # the live source type (None: the column is gone)


class DataQualityError(PermanentError):
    """Input that cannot be quarantined row by row (for example, a whole file is unusable)."""


class CorruptBatchError(PermanentError):
    """A lake file listed in a manifest is missing, truncated or otherwise unreadable."""


def repair_hint(table: str) -> str:
    """The documented recovery of a broken ingestion batch (docs/OPERATIONS.md)."""
    return (
        f"run `totesys-etl reconcile --tables {table} --repair` (AWS: start an execution "
        f'with {{"tables": ["{table}"], "repair": true}}): it takes the broken batch back '
        "and extracts its window again; then run the pipeline again"
    )


def rederive_hint(run_id: str) -> str:
    """The documented recovery of a lost processed file (docs/OPERATIONS.md)."""
    return (
        f"run `totesys-etl transform --rederive {run_id}` (it writes that batch again from "
        "its recorded inputs), then run the load again"
    )


class LoadConflictError(TransientError):
    """Another load holds the warehouse lock; retry later."""


class AlreadySeededError(PermanentError):
    """`seed` found totesys tables in the target database and was not told to replace them."""


class NotSeededError(PermanentError):
    """`simulate` needs a seeded totesys database (run `totesys-etl seed` first)."""


class SimulatorInputError(PermanentError):
    """A simulator parameter is out of range (scale, days, start)."""


class TransformBusyError(TransientError):
    """Another transform holds the processed zone's lease; retry after it finishes."""

    def __init__(self, holder: str, until: str) -> None:
        super().__init__(
            f"another transform (run {holder!r}) holds the lease until {until}; retry later "
            "(a holder that died frees it within TRANSFORM_LEASE_SECONDS; "
            "`totesys-etl clear-lease` removes an expired one)"
        )
        self.holder = holder
        self.until = until


class MassDeleteError(PermanentError):
    """Reconciliation would tombstone more of a table's keys than allowed in one pass."""

    def __init__(self, table: str, deleted: int, held: int, share: float) -> None:
        super().__init__(
            f"table {table!r}: reconciliation found {deleted} of the {held} keys the lake "
            f"holds deleted in the source, more than {share:.0%} in one pass; nothing was "
            "recorded for the table. If the deletes are real, accept them with "
            f"`totesys-etl reconcile --tables {table} --allow-mass-delete` (AWS: start an "
            f'execution with {{"tables": ["{table}"], "allow_mass_delete": true}}); if not, '
            "check that the pipeline reads the right database"
        )
        self.table = table
        self.deleted = deleted
        self.held = held


class MigrationError(PermanentError):
    """The warehouse schema history does not match this code's migrations."""


class InsufficientPrivilegeError(PermanentError):
    """A database user lacks a privilege the step needs (the load, a migration, or just
    CONNECT): the message names each one and how to grant it (docs/DEPLOY.md)."""


class ReferentialIntegrityError(DataQualityError):
    """A fact row points at a dimension key that does not exist in the warehouse."""

    def __init__(self, table: str, column: str, key: str, referenced: str, batch: str) -> None:
        super().__init__(
            f"processed batch {batch}: {table}.{column} = {key} has no row in {referenced}; "
            "nothing of the batch was loaded. Re-run the transform so the batch carries the "
            "dimension row, or fix the source row."
        )
        self.table = table
        self.column = column
        self.key = key
        self.referenced = referenced
