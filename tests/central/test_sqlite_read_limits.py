"""The embedded index's reader threads: a time limit per statement (PostgreSQL's statement timeouts), reads
refused once the database is closing, and a write-ahead log that shrinks back once reads let it
(``edge.central.sqlite.reads``, ``edge.central.sqlite.database``; review rev13d's LOW findings).

Controls: a short statement under the same limit answers (the limit refuses only what runs past it), time
spent outside a statement does not count, and the log does grow while a read holds it (what the shrink is
measured against).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.central.backends import open_central_database
from edge.central.sqlite.database import WAL_SIZE_LIMIT_BYTES, SqliteDatabase
from edge.central.sqlite.reads import ReadsClosed, ReadTimedOut
from edge.central.storage import Readers
from tests.central.conftest import central_config

# A recursive count that only a stop ends (hours), and one that answers at once.
_ENDLESS_ROWS = 10**12
_SHORT_ROWS = 1000
# Small enough to keep the test short; a statement that ends by itself never comes near it.
_LIMIT_S = 0.5
_BOUND_S = 60.0


def _count(db: SqliteDatabase, rows: int) -> int:
    sql = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
           "SELECT count(*) FROM c")
    return int(db.conn.execute(sql, (rows,)).fetchone()[0])


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[SqliteDatabase]:
    db = SqliteDatabase.open(tmp_path / "index.db",
                             read_time_limits_s={Readers.CONSOLE: _LIMIT_S, Readers.STATIONS: _BOUND_S})
    yield db
    db.close()


async def test_control_a_statement_within_the_limit_answers(limited: SqliteDatabase) -> None:
    assert await limited.run_reads(lambda: _count(limited, _SHORT_ROWS), Readers.CONSOLE) == _SHORT_ROWS


async def test_a_statement_past_its_readers_time_limit_is_stopped(limited: SqliteDatabase) -> None:
    with pytest.raises(ReadTimedOut, match=r"a read for the console ran past its time limit of 0\.5 s"):
        await asyncio.wait_for(limited.run_reads(lambda: _count(limited, _ENDLESS_ROWS), Readers.CONSOLE),
                               _BOUND_S)
    # Answered as PostgreSQL's cancelled statement is: a database error (503 index_unavailable).
    assert issubclass(ReadTimedOut, limited.errors)
    # The thread and its connection serve the next read.
    assert await limited.run_reads(lambda: _count(limited, _SHORT_ROWS), Readers.CONSOLE) == _SHORT_ROWS


async def test_the_limit_is_per_statement_not_per_read(limited: SqliteDatabase) -> None:
    def slow_between_statements() -> int:
        first = _count(limited, _SHORT_ROWS)
        time.sleep(2 * _LIMIT_S)  # outside any statement: not counted
        return first + _count(limited, _SHORT_ROWS)

    assert await limited.run_reads(slow_between_statements, Readers.CONSOLE) == 2 * _SHORT_ROWS


async def test_the_configured_limit_reaches_the_embedded_index(tmp_path: Path) -> None:
    config = central_config(tmp_path / "store", dev=True,
                            index={"type": "sqlite", "console_statement_timeout_s": _LIMIT_S})
    db = open_central_database(config)
    assert isinstance(db, SqliteDatabase)
    try:
        with pytest.raises(ReadTimedOut):
            await asyncio.wait_for(db.run_reads(lambda: _count(db, _ENDLESS_ROWS), Readers.CONSOLE), _BOUND_S)
        # The stations' default (10 s) is not the console's: a short station read answers.
        assert await db.run_reads(lambda: _count(db, _SHORT_ROWS), Readers.STATIONS) == _SHORT_ROWS
    finally:
        db.close()


async def test_reads_after_the_close_are_refused(tmp_path: Path) -> None:
    db = SqliteDatabase.open(tmp_path / "index.db")
    assert await db.run_reads(lambda: _count(db, 1), Readers.STATIONS) == 1  # control: it reads
    db.close()
    with pytest.raises(ReadsClosed, match="closing"):
        await db.run_reads(lambda: _count(db, 1), Readers.STATIONS)


async def _refusals(db: SqliteDatabase, count: int) -> None:
    for n in range(count):
        await db.run_writes(functools.partial(db.index.record_rejection, station="st-0001",
                                              code="station_revoked", detail=f"refusal {n} " + "x" * 2000))


async def test_the_log_grown_while_a_read_held_it_shrinks_back_once_the_read_ends(tmp_path: Path) -> None:
    db = SqliteDatabase.open(tmp_path / "index.db")
    wal = tmp_path / "index.db-wal"
    try:
        await _refusals(db, 1)
        # A read transaction held open on a connection of its own (a disclosure package's snapshot).
        holder = sqlite3.connect(f"{(tmp_path / 'index.db').as_uri()}?mode=ro", uri=True,
                                 isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN")
        holder.execute("SELECT count(*) FROM rejections").fetchone()
        await _refusals(db, 2000)
        grown = wal.stat().st_size
        assert grown > WAL_SIZE_LIMIT_BYTES, grown  # control: the held read kept the log from restarting
        holder.execute("COMMIT")
        holder.close()
        await _refusals(db, 1200)  # past an autocheckpoint: the log starts over and is cut to the limit
        assert wal.stat().st_size <= WAL_SIZE_LIMIT_BYTES, (grown, wal.stat().st_size)
    finally:
        db.close()
