"""Warn before the store's disk runs out while a room records (the rooms issue: "warns before space runs
out").

A session refuses to start without room for its expected length ([rooms] start_min_free_bytes), but a
long hearing, a fourth camera or an offload at the dock beside it can still eat the rest. Segments are
never dropped to make room, so the operator must hear early enough to act (stop the session at a natural
point, move evidence off): every `space_check_s` seconds while any session records, the disk's free bytes
are read (statvfs of the store) and the rate they fall at, over the last `space_rate_window_s`, gives the
minutes left before the store reaches its reserve (the offload's min_free_bytes, below which nothing more
is sealed). Under `space_warn_minutes` the level is ``low``, under `space_critical_minutes` (or at the
reserve already) ``critical``.

Each change of level is a `space_warning` ledger entry (level, free bytes, reserve, rate, minutes left,
the rooms recording) and a log line, so the record shows the warning was given and when; ``cleared`` when
it is over. A level is left only with a margin (`_HYSTERESIS`), so a rate that wobbles around a threshold
does not write an entry per check. The level is in the rooms' status (the operator's `edge room status`,
the local API, the status board).

:func:`assess` is pure (samples in, a reading out); :class:`SpaceWatch` is the supervised task.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge.custody.ledger import EntryType
from edge.durable.files import free_bytes
from edge.ingest.kept_space import KeptFree

log = logging.getLogger(__name__)

# A level is left only when the time left is this much above its threshold again.
_HYSTERESIS = 1.25
# The group the rooms hold space under (edge.ingest.kept_space).
ROOMS_GROUP = "rooms"


def rooms_kept_free(
    recording: Sequence[str], *, start_min_free_bytes: int, record_margin_bytes: int
) -> KeptFree:
    """What anything else writing to the store's disk while `recording` rooms record keeps free beyond the
    store's reserve: the recording margin (under it edge.rooms.reserve stops their sources) and one start's
    worth ([rooms] start_min_free_bytes, the expected length a session was started on) for each room. The
    one rule of an export, a docking copy and a GB/T 28181 download (issue 11, reviews 28 and 29)."""
    if not recording:
        return KeptFree(0, "no room recording", ROOMS_GROUP, ())
    return KeptFree(
        record_margin_bytes + start_min_free_bytes * len(recording),
        f"the rooms recording ({len(recording)}: {', '.join(recording)}): [rooms] record_margin_bytes and "
        "the start_min_free_bytes kept for each",
        ROOMS_GROUP, tuple(recording))


class SpaceLevel(StrEnum):
    OK = "ok"
    LOW = "low"
    CRITICAL = "critical"


# The state shown while the store's free space cannot be read (statvfs failing: EIO, a removed disk): never
# the last reading, which would say "ok" and gigabytes free of a disk that may be gone (review rev11e).
UNKNOWN = "unknown"


_RANK = {SpaceLevel.OK: 0, SpaceLevel.LOW: 1, SpaceLevel.CRITICAL: 2}


@dataclass(frozen=True)
class SpaceReading:
    """One assessment of the store's disk."""

    level: SpaceLevel
    free_bytes: int
    reserve_bytes: int
    # Bytes per second the free space falls at (None: not falling, or not measured over enough time).
    rate_bytes_per_s: float | None
    minutes_left: float | None  # before the reserve is reached at that rate (None: not falling)

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level.value,
            "free_bytes": self.free_bytes,
            "reserve_bytes": self.reserve_bytes,
            "rate_bytes_per_s": None if self.rate_bytes_per_s is None else round(self.rate_bytes_per_s),
            "minutes_left": None if self.minutes_left is None else round(self.minutes_left, 1),
        }


def assess(
    samples: Sequence[tuple[float, int]],
    *,
    reserve_bytes: int,
    warn_minutes: float,
    critical_minutes: float,
    min_span_s: float,
    previous: SpaceLevel = SpaceLevel.OK,
) -> SpaceReading:
    """The level from (monotonic seconds, free bytes) samples, oldest first, the newest last.

    The rate is taken between the oldest and the newest sample, and only once they are `min_span_s`
    apart (a segment closing, or a file deleted, moves free space in steps; a short span reads a step as a
    rate). At or below the reserve the level is critical whatever the rate."""
    if not samples:
        raise ValueError("assess needs at least one sample")
    now_s, free = samples[-1]
    first_s, first_free = samples[0]
    usable = free - reserve_bytes
    rate: float | None = None
    if now_s - first_s >= min_span_s:
        falling = (first_free - free) / (now_s - first_s)
        rate = falling if falling > 0 else None
    minutes = None if rate is None else max(0.0, usable) / rate / 60.0
    if usable <= 0:
        level = SpaceLevel.CRITICAL
    elif minutes is None:
        level = SpaceLevel.OK
    else:
        level = _level_with_margin(minutes, warn_minutes, critical_minutes, previous)
    return SpaceReading(level, free, reserve_bytes, rate, minutes)


def _level_with_margin(minutes: float, warn: float, critical: float, previous: SpaceLevel) -> SpaceLevel:
    if minutes < critical:
        return SpaceLevel.CRITICAL
    level = SpaceLevel.LOW if minutes < warn else SpaceLevel.OK
    # Going down a level (towards ok) needs the margin; going up never waits.
    if _RANK[level] < _RANK[previous]:
        threshold = critical if previous is SpaceLevel.CRITICAL else warn
        if minutes < threshold * _HYSTERESIS:
            return previous
    return level


class SpaceWatch:
    """Reads the store's free space while any room session records; a level change is a ledger entry.

    `recording_rooms` says which rooms record now (none: the samples are dropped, so a rate never spans
    a pause); `record` writes a ledger entry (type, data)."""

    def __init__(
        self,
        path: Path,
        *,
        reserve_bytes: int,
        check_s: float,
        window_s: float,
        warn_minutes: float,
        critical_minutes: float,
        recording_rooms: Callable[[], list[str]],
        record: Callable[[str, dict[str, Any]], Awaitable[object]],
        read_free: Callable[[Path], int] = free_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.reserve_bytes = reserve_bytes
        self.check_s = check_s
        self.window_s = window_s
        self.warn_minutes = warn_minutes
        self.critical_minutes = critical_minutes
        self.recording_rooms = recording_rooms
        self._record = record
        self._read_free = read_free
        self._clock = clock
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self.reading: SpaceReading | None = None
        self.level = SpaceLevel.OK
        # Why the last read of the free space failed (None: it did not); shown until a read succeeds.
        self.read_error: str | None = None

    def status(self) -> dict[str, Any] | None:
        if self.read_error is not None:
            return {"level": UNKNOWN, "free_bytes": None, "reserve_bytes": self.reserve_bytes,
                    "rate_bytes_per_s": None, "minutes_left": None,
                    "error": f"the store's free space cannot be read: {self.read_error}"}
        return None if self.reading is None else self.reading.to_json()

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.check_s)

    async def check(self) -> SpaceReading | None:
        """One reading (none while no room records); a ledger entry when the level changed."""
        rooms = self.recording_rooms()
        if not rooms:
            self._samples.clear()
            self.reading = None
            self.read_error = None
            if self.level is not SpaceLevel.OK:
                # The sessions ended while space was short: the warning is over with them.
                await self._changed(SpaceLevel.OK, None, rooms)
            return None
        try:
            free = await asyncio.to_thread(self._read_free, self.path)
        except OSError as exc:
            if self.read_error is None:
                log.error("rooms: the store's free space cannot be read: %s", exc)
            self.read_error = exc.strerror or type(exc).__name__
            # The samples before the failure give no rate across it: the next reading starts afresh.
            self._samples.clear()
            self.reading = None
            return None
        if self.read_error is not None:
            log.warning("rooms: the store's free space can be read again")
        self.read_error = None
        now = self._clock()
        self._samples.append((now, free))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        reading = assess(
            self._samples,
            reserve_bytes=self.reserve_bytes,
            warn_minutes=self.warn_minutes,
            critical_minutes=self.critical_minutes,
            min_span_s=min(self.window_s, max(self.check_s * 3, self.window_s / 4)),
            previous=self.level,
        )
        self.reading = reading
        if reading.level is not self.level:
            await self._changed(reading.level, reading, rooms)
        return reading

    async def _changed(self, level: SpaceLevel, reading: SpaceReading | None, rooms: list[str]) -> None:
        self.level = level
        shown = "cleared" if level is SpaceLevel.OK else level.value
        data: dict[str, Any] = {"level": shown, "rooms": rooms}
        if reading is not None:
            data |= {k: v for k, v in reading.to_json().items() if k != "level"}
        if level is SpaceLevel.OK:
            log.warning("rooms: the store's disk space warning is over")
        else:
            minutes = None if reading is None else reading.minutes_left
            left = "unknown" if minutes is None else f"{minutes:.0f}"
            log.warning("rooms: the store's disk is running out (%s): %s minutes left at the present rate, "
                        "%s bytes free above a reserve of %s; rooms recording: %s", shown, left,
                        None if reading is None else reading.free_bytes - reading.reserve_bytes,
                        self.reserve_bytes, ", ".join(rooms))
        await self._record(EntryType.SPACE_WARNING, data)
