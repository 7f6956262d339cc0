"""Review rev13d, LOW: stopping the embedded central waits for every read queued in its reader threads.

``SqliteDatabase.close`` (run by the receiver's cleanup, on the event loop, under systemd's
``TimeoutStopSec=60``) interrupts the statements running on the reader connections, then waits for the
reader threads. A read that was queued behind them (both of a pool's two threads busy: the console's with
two auditors' searches) starts after the interrupt, on a connection that is still open, and runs its whole
query: a third long search holds the stop (and the loop) for as long as it runs, the case the interrupt was
added for.

Here the console pool's two threads are taken (one running a long query, one held on an event), a third read
is queued, and the database is closed from another thread. Control: the read running at the close is
interrupted (``sqlite3.OperationalError``). Finding: the queued read, let into a thread only after the close
interrupted the running one, runs its query to the end and answers, where it should be refused as the
running one was.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from edge.central.sqlite.database import SqliteDatabase
from edge.central.storage import Readers

# Rows of a recursive count: long enough (minutes) that only an interrupt ends it within the bounds here.
_LONG_ROWS = 10**10
# A queued read's own query: short, so that the finding fails quickly instead of holding the test.
_SHORT_ROWS = 1000
# Bounds on a loaded machine, not premises.
_BOUND_S = 60.0


def _count(db: SqliteDatabase, rows: int) -> int:
    sql = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
           "SELECT count(*) FROM c")
    return int(db.conn.execute(sql, (rows,)).fetchone()[0])


async def _closing_with_reads(tmp_path: Path) -> tuple[BaseException | int, BaseException | int]:
    """(what the running read ended with, what the queued read ended with) when the database is closed."""
    db = SqliteDatabase.open(tmp_path / "index.db")
    running_started = threading.Event()
    held = threading.Event()
    release = threading.Event()

    def running() -> int:
        running_started.set()
        return _count(db, _LONG_ROWS)

    def holding() -> int:
        _count(db, 1)  # opens this thread's connection
        held.set()
        release.wait(_BOUND_S)
        return 0

    running_read = asyncio.ensure_future(db.run_reads(running, Readers.CONSOLE))
    holding_read = asyncio.ensure_future(db.run_reads(holding, Readers.CONSOLE))
    assert await asyncio.to_thread(running_started.wait, _BOUND_S)
    assert await asyncio.to_thread(held.wait, _BOUND_S)
    queued_read = asyncio.ensure_future(db.run_reads(lambda: _count(db, _SHORT_ROWS), Readers.CONSOLE))
    await asyncio.sleep(0)  # run_reads hands it to the pool (queued: both threads are busy)
    closer = threading.Thread(target=db.close, name="closing")
    closer.start()
    ran: list[BaseException | int] = []
    try:
        # The close has interrupted the running read once that read has ended: then the queued one starts.
        done, _ = await asyncio.wait({running_read}, timeout=_BOUND_S)
        assert done, "the read running at the close was not interrupted within the bound"
        release.set()
        for read in (running_read, queued_read):
            try:
                ran.append(await asyncio.wait_for(read, _BOUND_S))
            except sqlite3.Error as exc:
                ran.append(exc)
        await asyncio.wait_for(holding_read, _BOUND_S)
    finally:
        release.set()
        await asyncio.to_thread(closer.join, _BOUND_S)
    return ran[0], ran[1]


async def test_control_a_read_running_at_the_close_is_interrupted(tmp_path: Path) -> None:
    running, _queued = await _closing_with_reads(tmp_path)
    assert isinstance(running, sqlite3.OperationalError), running


async def test_a_read_queued_at_the_close_is_refused_not_run(tmp_path: Path) -> None:
    _running, queued = await _closing_with_reads(tmp_path)
    assert isinstance(queued, sqlite3.Error), (
        f"a read queued when the stop began ran its whole query after the close had interrupted the "
        f"running one (answered {queued!r}): a long one holds the stop and the event loop for its length")
