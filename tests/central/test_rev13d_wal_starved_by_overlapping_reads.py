"""Review rev13d, LOW: overlapping reads on the embedded index's reader connections starve the WAL's
checkpoint, and ``index.db-wal`` grows without bound while the central keeps writing.

Since today the SQLite index's reads run on read-only connections of their own beside the writer (the two
pools of two threads). WAL mode can only start its log over once the checkpoint has copied every frame
and no reader still reads an older snapshot from the log; while some reader is always inside a read
(auditors' long searches and statistics taking turns on the console's two threads), every commit is
appended and the file grows by every write, for as long as the overlap lasts, and is never shrunk afterwards
(no ``journal_size_limit``): disk use of the store, and every read slower, as the log grows. Before today
the reads ran on the writer's own connection, one at a time, and the log was started over at each
checkpoint (the SQLite documentation calls this "checkpoint starvation").

Here the console pool's two threads take turns holding a read open (a search stepped part way, held on an
event) so that one is always open, while the loop records refusals (the index's own write path, a
transaction each). Control: the same reads and writes, each read opened and ended between the turns'
writes, keep the log at its autocheckpoint size (4.1 MB here). Finding: with the overlap the log grows by
about a page a write (23 MB after 36 turns here, 8 MB after 12: linear, not capped).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path

from edge.central.sqlite.database import SqliteDatabase
from edge.central.storage import Readers

# SQLite's default autocheckpoint (1000 pages of 4 KiB): the log is started over at about this size.
_AUTOCHECKPOINT_BYTES = 1000 * 4096
# Turns of the two readers, and refusals recorded in each: the writes of the whole run fill the log several
# times over (each is a transaction of its own).
_TURNS = 36
_WRITES_PER_TURN = 150
_BOUND_S = 120.0


class _HeldRead:
    """A read stepped part way (its snapshot open) on a console reader's connection, until released."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self.opened = threading.Event()
        self.release = threading.Event()
        self.done: asyncio.Future[int] | None = None

    def _work(self) -> int:
        rows = self.db.conn.execute("SELECT id FROM rejections ORDER BY id")
        rows.fetchone()  # the statement is stepped, not finished: its read transaction stays open
        self.opened.set()
        self.release.wait(_BOUND_S)
        return len(rows.fetchall())

    async def start(self) -> None:
        self.done = asyncio.ensure_future(self.db.run_reads(self._work, Readers.CONSOLE))
        assert await asyncio.to_thread(self.opened.wait, _BOUND_S), "the held read did not start"

    async def end(self) -> None:
        assert self.done is not None
        self.release.set()
        await asyncio.wait_for(self.done, _BOUND_S)


async def _record_refusals(db: SqliteDatabase, count: int, turn: int) -> None:
    for n in range(count):
        await db.run_writes(functools.partial(db.index.record_rejection, station="st-0001",
                                              code="station_revoked", detail=f"turn {turn} refusal {n}"))


async def _largest_log(tmp_path: Path, overlapping: bool) -> int:
    """The largest the log got over the turns: each turn records refusals, then the reads change over
    (``overlapping``: the next opens before the last one ends, so one is open throughout; else each
    read is opened and ended between the turns' writes)."""
    db = SqliteDatabase.open(tmp_path / "index.db")
    wal = tmp_path / "index.db-wal"
    largest = 0
    try:
        await _record_refusals(db, 1, -1)  # a row for the reads to step onto
        held: _HeldRead | None = None
        if overlapping:
            held = _HeldRead(db)
            await held.start()
        for turn in range(_TURNS):
            await _record_refusals(db, _WRITES_PER_TURN, turn)
            largest = max(largest, wal.stat().st_size)
            following = _HeldRead(db)
            await following.start()
            if held is not None:
                await held.end()
            if overlapping:
                held = following
            else:
                await following.end()
        if held is not None:
            await held.end()
    finally:
        db.close()
    return largest


async def test_control_reads_that_do_not_overlap_leave_the_log_at_its_checkpoint_size(tmp_path: Path) -> None:
    largest = await _largest_log(tmp_path, overlapping=False)
    assert largest <= 3 * _AUTOCHECKPOINT_BYTES, largest


async def test_overlapping_reads_leave_the_log_near_its_checkpoint_size(tmp_path: Path) -> None:
    largest = await _largest_log(tmp_path, overlapping=True)
    assert largest <= 3 * _AUTOCHECKPOINT_BYTES, (
        f"index.db-wal reached {largest / 1e6:.1f} MB with the reader connections' reads overlapping (the "
        f"autocheckpoint restarts it at about {_AUTOCHECKPOINT_BYTES / 1e6:.1f} MB): it grows by every write "
        "for as long as some read is always open, and is never shrunk")
