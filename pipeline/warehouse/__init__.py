"""The PostgreSQL warehouse: schema migrations and the building blocks of the load step."""

from __future__ import annotations

from pipeline.credentials import WAREHOUSE, connect, resolve_dsn
from pipeline.warehouse.migrations import MIGRATIONS, apply_migrations

__all__ = ["MIGRATIONS", "apply_migrations", "migrate"]


def migrate(dsn: str | None = None) -> list[str]:
    """Bring the warehouse schema up to date; return the migration versions applied now.

    `dsn` of None resolves through `WAREHOUSE_DSN` / `WAREHOUSE_SECRET_ARN`.
    """
    with connect(resolve_dsn(WAREHOUSE, dsn), what="warehouse", autocommit=True) as conn:
        return apply_migrations(conn)
