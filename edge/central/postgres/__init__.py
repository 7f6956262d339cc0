"""The central's index and Merkle log on PostgreSQL (issue 13), beside the embedded SQLite backend.

Today: the schema as versioned migrations applied at start (:mod:`.migrations`), append-only history
enforced by triggers in the database, the index (:class:`PostgresIndex`) and the Merkle log's store
(:class:`PostgresLogStore`), whose appends are serialised across processes by an advisory lock. The
console's store (:class:`~edge.central.storage.ConsoleStore`: accounts, grants, sessions, the sealed
trails) is not built yet, so the receiver refuses ``index.type = "postgresql"``
(:func:`edge.central.config.require_embedded_index`).
"""

from edge.central.postgres.database import PostgresDatabase
from edge.central.postgres.index import PostgresIndex
from edge.central.postgres.log import PostgresLogStore
from edge.central.postgres.migrations import SchemaError, apply_migrations, known_migrations

__all__ = [
    "PostgresDatabase",
    "PostgresIndex",
    "PostgresLogStore",
    "SchemaError",
    "apply_migrations",
    "known_migrations",
]
