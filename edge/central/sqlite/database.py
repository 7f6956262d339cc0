"""One SQLite file holds the central's index and its Merkle log, so one transaction covers both.

:class:`SqliteDatabase` owns the connection and is the unit of work (:class:`edge.central.storage.UnitOfWork`)
that :class:`~edge.central.sqlite.index.SqliteIndex` and :class:`~edge.central.sqlite.log.SqliteLogStore`
are built on: neither is handed the connection by anyone else, and no module outside this package sees it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

from edge.central.config import CentralLayout
from edge.central.sqlite.console import SqliteConsoleStore
from edge.central.sqlite.console import create_schema as create_console_schema
from edge.central.sqlite.console import migrate as migrate_console
from edge.central.sqlite.equipment import SqliteEquipmentRows
from edge.central.sqlite.equipment import create_schema as create_equipment_schema
from edge.central.sqlite.index import SqliteIndex
from edge.central.sqlite.index import create_schema as create_index_schema
from edge.central.sqlite.lock_extensions import create_schema as create_lock_extensions_schema
from edge.central.sqlite.log import SqliteLogStore
from edge.central.sqlite.log import create_schema as create_log_schema
from edge.central.sqlite.trail import create_trail_schema, register_sealer
from edge.central.storage import Readers
from edge.durable.files import create_private_file, ensure_private_dir
from edge.durable.sqlite import immediate_transaction

__all__ = ["SqliteDatabase"]

_T = TypeVar("_T")


def _no_sealer(key: bytes) -> None:
    """A connection without the sealing function (read-only): nothing to hand the key to."""


class SqliteDatabase:
    """``index.db``: the unit of work, with the index and the log store on its one connection."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None) -> None:
        self.conn = conn
        self.path = path
        self._index = SqliteIndex(self)
        self._log_store = SqliteLogStore(self)
        self._console = SqliteConsoleStore(self)
        self._equipment = SqliteEquipmentRows(self)
        # Hands the trails' sealing function the key a starting central checked (none: read-only).
        self.use_trail_key: Callable[[bytes], None] = _no_sealer

    def __repr__(self) -> str:
        return f"SqliteDatabase(path={str(self.path) if self.path else None!r})"

    @property
    def index(self) -> SqliteIndex:
        return self._index

    @property
    def log_store(self) -> SqliteLogStore:
        return self._log_store

    @property
    def console(self) -> SqliteConsoleStore:
        return self._console

    @property
    def equipment(self) -> SqliteEquipmentRows:
        return self._equipment

    @classmethod
    def open(cls, db_path: Path) -> SqliteDatabase:
        """Open (creating if missing) the database with the index and log tables and triggers."""
        ensure_private_dir(db_path.parent)
        # SQLite gives the -wal and -shm files the database file's mode: create it private first.
        create_private_file(db_path)
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: an acceptance the station was told about survives power loss, not only a crash.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            # The console trails' seals (edge.central.sqlite.trail), keyed from the store's console key.
            sealer = register_sealer(conn, CentralLayout(db_path.parent).console_key)
            database = cls(conn, db_path)
            database.use_trail_key = sealer.use
            with database.transaction():
                create_index_schema(conn)
                create_log_schema(conn)
                # The console's tables; a store made before them gets them, and its items their units.
                create_console_schema(conn)
                migrate_console(conn)
                create_trail_schema(conn)
                create_equipment_schema(conn)
                create_lock_extensions_schema(conn)
        except BaseException:
            conn.close()
            raise
        return database

    @classmethod
    def open_readonly(cls, db_path: Path) -> SqliteDatabase:
        """A read-only database (verification must never change what it checks); no schema is made."""
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return cls(conn, db_path)

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception. Never await inside it."""
        return immediate_transaction(self.conn)

    async def run_writes(self, work: Callable[[], _T]) -> _T:
        """``work()`` where it is, on the event loop: the one connection is shared with the loop's reads
        (a transaction in another thread would show them its uncommitted rows), and the lock it waits
        for is only this process's own (no other receiver holds a store's SQLite file)."""
        return work()

    async def run_reads(self, work: Callable[[], _T], readers: Readers = Readers.CONSOLE) -> _T:
        """``work()`` where it is, on the event loop, for the reason of :meth:`run_writes`: on the one
        connection a read in another thread could see the uncommitted rows of a transaction the loop is
        running, and a read of the local file never waits for another process."""
        return work()

    def close(self) -> None:
        self.conn.close()
