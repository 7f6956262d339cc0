"""The central's database on PostgreSQL (issue 13), beside the embedded SQLite backend.

The schema as versioned migrations applied at start (:mod:`.migrations`), append-only history enforced
by triggers in the database, the index (:class:`PostgresIndex`), the Merkle log's store
(:class:`PostgresLogStore`, appends serialised across processes by an advisory lock), the console's
store (:class:`~edge.central.postgres.console.PostgresConsoleStore`, its trails sealed by the central) and
the agency's equipment records (:class:`~edge.central.postgres.equipment.PostgresEquipmentRows`).
Chosen by ``[central] index = {type = "postgresql", ...}`` (:mod:`edge.central.backends`).
"""

from edge.central.postgres.database import PostgresDatabase
from edge.central.postgres.index import PostgresIndex
from edge.central.postgres.log import PostgresLogStore
from edge.central.postgres.migrations import (
    RuntimeRoleError,
    SchemaBehind,
    SchemaError,
    apply_migrations,
    known_migrations,
)

__all__ = [
    "PostgresDatabase",
    "PostgresIndex",
    "PostgresLogStore",
    "RuntimeRoleError",
    "SchemaBehind",
    "SchemaError",
    "apply_migrations",
    "known_migrations",
]
