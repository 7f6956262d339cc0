"""The central's index on PostgreSQL: :class:`PostgresIndex` (:class:`edge.central.storage.Index`).

The queries are :class:`edge.central.sql.index.SqlIndex`'s, shared with SQLite, run through
:class:`~edge.central.postgres.qmark.QmarkConnection`; the tables and their append-only triggers are in
the migrations. What is this backend's own: the unit of work (:class:`PostgresDatabase`), a snapshot
in one ``REPEATABLE READ`` transaction on a connection of its own, and access-log rows sealed by the
central (:func:`edge.central.postgres.trail.append_trail`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from edge.central.postgres.qmark import QmarkConnection
from edge.central.postgres.trail import append_trail
from edge.central.sql.index import SqlIndex

if TYPE_CHECKING:
    from edge.central.postgres.database import PostgresDatabase

__all__ = ["PostgresIndex"]


class PostgresIndex(SqlIndex):
    """:class:`edge.central.storage.Index` in the tables of a :class:`PostgresDatabase`, whose unit of
    work it writes in (shared with the database's log store)."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database
        # The database's current connection (replaced when lost), in the shared SQL's dialect.
        self._qmark = QmarkConnection(lambda: database.conn)

    @property
    def conn(self) -> QmarkConnection:
        return self._qmark

    def __repr__(self) -> str:
        return f"PostgresIndex({self._database.where!r})"

    @property
    def unit(self) -> PostgresDatabase:
        return self._database

    def close(self) -> None:
        self._database.close()

    def transaction(self) -> AbstractContextManager[object]:
        return self._database.transaction()

    @contextmanager
    def snapshot(self) -> Iterator[PostgresIndex]:
        """A read-only view in one REPEATABLE READ transaction on a connection of its own."""
        other = self._database.reopen()
        try:
            other.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield PostgresIndex(other)
        finally:
            other.close()

    def _append_trail(self, table: str, values: dict[str, object]) -> int:
        return append_trail(self._database.conn, self._database.sealer, table, values)
