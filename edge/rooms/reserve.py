"""The recording reserve: no room source's ffmpeg takes the store's disk into its reserve (review 29).

Segments are never dropped to make room (the rooms issue), and the store's reserve (the offload's
min_free_bytes) is what keeps the ledger, the other rooms and every closed segment sealable. A session
starts only with room for its expected length, and :mod:`edge.rooms.space` warns while the free space
falls; but a camera can send far more than expected (a flood at normal timestamps) or something else can
fill the disk, and ffmpeg would write on to 0. So while rooms record, every `check_s` seconds the store's
free space is read (statvfs), and once it is under the reserve plus [rooms] ``record_margin_bytes`` (room
to seal the segments written meanwhile: the sealer copies a segment before it removes the capture file),
the source writing the most now (bytes per station second over the last seconds, :mod:`.write_rate`) is
stopped: its ffmpeg closes and lists its open segment (sealed like the rest), and its run ends with a gap
whose reason starts ``disk-reserve:`` and names the free space, the reserve and the rate. The other
sources record on (the offender is gone); only under half the margin is every source stopped, the largest
first, one at every look. Each stop is a ``space_warning`` entry too (level ``reserve``, the source and the
figures).

A stopped source stays stopped (its gap open, its supervised task alive) while the free space is under
the reserve plus ``RESUME_SHARE`` of the margin (any other source does not start under half the margin):
its sound and picture are lost, never a segment already written. The operator sees the gap on the page and
the lamp blinking; the space_warning entries before it (`low`, `critical`) came from :mod:`edge.rooms.space`,
counted to the same threshold.

The held sources (`status()["held"]`: the room page's banner, `edge room status`) and the free space shown
are read afresh at every look while anything writes or is held, so they are forgotten once space is freed
even with nothing writing (the session stopped); a session's end forgets its room's (:meth:`release`).

Free space that cannot be read (statvfs failing) fails safe without making gaps: a look that cannot read it
stops no source (one failed call must not cut a running recording), a source the reserve stopped stays
stopped (unknown is not "freed"), and a session's start, which reads the free space itself, is refused.
The failure is logged once, then at most once a minute while it lasts (``UNREADABLE_LOG_EVERY_S``), and
once when it is over; its first look writes an ``error`` entry (stage ``room``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.custody.ledger import EntryType
from edge.durable.files import free_bytes
from edge.rooms.write_rate import MBIT, WriteMeter

log = logging.getLogger(__name__)

# A gap of a source the reserve stopped starts with this.
RESERVE_REASON = "disk-reserve"
# A stopped source starts again once the free space is this share of the margin above the reserve.
RESUME_SHARE = 1.5
MIB = 1 << 20
# While the free space cannot be read, the log says so again at most this often.
UNREADABLE_LOG_EVERY_S = 60.0


@dataclass(eq=False)
class Writer:
    """One run of a source writing now; `stop_reason` is set when the reserve stops it."""

    room: str
    source: str
    meter: WriteMeter
    stop_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def end_for(self) -> str | None:
        """For capture_run: the reason to end the run, once there is one."""
        return self.stop_reason


class RecordingReserve:
    """Watches the store's free space while room sources write; stops the largest writer at the reserve.

    `record` writes a ledger entry (type, data); `read_free` reads a path's free bytes."""

    def __init__(
        self,
        path: Path,
        *,
        reserve_bytes: int,
        margin_bytes: int,
        check_s: float,
        record: Callable[[str, dict[str, Any]], Awaitable[object]],
        read_free: Callable[[Path], int] = free_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.reserve_bytes = reserve_bytes
        self.margin_bytes = margin_bytes
        self.check_s = check_s
        self._record = record
        self._read_free = read_free
        self._writers: list[Writer] = []
        self._held: set[tuple[str, str]] = set()  # (room, source) stopped, until space is freed
        self.stopped = 0  # writers stopped so far (status)
        self.last_free: int | None = None
        self._clock = clock
        # Since when the free space cannot be read (None: it can), failed looks since, and the last log.
        self._unreadable_since: float | None = None
        self._unreadable_looks = 0
        self._unreadable_logged = 0.0

    @property
    def threshold_bytes(self) -> int:
        """Free bytes under which writers are stopped: the reserve plus the margin."""
        return self.reserve_bytes + self.margin_bytes

    @contextlib.contextmanager
    def writing(self, room: str, source: str, meter: WriteMeter) -> Iterator[Writer]:
        """Register one run of a source for as long as it writes."""
        writer = Writer(room, source, meter)
        self._writers.append(writer)
        try:
            yield writer
        finally:
            self._writers.remove(writer)

    def room_to_record(self, room: str, source: str) -> tuple[bool, int | None]:
        """Whether a source may (re)start writing, and the free bytes read (None: they cannot be read,
        which never holds a source). One the reserve stopped waits until the free space is RESUME_SHARE
        of the margin above the reserve; any other until it is above half the margin (where the reserve
        would stop it again)."""
        try:
            free = self._read_free(self.path)
        except OSError:
            # Unknown: a source the reserve stopped waits on (not "freed"); any other records (a failed
            # call is no reason for a gap). check() logs the failure.
            return (room, source) not in self._held, None
        if (room, source) in self._held:
            if free < self.reserve_bytes + int(self.margin_bytes * RESUME_SHARE):
                return False, free
            self._held.discard((room, source))
            return True, free
        return free >= self.reserve_bytes + self.margin_bytes // 2, free

    def release(self, room: str) -> None:
        """`room`'s session ended: none of its sources is held any more (the page stops naming them)."""
        self._held = {held for held in self._held if held[0] != room}

    def status(self) -> dict[str, Any]:
        return {"reserve_bytes": self.reserve_bytes, "margin_bytes": self.margin_bytes,
                "free_bytes": self.last_free, "sources_stopped": self.stopped,
                "held": [f"{room}/{source}" for room, source in sorted(self._held)]}

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.check_s)

    async def check(self) -> Writer | None:
        """One look (none while nothing writes or is held): the writer stopped now, if any."""
        if not self._writers and not self._held:
            self.last_free = None  # nothing to show a figure for: none goes stale
            return None
        free = await self._read()
        self.last_free = free
        if free is None:
            return None  # unknown stops no source: see the module's note
        if free >= self.reserve_bytes + int(self.margin_bytes * RESUME_SHARE):
            self._held.clear()  # space was freed (also with nothing writing): the stopped may start again
        if not self._writers or free >= self.threshold_bytes:
            return None
        candidates = [w for w in self._writers if w.stop_reason is None]
        hard = free < self.reserve_bytes + self.margin_bytes // 2
        if not candidates or (not hard and (self._held or len(candidates) < len(self._writers))):
            # Under the margin, one source is stopped (the largest writer) and the rest record on; under
            # half of it, every source is, the largest first, one at every look.
            return None
        largest = max(candidates, key=lambda w: w.meter.recent_bytes_per_s())
        rate = largest.meter.recent_bytes_per_s()
        largest.details = {"free_bytes": free, "reserve_bytes": self.reserve_bytes,
                           "margin_bytes": self.margin_bytes, "bytes_per_s": round(rate)}
        under = "half the recording margin" if hard else "the recording margin"
        largest.stop_reason = (
            f"{RESERVE_REASON}: the store's disk has {free / MIB:.1f} MiB free, under its reserve of "
            f"{self.reserve_bytes / MIB:.1f} MiB plus {under} ({self.margin_bytes / MIB:.1f} MiB, [rooms] "
            f"record_margin_bytes); this source wrote the most ({rate / MBIT:.1f} Mbit/s) and is stopped "
            "until space is freed (what it wrote is sealed; nothing is dropped)")
        self._held.add((largest.room, largest.source))
        self.stopped += 1
        log.error("rooms: room %s source %s: %s", largest.room, largest.source, largest.stop_reason)
        await self._record(EntryType.SPACE_WARNING, {
            "level": "reserve", "rooms": sorted({w.room for w in self._writers}),
            "stopped": {"room": largest.room, "source": largest.source}, **largest.details})
        return largest

    async def _read(self) -> int | None:
        """The store's free bytes, or None when they cannot be read (logged: the first failure, then at
        most every UNREADABLE_LOG_EVERY_S, and the recovery; the first is an `error` entry too)."""
        try:
            free = await asyncio.to_thread(self._read_free, self.path)
        except OSError as exc:
            now = self._clock()
            self._unreadable_looks += 1
            if self._unreadable_since is None:
                self._unreadable_since = self._unreadable_logged = now
                reason = (f"the store's free space cannot be read ({exc.strerror or exc}): no source is "
                          "stopped for it, a stopped one stays stopped and no session starts until it can be "
                          "read")
                log.error("rooms: %s", reason)
                await self._record(EntryType.ERROR, {"stage": "room", "reason": reason})
            elif now - self._unreadable_logged >= UNREADABLE_LOG_EVERY_S:
                self._unreadable_logged = now
                log.error("rooms: the store's free space still cannot be read (%s), for %.0f s and %d looks",
                          exc.strerror or exc, now - self._unreadable_since, self._unreadable_looks)
            return None
        if self._unreadable_since is not None:
            log.warning("rooms: the store's free space can be read again (%d looks failed over %.0f s)",
                        self._unreadable_looks, self._clock() - self._unreadable_since)
            self._unreadable_since, self._unreadable_looks = None, 0
        return free
