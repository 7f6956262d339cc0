"""Work the central runs beside its HTTP application: one aiohttp cleanup context per task (started
with the application, cancelled and awaited when it stops), and the loop of a periodic round whose failure
is logged and retried at the next round rather than ending the task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


def background_task(name: str, run: Callable[[], Coroutine[Any, Any, None]]
                    ) -> Callable[[object], AsyncIterator[None]]:
    """An aiohttp cleanup context running ``run()`` as the task ``name`` while the application runs."""

    async def context(_app: object) -> AsyncIterator[None]:
        task = asyncio.create_task(run(), name=name)
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return context


def periodic_task(name: str, one_round: Callable[[], Awaitable[None]], interval_s: float,
                  failed: str) -> Callable[[object], AsyncIterator[None]]:
    """A cleanup context running ``one_round`` at start and every ``interval_s`` seconds; a round that
    raises is logged with ``failed`` (the database or the disk down) and the next round comes."""
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")

    async def forever() -> None:
        while True:
            try:
                await one_round()
            except Exception:
                log.exception("%s", failed)
            await asyncio.sleep(interval_s)

    return background_task(name, forever)
