"""Review rev11e (issue 11, the recording reserve), LOW: while the store's free space cannot be read (statvfs
failing: EIO, a store on a disk that was removed) the rooms' space watch (edge.rooms.space.SpaceWatch) keeps
showing its last reading as the present one: the room page, `edge room status` and the status board show a
level and free bytes read before the failure ("ok", gigabytes free) beside the reserve's "free_bytes": null,
with nothing saying the figure is stale or unknown. The reserve (edge.rooms.reserve) says unknown; the space
watch should too. Pure, with the watch's read_free and clock injected; control: a reading that succeeds is
shown and replaces the one before it."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from edge.rooms.space import SpaceWatch

GIB = 1 << 30


def _watch(free: list[int | None]) -> SpaceWatch:
    """A watch whose reads give `free` in turn (None: the read fails with EIO)."""
    clock = [0.0]

    def read_free(path: Path) -> int:
        clock[0] += 10.0
        value = free.pop(0)
        if value is None:
            raise OSError(errno.EIO, "Input/output error")
        return value

    async def record(type_: str, data: dict[str, Any]) -> object:
        return None

    return SpaceWatch(Path("/nonexistent-store"), reserve_bytes=GIB, check_s=10.0, window_s=120.0,
                      warn_minutes=60.0, critical_minutes=10.0, recording_rooms=lambda: ["xw-1"],
                      record=record, read_free=read_free, clock=lambda: clock[0])


async def test_control_each_reading_replaces_the_one_before() -> None:
    watch = _watch([50 * GIB, 40 * GIB])
    await watch.check()
    await watch.check()
    status = watch.status()
    assert status is not None and status["free_bytes"] == 40 * GIB


async def test_a_free_space_that_cannot_be_read_is_not_shown_as_the_last_one_read() -> None:
    watch = _watch([50 * GIB, None])
    await watch.check()
    await watch.check()  # the store's disk is gone: statvfs fails with EIO
    status = watch.status()
    assert status is None or status.get("free_bytes") is None or status.get("unreadable"), (
        f"the free space cannot be read, yet the status shows the reading before the failure: {status}")
