"""Extending object locks until the object store confirms them.

An item's retention class can change after its content is stored (a ``tagged`` ledger entry); its lock must
then be extended (never shortened) to the end of the new class. The wish is recorded in the index in the
transaction that accepts the entry (:mod:`edge.central.sql.lock_extensions`), then asked of the store at
once; a store that cannot be reached, or refuses, leaves the row, which :func:`lock_extension_task` asks
again at start and every ``interval_s`` until the store confirms it. Each failure is logged
(``retention_not_extended``) and counted on the row; what is pending shows on ``/readyz`` (a warning),
in ``edge_central_lock_extensions_pending`` and in `edge verify` (an object whose lock ends before its
class requires).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web

from edge.central.background import periodic_task
from edge.central.objects import ObjectStore, ObjectStoreError, ObjectStoreUnavailable
from edge.central.storage import Index, PendingLock
from edge.custody.ledger import station_time_now
from edge.runtime.logs import event_fields

__all__ = ["LockExtender", "lock_extension_task"]

log = logging.getLogger(__name__)

_BATCH = 200  # rows asked per round; the rest wait for the next


class LockExtender:
    """Asks ``objects`` for the locks ``index`` holds as pending, and records the outcome there."""

    def __init__(self, index: Index, objects: ObjectStore,
                 clock: Callable[[], str] = station_time_now) -> None:
        self.index = index
        self.objects = objects
        self._clock = clock

    async def extend(self, locks: Sequence[PendingLock]) -> None:
        """Ask the store for each lock, recording each outcome. A store that cannot be reached ends the
        round (the rest are not asked now: each would wait out its time limits)."""
        for lock in locks:
            try:
                await asyncio.to_thread(self.objects.retain, lock.sha256, lock.retention)
            except (ObjectStoreError, OSError, ValueError) as exc:
                # Each outcome is its own write transaction, which on PostgreSQL first waits for the
                # cross-process writer lock: in the database's writer thread, as registration's, so that
                # another receiver's commit does not stall this loop.
                await self.index.unit.run_writes(
                    functools.partial(self.index.lock_failed, lock.item, str(exc), self._clock()))
                log.error("item %s: its object %s could not be locked until %s%s (attempt %d; retried): %s",
                          lock.item, lock.sha256, lock.until_utc, " with a legal hold" if lock.legal_hold
                          else "", lock.attempts + 1, exc,
                          extra=event_fields(event="retention_not_extended", item=lock.item))
                if isinstance(exc, ObjectStoreUnavailable):
                    return
                continue
            await self.index.unit.run_writes(functools.partial(self.index.lock_done, lock))
            log.info("item %s: object %s locked until %s%s", lock.item, lock.sha256, lock.until_utc,
                     " with a legal hold" if lock.legal_hold else "",
                     extra=event_fields(event="retention_extended", item=lock.item))

    async def retry_pending(self) -> int:
        """One round over the oldest pending locks; returns how many are left pending in all."""
        pending = await self.index.unit.run_reads(functools.partial(self.index.pending_locks, _BATCH))
        if pending:
            log.info("retrying %d pending object lock extension(s)", len(pending))
            await self.extend(pending)
        return await self.index.unit.run_reads(self.index.pending_lock_count)


def lock_extension_task(
    extender: Callable[[], LockExtender], interval_s: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An ``app.cleanup_ctx`` entry that retries pending lock extensions at start and every
    ``interval_s`` seconds until the application stops; a round that fails is logged and the next one
    comes. ``extender`` is asked each round (the registrar's store, as it is then)."""
    async def one_round() -> None:
        await extender().retry_pending()

    return periodic_task("lock-extensions", one_round, interval_s,
                         "retrying pending object lock extensions failed")
