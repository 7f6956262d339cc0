"""The agency's equipment records in ``index.db``: the tables and :class:`SqliteEquipmentRows`.

* ``officer_lists``: every officer-list version the central issued (edge.central.equipment), never
  updated or deleted, each inserted as one more than the newest (a trigger refuses any other number);
* ``fleet_reports``: the latest report of each station, with the central's time of receipt.

The SQL is :class:`edge.central.sql.equipment.SqlEquipmentRows`'s, shared with PostgreSQL
(``edge/central/postgres/migrations/0004_equipment.sql`` has the same tables and rules).
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from edge.central.sql.equipment import SqlEquipmentRows
from edge.durable.sqlite import apply_schema

if TYPE_CHECKING:
    from edge.central.sqlite.database import SqliteDatabase

__all__ = ["SqliteEquipmentRows", "create_schema"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS officer_lists (
    version INTEGER PRIMARY KEY CHECK (version >= 1),
    sha256 TEXT NOT NULL,              -- officers_sha256 of the signed list
    issued_at TEXT NOT NULL,
    by TEXT NOT NULL,
    officers INTEGER NOT NULL,
    envelope BLOB NOT NULL             -- canonical JSON of the signed envelope
) STRICT;
CREATE TRIGGER IF NOT EXISTS officer_lists_next_version BEFORE INSERT ON officer_lists
    WHEN NEW.version IS NOT (SELECT COALESCE(MAX(version), 0) + 1 FROM officer_lists)
    BEGIN SELECT RAISE(ABORT, 'officer_lists: a version must be one more than the newest'); END;
CREATE TABLE IF NOT EXISTS fleet_reports (
    station TEXT PRIMARY KEY,
    received TEXT NOT NULL,            -- central UTC time
    report BLOB NOT NULL               -- canonical JSON, checked
) STRICT
"""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the equipment tables and triggers if missing (idempotent; the caller's transaction)."""
    apply_schema(conn, _SCHEMA, append_only=("officer_lists",))


class SqliteEquipmentRows(SqlEquipmentRows):
    """:class:`edge.central.storage.EquipmentRows` in the tables of a :class:`SqliteDatabase`."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    @property
    def conn(self) -> sqlite3.Connection:
        """The database's connection for the calling thread (:attr:`SqliteDatabase.conn`: a reader
        thread's own while it reads). Only this package uses it; tests use it to play the attacker."""
        return self._database.conn

    def __repr__(self) -> str:
        path = self._database.path
        return f"SqliteEquipmentRows(path={str(path) if path else None!r})"

    def transaction(self) -> AbstractContextManager[object]:
        return self._database.transaction()
