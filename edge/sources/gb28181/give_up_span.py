"""How long a recording's downloads have been failing, before it may be given up: on the station's wall
clock and on its monotonic clock both.

Two give-ups of edge.sources.gb28181.downloads wait for the same span, `GIVE_UP_AFTER_S` (two days): the
failed downloads (`FailedPasses`: no session, no byte) and the disk-full copies stuck at the same byte
(`stuck_disk_full`: a quota refusing every try). What fails them is mostly passing (a device busy, an
uplink down for a day, a quota full while the store backs up behind a dead uplink), and giving a recording up
is what ends its tries, so a burst of failures inside a few hours gives nothing up (review 33).

`Since` holds when the failing began on both clocks (review 21): the span must have passed on each, so a
station clock stepped forward (an RTC corrected, an NTP server that was off) gives nothing up early. A wall
clock stepped back before the start restarts the span from now (`follow_wall`): passes too many, never too
few. The monotonic clock starts again with the machine, so nothing here is kept across a restart: every
span starts again in the new run (a give-up two days later, never earlier).

`StuckSince` is `Since` per recording for the stuck disk-full copies, first seen in this run (from the pass
that found them stuck: a pass late at most, never early)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.sources.gb28181.recordings import RecordingRef

GIVE_UP_AFTER_S = 48 * 3600.0
MAX_SPANS_KEPT = 16384  # recordings whose failing span is kept (the oldest forgotten)


@dataclass(slots=True)
class Since:
    """When failing began, on the wall clock (`at`) and the monotonic clock (`mono`), in seconds."""

    at: float
    mono: float

    def follow_wall(self, now: float) -> None:
        """A wall clock stepped back before the start restarts the span from now (never gives up early)."""
        if now < self.at:
            self.at = now

    def passed(self, now: float, mono: float, span_s: float = GIVE_UP_AFTER_S) -> bool:
        """Whether `span_s` has passed since the start on both clocks."""
        return now - self.at >= span_s and mono - self.mono >= span_s

    def hours(self, mono: float) -> float:
        """The hours passed since the start on the monotonic clock (what the ledger says)."""
        return max(0.0, mono - self.mono) / 3600


@dataclass(frozen=True)
class StuckSpan:
    """A recording's stuck disk-full copies as `given_up_because` weighs them: whether they span
    `GIVE_UP_AFTER_S` on both clocks, and over how many hours (monotonic) they were seen."""

    passed: bool
    hours: float


def recording_key(ref: RecordingRef) -> bytes:
    """A recording as the spans key it: the SHA-256 of its device, identity and listed FileSize (two
    recordings listed with the same channel, times and path but other sizes are two: review 26), never the
    device's text."""
    size = ref.listed_size_text() or ""
    return hashlib.sha256(f"{ref.device_id}\0{ref.identity()}\0{size}".encode("utf-8", "surrogatepass"),
                          ).digest()


class StuckSince:
    """Per recording, since when (`Since`) its disk-full copies have been found stuck in this run; bounded
    to the newest `MAX_SPANS_KEPT`. `clock` is the station's wall clock (the scheduler's `now`),
    `monotonic` the monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._since: dict[bytes, Since] = {}

    def span(self, ref: RecordingRef) -> StuckSpan:
        """`ref`'s stuck copies were found (again) now: how long they have been found so."""
        now, mono = self._clock(), self._monotonic()
        key = recording_key(ref)
        since = self._since.pop(key, None) or Since(now, mono)
        self._since[key] = since  # the newest last
        while len(self._since) > MAX_SPANS_KEPT:
            del self._since[next(iter(self._since))]
        since.follow_wall(now)
        return StuckSpan(passed=since.passed(now, mono), hours=since.hours(mono))

    def forget(self, ref: RecordingRef) -> None:
        self._since.pop(recording_key(ref), None)
