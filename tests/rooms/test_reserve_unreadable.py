"""The recording reserve when the store's free space cannot be read (issue 11, review rev11d), and what it
forgets at a session's end.

statvfs failing is a disk fault the tests cannot make a real file system give on demand: `read_free` (the
reserve's one seam to statvfs) raises the OSError it would. Controls: the same look with the free space
readable and short stops the writer; a failure after a recovery is logged (and on the ledger) again."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest

from edge.rooms.reserve import UNREADABLE_LOG_EVERY_S, RecordingReserve
from edge.rooms.write_rate import MBIT, WriteMeter

MIB = 1 << 20
RESERVE, MARGIN = 16 * MIB, 16 * MIB


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Disk:
    """statvfs as the reserve sees it: free bytes, or the error it fails with."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.error: OSError | None = None

    def __call__(self, _path: Path) -> int:
        if self.error is not None:
            raise self.error
        return self.free


def _reserve(tmp_path: Path, disk: Disk, clock: Clock, entries: list[tuple[str, dict[str, Any]]]
             ) -> RecordingReserve:
    async def record(type_: str, data: dict[str, Any]) -> None:
        entries.append((type_, data))

    return RecordingReserve(tmp_path, reserve_bytes=RESERVE, margin_bytes=MARGIN, check_s=0.5, record=record,
                            read_free=disk, clock=clock)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "edge.rooms.reserve" and r.levelno >= logging.ERROR]


async def test_an_unreadable_free_space_is_logged_once_a_minute_and_stops_no_source(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.rooms.reserve")
    disk, clock = Disk(100 * MIB), Clock()
    entries: list[tuple[str, dict[str, Any]]] = []
    reserve = _reserve(tmp_path, disk, clock, entries)
    with reserve.writing("xw-1", "cam", WriteMeter(8 * MBIT)) as writer:
        disk.error = OSError(errno.EIO, "Input/output error")
        for _ in range(119):  # a look every 0.5 s for 59.5 s
            assert await reserve.check() is None
            clock.now += 0.5
        assert len(_errors(caplog)) == 1 and "cannot be read (Input/output error)" in _errors(caplog)[0]
        assert [(t, d["stage"]) for t, d in entries] == [("error", "room")]  # the first look only
        assert reserve.status()["free_bytes"] is None  # unknown, not the last figure read
        clock.now += UNREADABLE_LOG_EVERY_S - 59.5
        await reserve.check()
        assert len(_errors(caplog)) == 2 and "still cannot be read" in _errors(caplog)[1]
        assert writer.stop_reason is None  # no gap for a figure that cannot be read
        # Unknown is not "freed": a stopped source waits on; any other may start.
        reserve._held.add(("xw-1", "held"))
        assert reserve.room_to_record("xw-1", "held") == (False, None)
        assert reserve.room_to_record("xw-1", "other") == (True, None)
        # It recovers (once in the log), then fails again: logged and on the ledger again.
        disk.error = None
        disk.free = 100 * MIB
        await reserve.check()
        assert [r.getMessage() for r in caplog.records if "can be read again" in r.getMessage()] != []
        disk.error = OSError(errno.EIO, "Input/output error")
        await reserve.check()
        assert len(_errors(caplog)) == 3 and len(entries) == 2
        # Control: readable and short, the same look stops the writer.
        disk.error = None
        disk.free = RESERVE + MARGIN // 2 - MIB
        assert await reserve.check() is writer and writer.stop_reason is not None


async def test_a_session_s_end_forgets_its_held_sources_only(tmp_path: Path) -> None:
    disk, clock = Disk(RESERVE + MARGIN // 2 - MIB), Clock()
    entries: list[tuple[str, dict[str, Any]]] = []
    reserve = _reserve(tmp_path, disk, clock, entries)
    with reserve.writing("xw-1", "cam", WriteMeter(8 * MBIT)), \
            reserve.writing("xw-2", "cam", WriteMeter(8 * MBIT)):
        await reserve.check()
        await reserve.check()
    assert reserve.status()["held"] == ["xw-1/cam", "xw-2/cam"]  # control: both held, the disk still full
    await reserve.check()  # nothing writes, the disk still full: still held, the figure fresh
    status = reserve.status()
    assert status["held"] == ["xw-1/cam", "xw-2/cam"] and status["free_bytes"] == disk.free
    reserve.release("xw-1")
    assert reserve.status()["held"] == ["xw-2/cam"]
    disk.free = 100 * MIB  # space freed with nothing writing: forgotten at the next look
    await reserve.check()
    assert reserve.status()["held"] == [] and reserve.status()["free_bytes"] == 100 * MIB
    await reserve.check()
    assert reserve.status()["free_bytes"] is None  # nothing writes or is held: no figure to go stale
