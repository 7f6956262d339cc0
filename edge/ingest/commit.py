"""Group commit: the state transitions of many items share one SQLite transaction and one log fsync.

Each durable commit costs an fsync of the write-ahead log, and eight bays finishing short clips ask
for hundreds of them; done on the event loop, those fsyncs alone held it for seconds. Here:

* transitions submitted before the loop next gets to the flush are committed together, each inside
  its own savepoint, so one that fails is rolled back alone and its caller gets the exception, as if
  it had had its own transaction;
* the commit runs on the event loop like every other writer of the store's connection (one
  synchronous call, so no other transaction interleaves with it), but the fsync that makes it survive
  power loss (:meth:`StationStore.sync_log`) runs in a thread, and one fsync covers every commit made
  before it started;
* a caller resumes only once its transition is committed and the log fsynced: nothing is recorded
  before the bytes it describes are durable (the caller made them so before submitting), and nothing
  is acted on (an erasure, an upload) before its record is durable.

Other writers of the store use StationStore.transaction(), which syncs before returning; any such
sync also makes every earlier group commit durable, since the log is one sequential file.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from edge.durable.sqlite import savepoint
from edge.ingest.copy import StoreFullError
from edge.ingest.store import StationStore

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 256  # transitions per transaction: bounds how long one flush holds the loop

_Outcome = tuple[bool, Any]  # (succeeded, result or exception)


class GroupCommit:
    def __init__(self, store: StationStore, *, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._committed = 0  # generation: commits made so far
        self._synced = 0  # commits known durable
        self._sync: asyncio.Task[None] | None = None
        self._acknowledging: set[asyncio.Task[None]] = set()
        self.transactions = 0  # counts, for tests and the benchmark
        self.transitions = 0
        self.syncs = 0

    async def run(self, work: Callable[[], T]) -> T:
        """Run `work` (repository calls, no awaiting) in the next group transaction; return its result
        once that transaction is committed and durable, or raise what `work` or the commit raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((work, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if self._pending:
            loop.call_soon(self._flush)
        else:
            self._scheduled = False
        live = [(work, future) for work, future in batch if not future.cancelled()]
        if not live:
            return
        outcomes: list[_Outcome] = []
        try:
            with self.store.unsynced_transaction() as conn:
                for index, (work, _) in enumerate(live):
                    try:
                        with savepoint(conn, f"transition_{index}"):
                            outcomes.append((True, work()))
                    except Exception as exc:  # this transition only; the others still commit
                        outcomes.append((False, exc))
        except BaseException as exc:  # the commit itself failed (disk full, I/O): nothing was recorded
            log.error("a group of %d transitions could not be committed: %s", len(live), exc)
            _settle([future for _, future in live], [(False, exc)] * len(live))
            if not isinstance(exc, Exception):
                raise
            return
        self._committed += 1
        self.transactions += 1
        self.transitions += len(live)
        acknowledge = self._acknowledge(self._committed, [f for _, f in live], outcomes)
        self._acknowledging.add(task := loop.create_task(acknowledge))
        task.add_done_callback(self._acknowledging.discard)

    async def _acknowledge(
        self, generation: int, futures: list[asyncio.Future[Any]], outcomes: list[_Outcome]
    ) -> None:
        try:
            while self._synced < generation:
                if self._sync is None or self._sync.done():
                    self._sync = asyncio.create_task(self._sync_once())
                await asyncio.shield(self._sync)
        except Exception as exc:
            log.error("the ledger's write-ahead log could not be made durable: %s", exc)
            _settle(futures, [(False, exc)] * len(futures))
            return
        _settle(futures, outcomes)

    async def _sync_once(self) -> None:
        covers = self._committed  # every commit made before this fsync starts
        # The loop's default executor, not the pipeline's: a sync must not queue behind copies.
        await asyncio.get_running_loop().run_in_executor(None, self.store.sync_log)
        self.syncs += 1
        self._synced = max(self._synced, covers)


def _settle(futures: list[asyncio.Future[Any]], outcomes: list[_Outcome]) -> None:
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if future.done():
            continue  # its caller was cancelled meanwhile; what it asked for is committed
        if ok:
            future.set_result(value)
        else:
            future.set_exception(_as_store_full(value))


def _as_store_full(exc: BaseException) -> BaseException:
    """A full disk met by the commit or the log's fsync, as the StoreFullError the copy raises for it.

    Another bay's copy can fill the disk between its own ENOSPC and the reserve's release; the group
    commit then fails with SQLITE_FULL, and the run must stop as "station disk full" (its ledger entry,
    the FULL LED), not crash with a bare sqlite3 error."""
    sqlite_full = isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL
    full = sqlite_full or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
    if not full:
        return exc
    store_full = StoreFullError(f"the station disk is full: the ledger could not be committed ({exc})")
    store_full.__cause__ = exc
    return store_full
