"""Review 13: LockExtender.extend records each outcome (index.lock_done / lock_failed) in its own
transaction ON THE EVENT LOOP. On PostgreSQL every transaction first takes the cross-process writer lock
(edge_log_writer_lock), so a receiver whose lock extension finishes while another receiver commits stalls
its whole loop: the issue-13 stall run_writes was made to avoid. Control: the same row write through
run_writes keeps the loop running."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

from edge.central.lock_extensions import LockExtender
from edge.central.objects import Retention
from edge.central.postgres.database import PostgresDatabase
from tests.central.pg import PostgresDatabaseUnderTest

HOLD_S = 3.0


class _Objects:
    def retain(self, sha256: str, retention: Retention) -> None:
        return None


def _hold(pg: PostgresDatabaseUnderTest, held: threading.Event) -> None:
    with pg.admin() as other, other.transaction():
        other.execute("SELECT edge_log_writer_lock()")
        held.set()
        time.sleep(HOLD_S)


async def _loop_stall_while(pg: PostgresDatabaseUnderTest, work) -> float:  # type: ignore[no-untyped-def]
    held = threading.Event()
    holder = threading.Thread(target=_hold, args=(pg, held), daemon=True)
    holder.start()
    await asyncio.to_thread(held.wait, 10)
    gaps: list[float] = []
    stop = asyncio.Event()

    async def beat() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beater = asyncio.create_task(beat())
    await asyncio.sleep(0.2)
    await work()
    stop.set()
    await beater
    await asyncio.to_thread(holder.join, 10)
    return max(gaps)


def _setup(pg: PostgresDatabaseUnderTest):  # type: ignore[no-untyped-def]
    db = PostgresDatabase.open(pg.url, password=pg.password)
    until = Retention(datetime.now(UTC) + timedelta(days=3650))
    with db.transaction():
        lock = db.index.want_lock("item-1", "a" * 64, until, "2026-12-06T00:00:00Z")
    return db, lock


async def test_control_lock_done_in_writer_thread_keeps_loop(pg_database: PostgresDatabaseUnderTest) -> None:
    db, lock = _setup(pg_database)
    try:
        async def work() -> None:
            await db.run_writes(lambda: db.index.lock_done(lock))
        assert await _loop_stall_while(pg_database, work) < HOLD_S / 2
    finally:
        db.close()


async def test_lock_extender_keeps_loop_while_writer_lock_held(
        pg_database: PostgresDatabaseUnderTest) -> None:
    db, lock = _setup(pg_database)
    try:
        extender = LockExtender(db.index, _Objects())  # type: ignore[arg-type]

        async def work() -> None:
            await extender.extend([lock])
        assert await _loop_stall_while(pg_database, work) < HOLD_S / 2
    finally:
        db.close()
