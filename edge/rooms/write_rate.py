"""What a source's ffmpeg writes to the store's disk, by the station's monotonic clock (review 29).

The flood rule of :mod:`edge.rooms.capture` (``RATE_MAX``) judges a source by its own timestamps, so a
camera that sends 200 Mbit/s labelled as 25 fps passes it. This one judges what lands on disk: the bytes
each run wrote (its segment files: those listed, and the one open now) per station second, against the
source's ceiling ([[rooms.room.source]] ``max_bitrate_mbps``), as a leaky bucket: bytes go in as they are
written, the ceiling drains them every station second, and the run is a flood once the bucket holds more
than ``FLOOD_BURST_S`` seconds of the ceiling. A camera's connect burst (its GOP cache, up to 30 s
of its own stream, which is under its ceiling) fits; a sustained flood at twice the
ceiling is ended within ``FLOOD_BURST_S`` seconds, one at ten times within a few. Counted from the run's
start: its first segment's bytes are the flood's like any other (review 29, MEDIUM).

The meter also keeps the source's recent rate (over ``RECENT_S``), which the recording reserve
(:mod:`edge.rooms.reserve`) ranks writers by: at the reserve, the largest writer is stopped first.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

# The bucket's size in seconds of the ceiling: a connect burst (edge.rooms.capture CONNECT_BURST_MAX_S,
# 30 s) plus the stream-time rule's usual allowance (RATE_FLOOD_BURST_S, 10 s).
FLOOD_BURST_S = 40.0
# The recent rate is measured over this many station seconds.
RECENT_S = 5.0
MBIT = 1_000_000 / 8  # bytes per second in one Mbit/s


class WriteMeter:
    """Bytes written by one source's runs, by `clock` (monotonic seconds). :meth:`begin_run` at each
    ffmpeg start, :meth:`written` with the run's total so far whenever it is looked at."""

    def __init__(self, max_bytes_per_s: float, *, burst_s: float = FLOOD_BURST_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not max_bytes_per_s > 0:
            raise ValueError(f"max_bytes_per_s must be above 0, got {max_bytes_per_s}")
        self.max_bytes_per_s = max_bytes_per_s
        self.capacity = max_bytes_per_s * burst_s
        self._clock = clock
        self._run_bytes = 0  # what the run wrote so far (as last told)
        self._run_started = clock()
        self._level = 0.0  # the bucket
        self._at = self._run_started  # when the bucket was last drained
        self._recent: deque[tuple[float, int]] = deque()  # (when, total bytes of all runs) samples
        self._total = 0  # bytes of every run of the source

    def begin_run(self) -> None:
        """A new run starts now: its bucket is empty (a run the rule ended, restarted after the backoff,
        starts over: the backoff paces it)."""
        now = self._clock()
        self._run_bytes, self._level, self._at, self._run_started = 0, 0.0, now, now

    def written(self, run_bytes: int) -> None:
        """The run's files hold `run_bytes` now (never taken back: a file shrinking is not unwritten)."""
        now = self._clock()
        added = max(0, run_bytes - self._run_bytes)
        self._run_bytes = max(self._run_bytes, run_bytes)
        self._total += added
        self._level = max(0.0, self._level - self.max_bytes_per_s * max(0.0, now - self._at)) + added
        self._at = now
        self._recent.append((now, self._total))
        while len(self._recent) > 2 and now - self._recent[1][0] >= RECENT_S:
            self._recent.popleft()

    def flood(self) -> float | None:
        """The run's rate (bytes per station second, from its start) once it floods, else None."""
        if self._level <= self.capacity:
            return None
        return self._run_bytes / max(self._at - self._run_started, 0.001)

    def recent_bytes_per_s(self) -> float:
        """Bytes per station second over the last RECENT_S (0 until two looks are apart, and once the
        source stopped writing for that long)."""
        if len(self._recent) < 2:
            return 0.0
        (first_at, first_total), (last_at, last_total) = self._recent[0], self._recent[-1]
        if self._clock() - last_at >= RECENT_S or last_at <= first_at:
            return 0.0
        return (last_total - first_total) / (last_at - first_at)

    @property
    def run_bytes(self) -> int:
        return self._run_bytes


def flood_reason(rate_bytes_per_s: float, max_bytes_per_s: float, burst_s: float = FLOOD_BURST_S) -> str:
    """A flood's gap reason: what the source wrote against its ceiling."""
    return (f"the source wrote {rate_bytes_per_s / MBIT:.1f} Mbit/s to the store (by the station's clock, "
            f"whatever its own timestamps say), over its ceiling of {max_bytes_per_s / MBIT:g} Mbit/s "
            f"(max_bitrate_mbps) by more than {burst_s:g} s of it; the run ends before it fills the store")
