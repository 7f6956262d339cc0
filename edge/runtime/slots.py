"""A concurrency slot that can be given back while its holder only waits.

The station offloads a bounded number of bays at once (``[offload] concurrency``). A docking that has
copied everything and now only waits for the central (a witnessed head, a receipt) uses no disk or USB
bandwidth: it must not keep another bay from copying. :meth:`ConcurrencySlot.released` gives the slot
back for the wait and takes it again afterwards; the slot remembers whether it is held, so a wait
cancelled while taking it back never releases a slot it does not hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

__all__ = ["ConcurrencySlot"]


class ConcurrencySlot:
    """One holder's use of a shared semaphore: ``async with slot:`` holds it for the whole job."""

    def __init__(self, limit: asyncio.Semaphore) -> None:
        self._limit = limit
        self.held = False

    async def __aenter__(self) -> ConcurrencySlot:
        await self._limit.acquire()
        self.held = True
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.held:
            self.held = False
            self._limit.release()

    @asynccontextmanager
    async def released(self) -> AsyncIterator[None]:
        """Give the slot back for the body (a wait), then take it again before going on."""
        if not self.held:
            yield
            return
        self.held = False
        self._limit.release()
        try:
            yield
        finally:
            await self._limit.acquire()
            self.held = True
