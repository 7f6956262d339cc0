"""The agency's equipment records on PostgreSQL: :class:`PostgresEquipmentRows`.

The SQL is :class:`edge.central.sql.equipment.SqlEquipmentRows`'s, shared with SQLite, run through
:class:`~edge.central.postgres.qmark.QmarkConnection`; the tables and their triggers (append-only, the next
version only, under the writer lock every receiver takes) are in ``migrations/0004_equipment.sql``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from edge.central.postgres.qmark import QmarkConnection
from edge.central.sql.equipment import SqlEquipmentRows

if TYPE_CHECKING:
    from edge.central.postgres.database import PostgresDatabase

__all__ = ["PostgresEquipmentRows"]


class PostgresEquipmentRows(SqlEquipmentRows):
    """:class:`edge.central.storage.EquipmentRows` in the tables of a :class:`PostgresDatabase`."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database
        self._qmark = QmarkConnection(lambda: database.conn)

    @property
    def conn(self) -> QmarkConnection:
        return self._qmark

    def __repr__(self) -> str:
        return f"PostgresEquipmentRows({self._database.where!r})"

    def transaction(self) -> AbstractContextManager[object]:
        return self._database.transaction()
