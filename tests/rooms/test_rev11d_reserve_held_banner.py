"""Review rev11d (issue 11, the recording reserve): the sources the reserve stopped (`status()["held"]`, which
`edge room status` and the room page's critical disk banner name: "recording stopped for ...; tell the
administrator to free space now") are forgotten only by a look made while something writes. Once the session
has stopped, or space has been freed meanwhile, nothing writes: the held list, and the banner, stay for good.

Real 64 MiB tmpfs, the real reserve and write meter. Control: while the source is held and the disk still
full, it is named (the banner is right then)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from edge.rooms.reserve import RecordingReserve
from edge.rooms.write_rate import MBIT, WriteMeter
from tests.rooms.test_review25_export_space import _leave_free, small_disk

__all__ = ["small_disk"]  # a fixture, imported to be used here

MIB = 1 << 20
RESERVE, MARGIN = 8 * MIB, 16 * MIB


async def test_the_held_sources_are_forgotten_once_space_is_freed_after_the_session(small_disk: Path) -> None:
    entries: list[dict[str, Any]] = []

    async def record(type_: str, data: dict[str, Any]) -> object:
        entries.append(data)
        return None

    reserve = RecordingReserve(small_disk, reserve_bytes=RESERVE, margin_bytes=MARGIN, check_s=0.05,
                               record=record)
    guard = asyncio.create_task(reserve.run())
    try:
        _leave_free(small_disk, RESERVE + MARGIN - 2 * MIB)  # under the margin
        with reserve.writing("xw-1", "cam", WriteMeter(8 * MBIT)) as writer:
            for _ in range(200):
                if writer.stop_reason is not None:
                    break
                await asyncio.sleep(0.05)
            assert writer.stop_reason is not None and entries  # the reserve stopped it
        assert reserve.status()["held"] == ["xw-1/cam"]  # control: held while the disk is full
        # The session stops (nothing writes any more) and the administrator frees the disk.
        (small_disk / "filler").unlink()
        await asyncio.sleep(1.0)  # twenty looks
        assert reserve.room_to_record("xw-1", "other")[0]  # the disk has room for anyone now
        assert reserve.status()["held"] == [], (
            f"{reserve.status()}: the page still says recording stopped for these sources and asks to free "
            "space that is free, with no session recording")
    finally:
        guard.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await guard
