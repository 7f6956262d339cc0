"""Another PostgreSQL session holding a lock a receiver will wait on, and the receiver's /healthz asked
meanwhile: the evidence that the receiver's event loop kept running while its request waited (or, in a
control, that it did not).

The hold runs in a thread of its own (`LockHold.start`): it takes the lock in a transaction, waits until the
receiver's statement is seen waiting in ``pg_stat_activity`` (`lock_waiters`), asks /healthz with a plain
blocking client, then, if told to, keeps the lock until released, and commits. The test's coroutine meanwhile
makes the receiver's request that queues behind the lock.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.central.pg import PostgresDatabaseUnderTest

# Bounds on a loaded machine, not premises.
SEEN_WAITING_BOUND_S = 60.0
HEALTHZ_BOUND_S = 20.0
# A control's /healthz cannot be answered before the release whatever the bound: a short one suffices.
STALLED_HEALTHZ_BOUND_S = 5.0
POLL_S = 0.05  # polling for a wait to show, not proving an absence


def healthz(url: str, bound_s: float = HEALTHZ_BOUND_S) -> tuple[int | None, str | None]:
    """/healthz's status, or None and why when it was not answered within `bound_s`."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=bound_s)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status, None
    except OSError as exc:  # socket.timeout included: no answer within the bound
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


def lock_waiters(pg: PostgresDatabaseUnderTest, *, wait_event: str | None = None,
                 query_like: str | None = None, query_not_like: str | None = None,
                 query: str | None = None) -> int:
    """How many statements of the database wait on a lock (`wait_event`: 'relation', 'advisory'; the
    statement's text matched with ILIKE patterns or exactly)."""
    sql = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
           "AND datname = current_database()")
    params: list[str] = []
    for clause, value in (("wait_event = %s", wait_event), ("query ILIKE %s", query_like),
                          ("query NOT ILIKE %s", query_not_like), ("query = %s", query)):
        if value is not None:
            sql += f" AND {clause}"
            params.append(value)
    with pg.admin() as admin:
        row = admin.execute(sql, params).fetchone()
    return 0 if row is None else int(str(row[0]))


@dataclass
class LockHold:
    """See the module docstring. The results (`waiter_seen`, `healthz_status`) are read after `join`."""

    pg: PostgresDatabaseUnderTest
    lock_sql: str  # run in the holding transaction, e.g. "LOCK TABLE stations IN ACCESS EXCLUSIVE MODE"
    lock_params: tuple[object, ...] = ()
    waiter: Callable[[], bool] | None = None  # whether the receiver's statement is seen waiting
    look_for_s: float = SEEN_WAITING_BOUND_S
    look_after: threading.Event | None = None  # look for the waiter only once this is set
    stop_looking: threading.Event | None = None  # the request was answered: no waiter will show
    healthz_url: str | None = None  # asked once the waiter is seen (or the look gave up)
    healthz_bound_s: float = HEALTHZ_BOUND_S
    release: threading.Event | None = None  # after /healthz, hold until this is set (bounded)
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    waiter_seen: bool = False
    healthz_status: int | None = None
    healthz_error: str | None = None
    _thread: threading.Thread | None = None

    async def start(self) -> LockHold:
        """Start the holding thread and return once it holds the lock."""
        self._thread = threading.Thread(target=self._hold, name="lock-hold")
        self._thread.start()
        assert await asyncio.to_thread(self.held.wait, SEEN_WAITING_BOUND_S), "the lock was never taken"
        return self

    async def join(self, bound_s: float = SEEN_WAITING_BOUND_S * 2) -> None:
        if self._thread is None:
            return  # never started (the test failed before): nothing holds the lock
        await asyncio.to_thread(self._thread.join, bound_s)
        assert not self._thread.is_alive(), "the lock's holder never let go"

    def _hold(self) -> None:
        try:
            with self.pg.admin() as other, other.transaction():
                other.execute(self.lock_sql, self.lock_params or None)
                self.held.set()
                self._look_for_the_waiter()
                if self.healthz_url is not None:
                    self.healthz_status, self.healthz_error = healthz(self.healthz_url, self.healthz_bound_s)
                if self.release is not None:
                    self.release.wait(SEEN_WAITING_BOUND_S * 3)
        finally:
            self.released.set()

    def _look_for_the_waiter(self) -> None:
        if self.waiter is None:
            return
        if self.look_after is not None:
            self.look_after.wait(SEEN_WAITING_BOUND_S)
        deadline = time.monotonic() + self.look_for_s
        while time.monotonic() < deadline:
            if self.stop_looking is not None and self.stop_looking.is_set():
                return
            if self.waiter():
                self.waiter_seen = True
                return
            time.sleep(POLL_S)


def table_lock(table: str) -> str:
    """The statement of a maintenance's hold on `table` (names from the tests, never from input)."""
    assert table.isidentifier(), table
    return f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
