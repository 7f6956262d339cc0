"""One PostgreSQL database holds the central's index and its Merkle log, so one transaction covers both.

:class:`PostgresDatabase` owns the connection (autocommit outside :meth:`transaction`, so a read outside
one sees only committed units) and is the unit of work (:class:`edge.central.storage.UnitOfWork`) its
index and log store are built on. Every transaction takes the log writer's advisory lock first: like SQLite's
``BEGIN IMMEDIATE``, writers are serialised, here across every receiver process sharing the database, so
two receivers can never interleave the read of the tree and the insert of a leaf or a signed head.

That lock is held by another receiver for as long as its transaction runs, so waiting for it must not
happen on a receiver's event loop (issue 13: a receiver waiting on it served no connection, and stations'
connections were closed). Transactions therefore run on a connection of their own, the writer's, one
transaction at a time in the process; :meth:`PostgresDatabase.run_writes` runs a registration's in a
dedicated writer thread. Reads a coroutine hands to :meth:`PostgresDatabase.run_reads` run in reader threads,
each on a connection of its own, so that a slow query or a server restarting does not stall the loop either;
what is left on the loop reads committed rows on the reading connection.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import psycopg

from edge.central.config import CONSOLE_READ_TIME_LIMIT_S, STATION_READ_TIME_LIMIT_S
from edge.central.postgres.console import PostgresConsoleStore
from edge.central.postgres.equipment import PostgresEquipmentRows
from edge.central.postgres.index import PostgresIndex
from edge.central.postgres.log import PostgresLogStore
from edge.central.postgres.migrations import SchemaBehind, apply_migrations, check_runtime_role, owns_schema
from edge.central.postgres.trail import PostgresTrailSealer
from edge.central.storage import Readers

__all__ = ["PostgresDatabase", "connect_owner"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 10
# Reader threads of a receiver per kind of reader (edge.central.storage.Readers), each with its connection
# (opened at its first read): the stations' and the console's, so that slow auditor reads holding every
# thread of theirs leave the stations' requests served (review 13).
_READER_THREADS = 2
# The longest a reader's statement runs (lock waits included) before PostgreSQL cancels it
# (edge.central.storage, shared with SQLite's reader threads).
STATION_STATEMENT_TIMEOUT_S = STATION_READ_TIME_LIMIT_S
CONSOLE_STATEMENT_TIMEOUT_S = CONSOLE_READ_TIME_LIMIT_S

_T = TypeVar("_T")

Connect = Callable[[], psycopg.Connection[tuple[object, ...]]]


class PostgresDatabase:
    """A central database on PostgreSQL: the unit of work with the index, the Merkle log store and the
    console's store on its connections: reads outside a transaction on one (autocommit), transactions on
    the writer's (opened at the first, one transaction at a time in this process); a snapshot opens its
    own. ``console_key`` is the store's ``identity/console.key``, whose trail subkey seals the console's
    trails (none: read-only use, nothing is appended)."""

    errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], where: str, reconnect: Connect, *,
                 console_key: Path | None = None, one_connection: bool = False,
                 statement_timeouts_s: dict[Readers, float] | None = None) -> None:
        self._conn = conn
        # Each kind of reader's statement timeout, set on its threads' connections.
        self._statement_timeouts_s = {Readers.STATIONS: STATION_STATEMENT_TIMEOUT_S,
                                      Readers.CONSOLE: CONSOLE_STATEMENT_TIMEOUT_S,
                                      **(statement_timeouts_s or {})}
        # A snapshot's or a read-only session's database: its transactions on the one connection, inside
        # whatever that connection's own transaction is (a snapshot's READ ONLY refuses any write).
        self._one_connection = one_connection
        self._writer_conn: psycopg.Connection[tuple[object, ...]] | None = None
        # One transaction at a time in this process, whichever thread runs it (reentrant: a method that
        # opens its own transaction may be called inside another, a savepoint).
        self._writer_mutex = threading.RLock()
        # Which thread is inside a transaction, and how deeply: its statements go to the writer's
        # connection, every other thread's to the reading one.
        self._in_transaction = threading.local()
        self._writer_thread: ThreadPoolExecutor | None = None
        self._reader_threads: dict[Readers, ThreadPoolExecutor] = {}
        # In a reader thread: its own connection (``conn``), its kind (``readers``), and whether it runs a
        # read now.
        self._reader_local = threading.local()
        self._reader_conns: list[psycopg.Connection[tuple[object, ...]]] = []
        self._reader_conns_lock = threading.Lock()
        # Counts the losses of the server seen on any connection: a reader thread's connection opened
        # before the last one is replaced at its next use (it would fail its next statement).
        self._losses = 0
        # A lost server (a restart, a network cut) is seen on one connection first; the other, idle, would
        # fail its next statement: each is replaced at its next use once the other was found lost.
        self._reader_lost = False
        self._writer_lost = False
        self._replacing_reader = threading.Lock()
        self._closed = False
        self.sealer = PostgresTrailSealer(console_key)
        # host:port/database, never the password (the URL is validated to carry none; see open()).
        self.where = where
        self._reconnect = reconnect
        self._index = PostgresIndex(self)
        self._log_store = PostgresLogStore(self)
        self._console = PostgresConsoleStore(self)
        self._equipment = PostgresEquipmentRows(self)

    def __repr__(self) -> str:
        return f"PostgresDatabase({self.where!r})"

    @property
    def conn(self) -> psycopg.Connection[tuple[object, ...]]:
        """The connection; a new one when the last was lost (the server restarted, a network cut): the
        statement that met the loss failed and its transaction was rolled back, the next one runs on a
        fresh connection (raising ``psycopg.Error`` while the server is still down)."""
        if getattr(self._in_transaction, "depth", 0) > 0 and not self._one_connection:
            assert self._writer_conn is not None
            return self._writer_conn
        if getattr(self._reader_local, "reading", False):
            return self._reader_conn()
        if (self._conn.broken or self._reader_lost) and not self._closed:
            with self._replacing_reader:
                if self._conn.broken or self._reader_lost:
                    log.warning("the connection to %s was lost; connecting again", self.where)
                    if self._conn.broken:
                        self._losses += 1
                    self._writer_lost = self._writer_lost or self._conn.broken
                    lost, self._conn = self._conn, self._reconnect()
                    self._reader_lost = False
                    lost.close()
        return self._conn

    def _reader_conn(self) -> psycopg.Connection[tuple[object, ...]]:
        """This reader thread's connection, opened at its first read and again when lost."""
        conn: psycopg.Connection[tuple[object, ...]] | None = getattr(self._reader_local, "conn", None)
        opened_after: int = getattr(self._reader_local, "losses", 0)
        if conn is not None and not conn.broken and not conn.closed and opened_after == self._losses:
            return conn
        if conn is not None:
            log.warning("a reader's connection to %s was lost; connecting again", self.where)
            conn.close()
        fresh = self._reconnect()
        readers: Readers = self._reader_local.readers
        try:
            # set_config, not SET: a parameter, and for the session (false), every read of this thread.
            fresh.execute("SELECT set_config('statement_timeout', %s, false)",
                          (f"{round(self._statement_timeouts_s[readers] * 1000)}ms",))
        except BaseException:
            fresh.close()
            raise
        with self._reader_conns_lock:
            if conn is not None and conn in self._reader_conns:
                self._reader_conns.remove(conn)
            self._reader_conns.append(fresh)
        self._reader_local.conn = fresh
        self._reader_local.losses = self._losses
        return fresh

    def _lost_on(self, conn: psycopg.Connection[tuple[object, ...]] | None) -> None:
        """After a failed statement: when its connection is broken, the server was lost (a restart, a
        network cut) and every other connection is replaced at its next use."""
        if conn is not None and conn.broken:
            self._losses += 1
            self._reader_lost = True
            self._writer_lost = True

    def _writer(self) -> psycopg.Connection[tuple[object, ...]]:
        """The writer's connection (under the writer mutex), opened or opened again when lost."""
        if self._one_connection:
            return self.conn
        lost = self._writer_conn is not None and (self._writer_conn.broken or self._writer_lost)
        if self._writer_conn is None or (lost and not self._closed):
            if self._writer_conn is not None:
                log.warning("the writer's connection to %s was lost; connecting again", self.where)
                self._writer_conn.close()
            self._writer_conn = self._reconnect()
            self._writer_lost = False
        return self._writer_conn

    @property
    def writer_backend_pid(self) -> int | None:
        """The server process of the writer's connection (None before the first transaction), which
        ``pg_stat_activity`` names while a transaction waits for the writer lock."""
        writer = self._writer_conn
        return None if writer is None else writer.info.backend_pid

    @property
    def index(self) -> PostgresIndex:
        return self._index

    @property
    def log_store(self) -> PostgresLogStore:
        return self._log_store

    @property
    def console(self) -> PostgresConsoleStore:
        return self._console

    @property
    def equipment(self) -> PostgresEquipmentRows:
        return self._equipment

    def reopen(self) -> PostgresDatabase:
        """Another connection to the same database (a snapshot's, for a worker thread), its transactions
        on that connection too; no migration."""
        other = PostgresDatabase(self._reconnect(), self.where, self._reconnect,
                                 console_key=self.sealer.key_path, one_connection=True)
        key = self.sealer.key()
        if key is not None:
            other.sealer.use(key)
        return other

    @classmethod
    def open(cls, url: str, *, password: str | None = None, application_name: str = "edge-central",
             console_key: Path | None = None, owner_url: str | None = None,
             owner_password: str | None = None,
             statement_timeouts_s: dict[Readers, float] | None = None) -> PostgresDatabase:
        """Connect, make sure the schema is this code's version and return the database. Passwords come
        from the configured secret references, never from the URLs.

        With ``owner_url`` (the role that owns the tables): the migrations are applied and the runtime
        group's grants renewed over a short connection as the owner, then ``url``'s role must own nothing
        (a least-privilege install). Without it: a database whose tables ``url``'s role owns (or an empty
        one) is migrated as today, with a warning that the install is not least-privilege; one owned by
        another role is only checked, and refused while its schema is behind.
        Raises ``psycopg.Error`` (connection) or :class:`~edge.central.postgres.migrations.SchemaError`
        (:class:`~edge.central.postgres.migrations.SchemaBehind` and
        :class:`~edge.central.postgres.migrations.RuntimeRoleError` are the operator's to fix)."""

        def connect() -> psycopg.Connection[tuple[object, ...]]:
            # Keyword parameters are merged with the URL's (None is left out): the password never enters
            # the URL.
            return psycopg.connect(url, autocommit=True, application_name=application_name,
                                   connect_timeout=_CONNECT_TIMEOUT_S, password=password)

        if owner_url is not None:
            # The owner's connection lives only for the migration: the receiver never holds it.
            with connect_owner(owner_url, owner_password, f"{application_name} migrate") as owner:
                apply_migrations(owner)
                owner.execute("SELECT edge_grant_runtime()")
        conn = connect()
        try:
            if owner_url is not None or owns_schema(conn) is False:
                check_runtime_role(conn, owner_given=owner_url is not None)
            else:
                try:
                    apply_migrations(conn)
                except psycopg.errors.InsufficientPrivilege as exc:
                    # An empty database the runtime role may not create tables in: a split install whose
                    # owner has not migrated yet, the operator's step rather than a server fault.
                    raise SchemaBehind(
                        f"the database has no schema yet and the role {conn.info.user} may not create it "
                        f"({str(exc).strip()}): run `edge central migrate-schema` with "
                        f"central.index.owner_url, the owner's URL, and owner_password set") from None
                _warn_single_role(conn)
            info = conn.info
            where = f"{info.host}:{info.port}/{info.dbname}"
        except BaseException:
            conn.close()
            raise
        return cls(conn, where, connect, console_key=console_key, statement_timeouts_s=statement_timeouts_s)

    @classmethod
    def open_readonly(cls, url: str, *, password: str | None = None) -> PostgresDatabase:
        """A read-only session on the database (``edge verify``: it must never change what it checks); no
        migration is applied and nothing can be written. Raises ``psycopg.Error``."""

        def connect() -> psycopg.Connection[tuple[object, ...]]:
            return psycopg.connect(url, autocommit=True, application_name="edge-verify",
                                   connect_timeout=_CONNECT_TIMEOUT_S, password=password,
                                   options="-c default_transaction_read_only=on")

        conn = connect()
        info = conn.info
        return cls(conn, f"{info.host}:{info.port}/{info.dbname}", connect, one_connection=True)

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        with self._writer_mutex:
            conn = self._writer()
            depth: int = getattr(self._in_transaction, "depth", 0)
            self._in_transaction.depth = depth + 1
            try:
                with conn.transaction():
                    conn.execute("SELECT edge_log_writer_lock()")
                    yield conn
            except BaseException:
                if conn.broken:
                    self._losses += 1
                    self._reader_lost = True
                raise
            finally:
                self._in_transaction.depth = depth

    def transaction(self) -> AbstractContextManager[psycopg.Connection[tuple[object, ...]]]:
        """BEGIN, the writer lock, ... COMMIT; rolled back on any exception. Never await inside it. On
        the event loop it blocks the loop while another receiver holds the writer lock: the registrar's
        run in :meth:`run_writes`."""
        return self._transaction()

    async def run_writes(self, work: Callable[[], _T]) -> _T:
        """``work()`` (which opens its transactions itself) in this database's writer thread, so that the
        event loop keeps serving while it waits for the writer lock or for PostgreSQL."""
        if self._writer_thread is None:
            self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postgres-writer")
        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, work)

    async def run_reads(self, work: Callable[[], _T], readers: Readers = Readers.CONSOLE) -> _T:
        """``work()`` (reads only; a transaction it opens still goes to the writer) in one of the
        ``readers``' threads, on a connection of its own, so that the event loop keeps serving while
        PostgreSQL answers; a statement running past the ``readers``' statement timeout is cancelled
        (``psycopg.errors.QueryCanceled``)."""
        if self._one_connection:
            return work()  # a snapshot's or a read-only session's database: never a receiver's loop
        threads = self._reader_threads.get(readers)
        if threads is None:
            threads = self._reader_threads[readers] = ThreadPoolExecutor(
                max_workers=_READER_THREADS, thread_name_prefix=f"postgres-reader-{readers.value}")

        def read() -> _T:
            self._reader_local.readers = readers
            self._reader_local.reading = True
            try:
                return work()
            except BaseException:
                self._lost_on(getattr(self._reader_local, "conn", None))
                raise
            finally:
                self._reader_local.reading = False

        return await asyncio.get_running_loop().run_in_executor(threads, read)

    def close(self) -> None:
        self._closed = True
        if self._writer_thread is not None:
            # A write still running finishes (or fails on its closed connection) before the close returns.
            self._writer_thread.shutdown(wait=True)
        for threads in self._reader_threads.values():
            threads.shutdown(wait=True)
        with self._reader_conns_lock:
            for reader in self._reader_conns:
                reader.close()
            self._reader_conns.clear()
        with self._writer_mutex:
            if self._writer_conn is not None:
                self._writer_conn.close()
        self._conn.close()


# Databases already warned about, so that a process opening its database again (a command after the
# receiver's start, a test) says it once.
_warned_single_role: set[str] = set()


def connect_owner(owner_url: str, owner_password: str | None,
                  application_name: str) -> psycopg.Connection[tuple[object, ...]]:
    """A connection as the role that owns the tables (``central.index.owner_url``), autocommit, for the
    owner's steps only (schema migrations, grants, setting sequences); the caller closes it soon."""
    # Keyword parameters are merged with the URL's: the password never enters the URL.
    return psycopg.connect(owner_url, autocommit=True, application_name=application_name,
                           connect_timeout=_CONNECT_TIMEOUT_S, password=owner_password)


def _warn_single_role(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Once per database and process: the receivers' role owns the tables (today's single-role install), so
    a compromised receiver could disable the append-only triggers; say how to split the roles."""
    info = conn.info
    where = f"{info.host}:{info.port}/{info.dbname}"
    if where in _warned_single_role:
        return
    _warned_single_role.add(where)
    log.warning("the central's role %s owns the tables of %s: this install is not least-privilege (a "
                "compromised receiver could ALTER, DISABLE TRIGGER or DROP them); give the owner's URL as "
                "central.index.owner_url and run the receivers as a member of edge_central_runtime "
                "(README: PostgreSQL roles for the agency DBA)", info.user, where)
