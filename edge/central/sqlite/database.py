"""One SQLite file holds the central's index and its Merkle log, so one transaction covers both.

:class:`SqliteDatabase` owns the connection and is the unit of work (:class:`edge.central.storage.UnitOfWork`)
that :class:`~edge.central.sqlite.index.SqliteIndex` and :class:`~edge.central.sqlite.log.SqliteLogStore`
are built on: neither is handed the connection by anyone else, and no module outside this package sees it.

Writes run on the one read-write connection, inline (the lock they wait for is only this process's own).
Reads a coroutine hands to :meth:`SqliteDatabase.run_reads` run in reader threads, as on PostgreSQL: two
for the stations and two for everyone else (:class:`edge.central.storage.Readers`), each thread on a
read-only connection of its own, opened at its first read. WAL lets them read beside the writer: each read
statement sees the transactions committed when it began, never the writer's uncommitted rows, and a
write the loop committed before handing a read over is seen by it. So an auditor's search over a large
index no longer stalls the loop (uploads, registrations, ``/healthz``) of a one-site central.

Reader connections run each statement to its end inside ``execute`` (:mod:`edge.central.sqlite.reads`), so
no read transaction stays open while Python code holds a cursor: overlapping reads leave the WAL's
checkpoint gaps to restart the log in, and ``journal_size_limit`` truncates it then (README "The central's
database behind protocols"). Each statement has its reader kind's time limit (PostgreSQL's statement
timeouts: stations 10 s, console 30 s, configurable), and :meth:`SqliteDatabase.close` refuses the reads
still queued and stops the running ones.

A read that records something (the authenticator's refusal, in the reader's thread) opens a transaction:
its statements go to the read-write connection, as every transaction's do, under the writer mutex that
:meth:`SqliteDatabase.run_writes` holds too, so that no two threads ever interleave on that connection and
nothing reads another thread's uncommitted rows there (the loop waits, at most, for one such short write).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from edge.central.config import CONSOLE_READ_TIME_LIMIT_S, STATION_READ_TIME_LIMIT_S, CentralLayout
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
from edge.central.sqlite.reads import ReaderConnection, ReadsClosed
from edge.central.sqlite.trail import create_trail_schema, register_sealer
from edge.central.storage import Readers
from edge.durable.files import create_private_file, ensure_private_dir
from edge.durable.sqlite import immediate_transaction

__all__ = ["SqliteDatabase", "readonly_uri"]

_T = TypeVar("_T")

# Reader threads per kind of reader (edge.central.storage.Readers), as PostgreSQL's: an auditor's slow reads
# holding the console's threads leave the stations' served.
_READER_THREADS = 2
# How long a reader waits for a lock SQLite takes briefly even in WAL mode (opening, a checkpoint's end).
_READER_BUSY_TIMEOUT_S = 30
# What the reader threads' statements are called in their errors.
_READS_OF = {Readers.STATIONS: "a read for a station", Readers.CONSOLE: "a read for the console"}
# The write-ahead log left on disk after the checkpoint that starts it over: a log grown past it while
# reads kept it from being started over (an auditor's long searches overlapping) shrinks back to this.
# SQLite's autocheckpoint (1000 pages, about 4 MB) starts it over once every read has ended.
WAL_SIZE_LIMIT_BYTES = 8 * 1024 * 1024


def readonly_uri(db_path: Path) -> str:
    """The ``file:`` URI opening ``db_path`` read-only (the path percent-encoded: a ``?`` or ``#`` in a
    folder name is not taken for the URI's query)."""
    return f"{db_path.absolute().as_uri()}?mode=ro"


def _no_sealer(key: bytes) -> None:
    """A connection without the sealing function (read-only): nothing to hand the key to."""


class SqliteDatabase:
    """``index.db``: the unit of work, with the index and the log store on its one connection."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None, *,
                 read_time_limits_s: dict[Readers, float] | None = None) -> None:
        # The read-write connection: every write, and the reads not handed to run_reads.
        self._conn = conn
        self.path = path
        # Each reader kind's time limit per statement (edge.central.sqlite.reads).
        self._read_time_limits_s = {Readers.STATIONS: STATION_READ_TIME_LIMIT_S,
                                    Readers.CONSOLE: CONSOLE_READ_TIME_LIMIT_S, **(read_time_limits_s or {})}
        self._reader_threads: dict[Readers, ThreadPoolExecutor] = {}
        # In a reader thread: its own read-only connection (``conn``).
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_conns_lock = threading.Lock()
        self._closed = False
        # Whoever uses the read-write connection holds this: run_writes' work (the loop's reads and
        # transactions there) and any thread's transaction (reentrant: run_writes' work opens them).
        self._writer_mutex = threading.RLock()
        # How deep the calling thread is inside transactions: its statements go to the read-write connection.
        self._in_transaction = threading.local()
        self._index = SqliteIndex(self)
        self._log_store = SqliteLogStore(self)
        self._console = SqliteConsoleStore(self)
        self._equipment = SqliteEquipmentRows(self)
        # Hands the trails' sealing function the key a starting central checked (none: read-only).
        self.use_trail_key: Callable[[bytes], None] = _no_sealer

    def __repr__(self) -> str:
        return f"SqliteDatabase(path={str(self.path) if self.path else None!r})"

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection of the calling thread: a reader thread's own read-only one (run_reads), else the
        read-write connection."""
        reading: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if reading is None or getattr(self._in_transaction, "depth", 0) > 0:
            return self._conn
        return reading

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
    def open(cls, db_path: Path, *, read_time_limits_s: dict[Readers, float] | None = None) -> SqliteDatabase:
        """Open (creating if missing) the database with the index and log tables and triggers;
        ``read_time_limits_s``: the reader threads' time limit per statement, by kind (default: stations
        10 s, console 30 s)."""
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
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
            # The console trails' seals (edge.central.sqlite.trail), keyed from the store's console key.
            sealer = register_sealer(conn, CentralLayout(db_path.parent).console_key)
            database = cls(conn, db_path, read_time_limits_s=read_time_limits_s)
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
        conn = sqlite3.connect(readonly_uri(db_path), uri=True, timeout=10, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return cls(conn, db_path)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on the read-write connection, rolled back on any exception, under the
        writer mutex (whichever thread opens it). Never await inside it."""
        with self._writer_mutex:
            self._in_transaction.depth = getattr(self._in_transaction, "depth", 0) + 1
            try:
                with immediate_transaction(self._conn) as conn:
                    yield conn
            finally:
                self._in_transaction.depth -= 1

    async def run_writes(self, work: Callable[[], _T]) -> _T:
        """``work()`` where it is, on the event loop, holding the writer mutex: the read-write connection is
        shared with the reads ``work`` makes before its transactions, and the lock it waits for is only
        this process's own (no other receiver holds a store's SQLite file); a reader thread's transaction
        (a refusal it records) is the longest it waits."""
        with self._writer_mutex:
            return work()

    async def run_reads(self, work: Callable[[], _T], readers: Readers = Readers.CONSOLE) -> _T:
        """``work()`` in one of the ``readers``' threads, on that thread's read-only connection (see the
        module docstring), so that a long read (a console search over a large index) does not stall the
        event loop. Where it is when the database has no file (made in memory: no second connection can
        see it)."""
        if self.path is None:
            return work()
        if self._closed:
            raise ReadsClosed(f"{_READS_OF[readers]} was refused: the central's index is closing")
        threads = self._reader_threads.get(readers)
        if threads is None:
            threads = self._reader_threads[readers] = ThreadPoolExecutor(
                max_workers=_READER_THREADS, thread_name_prefix=f"sqlite-reader-{readers.value}")
        return await asyncio.get_running_loop().run_in_executor(
            threads, functools.partial(self._read, work, readers))

    def _is_closing(self) -> bool:
        return self._closed

    def _read(self, work: Callable[[], _T], readers: Readers) -> _T:
        """In a reader thread: ``work()`` with this thread's connection as :attr:`conn`; refused when the
        database began closing while it was queued."""
        if self._closed:
            raise ReadsClosed(f"{_READS_OF[readers]} was refused: the central's index is closing")
        if getattr(self._reader_local, "conn", None) is None:
            assert self.path is not None
            # Autocommit: each read statement its own read transaction, none left open to hold the WAL.
            conn = sqlite3.connect(readonly_uri(self.path), uri=True, isolation_level=None,
                                   timeout=_READER_BUSY_TIMEOUT_S, factory=ReaderConnection,
                                   check_same_thread=False)  # closed by close(), in another thread
            assert isinstance(conn, ReaderConnection)
            conn.row_factory = sqlite3.Row
            conn.limit(_READS_OF[readers], self._read_time_limits_s[readers], self._is_closing)
            with self._reader_conns_lock:
                if self._closed:
                    conn.close()
                    raise ReadsClosed(f"{_READS_OF[readers]} was refused: the central's index is closing")
                self._reader_conns.append(conn)
            self._reader_local.conn = conn
        return work()

    def close(self) -> None:
        """Close the connections, after the reads under way: from now on every read statement is refused
        or stopped (:class:`~edge.central.sqlite.reads.ReadsClosed`), the reads queued in the threads
        included, so a long search ends at once rather than holding the stop; the threads are waited for."""
        with self._reader_conns_lock:
            self._closed = True
            for conn in self._reader_conns:
                conn.interrupt()
        for threads in self._reader_threads.values():
            threads.shutdown(wait=True)
        with self._reader_conns_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        self._conn.close()
