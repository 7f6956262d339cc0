"""How long a recording's tries have been failing, before it may be given up: one rule for every give-up of
edge.sources.gb28181.downloads, on the station's wall clock and on its monotonic clock both.

What ends a recording's tries is a give-up, and what fails them is mostly passing (a device busy, an
uplink down for a day, a quota full while the store backs up behind a dead uplink, a disk stalled by a
loaded box), so a burst of failures inside a few hours gives nothing up (review 33). Three give-ups wait
for the same span, `GIVE_UP_AFTER_S` (two days), besides their counts: the failed downloads
(`FailedPasses`: no session, no byte), the disk-full copies stuck at the same byte (`stuck_disk_full`: a
quota refusing every try) and the UDP downloads the station's disk fell behind (`disk-slow`).

The span is counted from the failing tries themselves (`FailingSpan`): from the first to the latest, never
to now, so a pause with no try at all (the station idle, the device offline for days) never counts as
failing by itself; a failing try after it bridges it (the fault was there before and after). Each end is
taken on both clocks (review 21), and the span must have passed on each: a station clock stepped forward
(an RTC corrected, an NTP server that was off) gives nothing up early. A failure whose wall clock is before
the span's first starts the span again from it (a clock stepped back): passes too many, never too few.

The times are those of the tries in this run: the monotonic clock starts again with the machine, so none is
kept across a restart and every span starts again in the new run (a give-up two days later, never earlier).
The failed downloads keep theirs in `FailedPasses`; the tries whose sealed copies count (stuck disk-full,
disk-slow) keep theirs in `TryTimes`, one running `FailingSpan` per recording, taken when each try ended: its
first try stays however many follow (a recorder going on and offline through a shift starts a pass at each
registration, dozens of tries in two days: keeping only the newest of them would never span two days, and
each pass would seal one more partial copy, for ever: review rev10b), so its memory is bounded per recording
without shortening the span."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from edge.sources.gb28181.recordings import RecordingRef

GIVE_UP_AFTER_S = 48 * 3600.0
# Recordings whose failing span is kept (the one tried longest ago forgotten: its span starts again at its
# next try, a give-up later, never earlier).
MAX_SPANS_KEPT = 16384


@dataclass(frozen=True, slots=True)
class Since:
    """A moment on the station's wall clock (`at`) and its monotonic clock (`mono`), in seconds."""

    at: float
    mono: float


@dataclass(slots=True)
class FailingSpan:
    """Failing tries from the `first` to the `latest`, `count` of them (both ends on both clocks)."""

    first: Since
    latest: Since
    count: int = 1

    @classmethod
    def starting(cls, failed: Since) -> FailingSpan:
        return cls(failed, failed)

    def failed_again(self, failed: Since) -> None:
        """One more failing try, later on the monotonic clock; its wall clock before the first (stepped
        back) starts the span again from it."""
        if failed.at < self.first.at:
            self.first, self.latest, self.count = failed, failed, 1
            return
        self.latest = failed
        self.count += 1

    def passed(self, span_s: float = GIVE_UP_AFTER_S) -> bool:
        """Whether the tries span `span_s` from the first to the latest on both clocks."""
        return (self.latest.at - self.first.at >= span_s
                and self.latest.mono - self.first.mono >= span_s)

    def hours(self) -> float:
        """The hours from the first to the latest on the monotonic clock (what the ledger says)."""
        return max(0.0, self.latest.mono - self.first.mono) / 3600


def recording_key(ref: RecordingRef) -> bytes:
    """A recording as the spans key it: the SHA-256 of its device, identity and listed FileSize (two
    recordings listed with the same channel, times and path but other sizes are two: review 26), never the
    device's text."""
    size = ref.listed_size_text() or ""
    return hashlib.sha256(f"{ref.device_id}\0{ref.identity()}\0{size}".encode("utf-8", "surrogatepass"),
                          ).digest()


class TryTimes:
    """Per recording, the span of this run's tries whose sealed copies the give-ups count (`FailingSpan`:
    the first and the latest on both clocks, how many), bounded to the `MAX_SPANS_KEPT` recordings tried
    last. `clock` is the station's wall clock (the scheduler's `now`), `monotonic` the monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._spans: dict[bytes, _Tries] = {}

    def now(self) -> Since:
        return Since(self._clock(), self._monotonic())

    def tried(self, ref: RecordingRef, item: str, ended: Since) -> None:
        """A try of `ref` that ended at `ended` sealed its raw PS as `item`, a copy the give-ups count. The
        tries of one recording end one after the other (one device's downloads are sequential); the same
        item told again is one try."""
        key = recording_key(ref)
        tries = self._spans.pop(key, None)
        if tries is None:
            tries = _Tries(FailingSpan.starting(ended), item)
        elif tries.latest_item != item:
            tries.span.failed_again(ended)
            tries.latest_item = item
        self._spans[key] = tries  # the recording tried last, last
        while len(self._spans) > MAX_SPANS_KEPT:
            del self._spans[next(iter(self._spans))]

    def of(self, ref: RecordingRef) -> FailingSpan | None:
        """The span of `ref`'s counted tries of this run (None: none), a copy of it."""
        tries = self._spans.get(recording_key(ref))
        return None if tries is None else replace(tries.span)

    def forget(self, ref: RecordingRef) -> None:
        self._spans.pop(recording_key(ref), None)


@dataclass(slots=True)
class _Tries:
    """One recording's counted tries: their span, and the raw PS item of the latest (a repeat is no try)."""

    span: FailingSpan
    latest_item: str
