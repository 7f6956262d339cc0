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
The failed downloads keep theirs in `FailedPasses`; the sealed copies' (stuck disk-full, disk-slow) are
kept by raw PS item in `TryTimes`, taken when each try ended, and weighed by `failing_span` over the copies
that count."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from edge.sources.gb28181.recordings import RecordingRef

GIVE_UP_AFTER_S = 48 * 3600.0
MAX_SPANS_KEPT = 16384  # recordings whose tries' times are kept (the oldest forgotten)
MAX_TRIES_KEPT = 32  # tries kept per recording (the oldest forgotten: a shorter span, never a longer one)


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


def failing_span(failed: Iterable[Since]) -> FailingSpan | None:
    """The span of these failing tries, taken in the order they ended (the monotonic clock); None: none."""
    span: FailingSpan | None = None
    for one in sorted(failed, key=lambda s: s.mono):
        if span is None:
            span = FailingSpan.starting(one)
        else:
            span.failed_again(one)
    return span


def recording_key(ref: RecordingRef) -> bytes:
    """A recording as the spans key it: the SHA-256 of its device, identity and listed FileSize (two
    recordings listed with the same channel, times and path but other sizes are two: review 26), never the
    device's text."""
    size = ref.listed_size_text() or ""
    return hashlib.sha256(f"{ref.device_id}\0{ref.identity()}\0{size}".encode("utf-8", "surrogatepass"),
                          ).digest()


class TryTimes:
    """Per recording, when each try of this run that sealed a copy the give-ups may count ended (`Since`),
    by its raw PS item; bounded to the newest `MAX_SPANS_KEPT` recordings and `MAX_TRIES_KEPT` tries each.
    `clock` is the station's wall clock (the scheduler's `now`), `monotonic` the monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._tries: dict[bytes, dict[str, Since]] = {}

    def now(self) -> Since:
        return Since(self._clock(), self._monotonic())

    def tried(self, ref: RecordingRef, item: str, ended: Since) -> None:
        """A try of `ref` that ended at `ended` sealed its raw PS as `item`."""
        key = recording_key(ref)
        tries = self._tries.pop(key, None) or {}
        self._tries[key] = tries  # the newest last
        while len(self._tries) > MAX_SPANS_KEPT:
            del self._tries[next(iter(self._tries))]
        tries[item] = ended
        while len(tries) > MAX_TRIES_KEPT:
            del tries[next(iter(tries))]

    def of(self, ref: RecordingRef) -> Mapping[str, Since]:
        """`ref`'s tries of this run by raw PS item (none: empty)."""
        return self._tries.get(recording_key(ref), {})

    def forget(self, ref: RecordingRef) -> None:
        self._tries.pop(recording_key(ref), None)
