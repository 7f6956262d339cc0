"""The auditor console's store on PostgreSQL: :class:`PostgresConsoleStore`.

The SQL is :class:`edge.central.sql.console.SqlConsoleStore`'s, shared with SQLite, run through
:class:`~edge.central.postgres.qmark.QmarkConnection`; the tables and their append-only triggers are in
``migrations/0003_console.sql``. What differs: trail rows are sealed by the central
(:func:`edge.central.postgres.trail.append_trail`), and a replaced TOTP secret is left to PostgreSQL's
own cleanup (VACUUM; the old row version stays in the table's files until then, see the README).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from edge.central.postgres.qmark import QmarkConnection
from edge.central.postgres.trail import append_trail, row_json, seal_unsealed_rows
from edge.central.sql.console import SqlConsoleStore
from edge.central.sqlite.trail import TRAIL_COLUMNS
from edge.central.sqlite.trail import key_fits_seals as sqlite_key_fits_seals

if TYPE_CHECKING:
    from edge.central.postgres.database import PostgresDatabase

__all__ = ["PostgresConsoleStore", "key_fits_seals"]

def key_fits_seals(conn: QmarkConnection, key: bytes) -> bool | None:
    """Whether ``key`` is the trail key the seals were made with; None when nothing is sealed yet (the
    rule of :func:`edge.central.sqlite.trail.key_fits_seals`, over the rows as this backend seals them)."""

    def row_json_of(table: str, row_id: int) -> str | None:
        row = conn.execute(f"SELECT {', '.join(TRAIL_COLUMNS[table])} FROM {table} WHERE id = ?",
                           (row_id,)).fetchone()
        return None if row is None else row_json(tuple(row))

    return sqlite_key_fits_seals(conn, key, row_json_of)


class PostgresConsoleStore(SqlConsoleStore):
    """:class:`edge.central.storage.ConsoleStore` in the tables of a :class:`PostgresDatabase`."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database
        self._qmark = QmarkConnection(lambda: database.conn)

    @property
    def conn(self) -> QmarkConnection:
        return self._qmark

    def __repr__(self) -> str:
        return f"PostgresConsoleStore({self._database.where!r})"

    def transaction(self) -> AbstractContextManager[object]:
        return self._database.transaction()

    def _append_trail(self, table: str, values: dict[str, object]) -> int:
        return append_trail(self._database.conn, self._database.sealer, table, values)

    def _before_replacing_secret(self) -> None:
        """Nothing to switch on: the old row version is removed by VACUUM (:meth:`scrub_replaced`)."""

    def scrub_replaced(self) -> bool:
        """VACUUM the accounts table, so that a replaced secret's old row version is removed from its
        pages (a role that does not own the table gets only a warning from the server, and autovacuum
        removes it later); False when the statement failed. Copies in the WAL and in base backups age
        out with them."""
        try:
            self._database.conn.execute("VACUUM console_accounts")
        except self._database.errors:
            return False
        return True

    def seal_trails(self, trail_key: bytes) -> int:
        self._database.sealer.use(trail_key)
        with self.transaction():
            return seal_unsealed_rows(self._database.conn, trail_key)

    def trail_key_fits(self, trail_key: bytes) -> bool | None:
        return key_fits_seals(self.conn, trail_key)
