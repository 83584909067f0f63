"""PostgreSQL access: one asyncpg pool, named queries, migrations, LISTEN."""

from orchestrator.store.database import (
    UNAVAILABLE,
    Database,
    connect,
    create_database,
    database_name,
    drop_database,
    with_database,
)
from orchestrator.store.listener import Listener
from orchestrator.store.migrate import migrate, pending
from orchestrator.store.queries import SQL

__all__ = [
    "SQL",
    "UNAVAILABLE",
    "Database",
    "Listener",
    "connect",
    "create_database",
    "database_name",
    "drop_database",
    "migrate",
    "pending",
    "with_database",
]
