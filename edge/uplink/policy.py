"""When the uplink may send, and how fast: backoff, circuit breaker, bandwidth limit, upload windows.

Pure policy objects, no I/O. Time comes in through injected callables (``clock`` returning seconds on
a monotonic scale, ``sleep`` for the rate limiter), so tests drive them on a fake clock and the service
passes ``time.monotonic`` and ``asyncio.sleep``. Randomness comes from an injected ``random.Random``
so a seeded test is reproducible.

- :class:`Backoff`: exponential delay with *full jitter*, a pure function of the attempt number.
- :class:`CircuitBreaker`: stops hammering a central that is down; one probe at a time once it may
  be back.
- :class:`RateLimiter`: a token bucket shared by every concurrent upload, so the limit is the
  station's aggregate bandwidth, not a per-upload one.
- :class:`UploadWindows`: local wall-clock ranges during which uploads may run (``22:00-06:00``).
- :func:`parse_retry_after`: the central's ``Retry-After`` (RFC 9110 §10.2.3), strictly.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum

__all__ = [
    "Backoff",
    "BreakerState",
    "CircuitBreaker",
    "Jitter",
    "RateLimiter",
    "UploadWindow",
    "UploadWindows",
    "WindowSpecError",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_SECONDS_PER_DAY = 24 * 3600
_DELAY_SECONDS_RE = re.compile(r"[0-9]{1,10}")
_HTTP_DATE_MAX_CHARS = 64


# --------------------------------------------------------------------------------------------------
# Retry-After


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from ``now_s`` (Unix time) that a ``Retry-After`` value asks for: delay-seconds
    (ASCII digits only) or an HTTP-date (a date in the past asks for 0). None for no header or a value
    that is neither: a malformed header is ignored, never trusted. The caller bounds the result."""
    if value is None:
        return None
    text = value.strip(" \t")
    if _DELAY_SECONDS_RE.fullmatch(text):
        return float(int(text))
    if len(text) > _HTTP_DATE_MAX_CHARS or not text.isascii() or not text.isprintable():
        return None
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is not one
        return None
    return max(0.0, moment.timestamp() - now_s)


# --------------------------------------------------------------------------------------------------
# Backoff


class Jitter(StrEnum):
    FULL = "full"
    """Uniform in ``[0, cap]``: the default, see :class:`Backoff`."""
    EQUAL = "equal"
    """Uniform in ``[cap/2, cap]``: never retries almost at once, at the price of more clustering."""
    NONE = "none"
    """Exactly ``cap``: deterministic, for tests and for callers that add their own spread."""


class Backoff:
    """Exponential backoff with jitter: ``cap = min(max_s, base_s * factor**(attempt-1))``.

    Full jitter (the delay is uniform in ``[0, cap]``) rather than decorrelated jitter, because
    (1) after a central outage hundreds of stations retry at once, and full jitter spreads them most
    evenly over the window, which is what protects the central when it comes back (the AWS
    Architecture Blog comparison, "Exponential Backoff And Jitter", finds full and decorrelated jitter
    close in total work, both far better than none or equal jitter); and (2) decorrelated jitter
    derives each delay from the previous *random* delay, so it is state carried between calls, while
    full jitter is a pure function of the attempt number: the spool can persist only "attempt n" per
    item and a restarted station resumes the same schedule.

    ``attempt`` is the number of consecutive failures so far: 1 after the first failure. Attempt 0
    (nothing failed) gives 0.0.
    """

    def __init__(
        self,
        base_s: float,
        max_s: float,
        factor: float = 2.0,
        jitter: Jitter = Jitter.FULL,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not (math.isfinite(base_s) and base_s > 0):
            raise ValueError(f"backoff base_s must be a finite number > 0, got {base_s!r}")
        if not (math.isfinite(max_s) and max_s >= base_s):
            raise ValueError(f"backoff max_s must be finite and >= base_s ({base_s!r}), got {max_s!r}")
        if not (math.isfinite(factor) and factor >= 1.0):
            raise ValueError(f"backoff factor must be a finite number >= 1, got {factor!r}")
        self.base_s = base_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = Jitter(jitter)
        self._rng = rng if rng is not None else random.Random()

    def cap_s(self, attempt: int) -> float:
        """The upper bound of the delay after ``attempt`` failures (the delay itself without jitter)."""
        if attempt < 0:
            raise ValueError(f"backoff attempt must be >= 0, got {attempt!r}")
        if attempt == 0:
            return 0.0
        # Compare exponents instead of computing factor**n so a station down for a month (attempt in
        # the thousands) never overflows a float.
        if self.factor == 1.0:
            return self.base_s
        steps_to_max = math.log(self.max_s / self.base_s, self.factor)
        if attempt - 1 >= steps_to_max:
            return self.max_s
        return min(self.max_s, self.base_s * self.factor ** (attempt - 1))

    def next_delay(self, attempt: int) -> float:
        """Seconds to wait before the next try, after ``attempt`` consecutive failures."""
        cap = self.cap_s(attempt)
        if cap == 0.0 or self.jitter is Jitter.NONE:
            return cap
        if self.jitter is Jitter.EQUAL:
            return cap / 2 + self._rng.uniform(0.0, cap / 2)
        return self._rng.uniform(0.0, cap)

    def __repr__(self) -> str:
        return (
            f"Backoff(base_s={self.base_s!r}, max_s={self.max_s!r}, factor={self.factor!r}, "
            f"jitter={self.jitter.value!r})"
        )


# --------------------------------------------------------------------------------------------------
# Circuit breaker


class BreakerState(StrEnum):
    CLOSED = "closed"
    """Normal: requests flow; consecutive failures are counted."""
    OPEN = "open"
    """The central is considered down: nothing is sent until ``retry_at``."""
    HALF_OPEN = "half-open"
    """``open_s`` has passed: one probe request is let through to test the central."""


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures → half-open after ``open_s``.

    In half-open exactly one caller gets ``allow() == True`` (the probe); its success closes the
    breaker, its failure opens it again for another ``open_s``. A probe whose outcome is never
    recorded (its task was cancelled) does not wedge the breaker: after another ``open_s`` a new probe
    is allowed.

    Only failures that say something about the central's health should be recorded (connection
    refused or reset, timeouts, 5xx); a 4xx rejection of one item is the item's problem, and counting
    it would let one bad item stop every upload. Outcomes of requests that were already in flight when
    the breaker opened are still meaningful: a success closes it (the central answered), a failure
    while open changes nothing (the open period is not extended, or stragglers could keep it open).
    """

    def __init__(self, failure_threshold: int, open_s: float, clock: Clock) -> None:
        if failure_threshold < 1:
            raise ValueError(f"breaker failure_threshold must be >= 1, got {failure_threshold!r}")
        if not (math.isfinite(open_s) and open_s > 0):
            raise ValueError(f"breaker open_s must be a finite number > 0, got {open_s!r}")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._retry_at: float | None = None
        self._probe_started_at: float | None = None
        self._hold_until: float | None = None

    @property
    def state(self) -> BreakerState:
        """The state now; an open breaker whose ``open_s`` has passed reports half-open."""
        if (
            self._state is BreakerState.OPEN
            and self._retry_at is not None
            and self._clock() >= self._retry_at
        ):
            self._state = BreakerState.HALF_OPEN
            self._probe_started_at = None
            log.info("circuit breaker half-open: the next request probes the central")
        return self._state

    @property
    def retry_at(self) -> float | None:
        """Clock time from which a probe is allowed while open (or the running probe may be replaced
        while half-open), or until which the central asked for quiet (:meth:`hold_until`); None while
        closed and not held."""
        state = self.state
        at: float | None = None
        if state is BreakerState.OPEN:
            at = self._retry_at
        elif state is BreakerState.HALF_OPEN:
            at = self._clock() if self._probe_started_at is None else self._probe_started_at + self.open_s
        hold = self._held()
        if hold is not None:
            at = hold if at is None else max(at, hold)
        return at

    def hold_until(self, until: float) -> None:
        """The central asked for no request before ``until`` (``Retry-After``): nothing is allowed, not
        even the half-open probe, until then; a later hold extends it, an earlier one changes nothing."""
        if self._hold_until is None or until > self._hold_until:
            self._hold_until = until
            log.warning("the central asked for no request for %.1f s (Retry-After)", until - self._clock())

    @property
    def held_until(self) -> float | None:
        """Clock time until which the central asked for quiet, None when it did not (or it passed)."""
        return self._held()

    def _held(self) -> float | None:
        if self._hold_until is not None and self._clock() >= self._hold_until:
            self._hold_until = None
        return self._hold_until

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a request be sent now? In half-open, True for exactly one caller (the probe). Never while
        the central's Retry-After holds."""
        if self._held() is not None:
            return False
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        now = self._clock()
        if self._probe_started_at is None or now >= self._probe_started_at + self.open_s:
            self._probe_started_at = now
            return True
        return False

    def record_success(self) -> None:
        if self._state is not BreakerState.CLOSED:
            log.info("circuit breaker closed: the central answered")
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._retry_at = None
        self._probe_started_at = None

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return
        self._failures += 1
        if state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._open(reopened=state is BreakerState.HALF_OPEN)

    def _open(self, *, reopened: bool) -> None:
        self._state = BreakerState.OPEN
        self._retry_at = self._clock() + self.open_s
        self._probe_started_at = None
        # A warning when it opens; a failed probe that opens it again is the same outage (INFO), and
        # the uplink's retry summary says how long it lasts.
        log.log(
            logging.INFO if reopened else logging.WARNING,
            "circuit breaker %s after %d consecutive failures: no uploads for %.1f s",
            "open again" if reopened else "open",
            self._failures,
            self.open_s,
        )

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self._state.value!r}, failures={self._failures}, "
            f"threshold={self.failure_threshold}, open_s={self.open_s!r})"
        )


# --------------------------------------------------------------------------------------------------
# Rate limiter


class RateLimiter:
    """Token bucket in bytes, shared by every upload of a station: the limit is the aggregate.

    ``acquire(n)`` reserves ``n`` bytes at once and then sleeps for as long as the bucket is in debt
    (the reservation model): concurrent callers are served in the order they asked, each waits only
    for its own share, and a request larger than ``burst_bytes`` is allowed (it simply waits longer)
    so a caller never deadlocks on a piece bigger than the bucket. Callers should ask in pieces of
    tens to hundreds of KiB, so the traffic is smooth rather than bursts of whole chunks.

    ``bytes_per_s=None`` means unlimited: ``acquire`` returns at once without touching the clock.
    """

    def __init__(
        self,
        bytes_per_s: float | None,
        *,
        clock: Clock,
        burst_bytes: int = 256 * 1024,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if bytes_per_s is not None and not (math.isfinite(bytes_per_s) and bytes_per_s > 0):
            raise ValueError(
                f"rate limit bytes_per_s must be None or a finite number > 0, got {bytes_per_s!r}"
            )
        if burst_bytes < 1:
            raise ValueError(f"rate limit burst_bytes must be >= 1, got {burst_bytes!r}")
        self.bytes_per_s = bytes_per_s
        self.burst_bytes = burst_bytes
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst_bytes)
        self._updated = clock() if bytes_per_s is not None else 0.0

    @property
    def unlimited(self) -> bool:
        return self.bytes_per_s is None

    def _refill(self) -> float:
        assert self.bytes_per_s is not None
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._tokens = min(float(self.burst_bytes), self._tokens + elapsed * self.bytes_per_s)
        return now

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes from the bucket now; return the seconds to wait before sending them."""
        if n < 0:
            raise ValueError(f"rate limit: cannot acquire a negative byte count ({n})")
        if self.bytes_per_s is None or n == 0:
            return 0.0
        self._refill()
        self._tokens -= n
        return max(0.0, -self._tokens / self.bytes_per_s)

    def refund(self, n: int) -> None:
        """Give back bytes reserved but never sent (the sender was cancelled)."""
        if self.bytes_per_s is None or n <= 0:
            return
        self._refill()
        self._tokens = min(float(self.burst_bytes), self._tokens + n)

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` more bytes may be sent within the limit."""
        wait_s = self.reserve(n)
        if wait_s <= 0.0:
            return
        try:
            await self._sleep(wait_s)
        except BaseException:
            self.refund(n)
            raise

    def __repr__(self) -> str:
        return f"RateLimiter(bytes_per_s={self.bytes_per_s!r}, burst_bytes={self.burst_bytes})"


# --------------------------------------------------------------------------------------------------
# Upload windows


class WindowSpecError(ValueError):
    """A malformed upload window specification; the message names the window and what was wrong."""


_WINDOW_RE = re.compile(r"[ \t]*([0-9]{1,2}):([0-9]{2})[ \t]*-[ \t]*([0-9]{1,2}):([0-9]{2})[ \t]*")
_MAX_SPEC_CHARS_SHOWN = 40


@dataclass(frozen=True, slots=True)
class UploadWindow:
    """One daily window ``[start, end)`` in seconds since local midnight; ``end <= start`` crosses
    midnight. ``end_s == 86400`` is "24:00"."""

    start_s: int
    end_s: int
    spec: str


def _second_of_day(dt: datetime) -> float:
    return dt.hour * 3600 + dt.minute * 60 + dt.second + dt.microsecond / 1e6


def _shown(spec: object) -> str:
    text = repr(spec)
    return text if len(text) <= _MAX_SPEC_CHARS_SHOWN else text[: _MAX_SPEC_CHARS_SHOWN - 3] + "..."


def _parse_window(index: int, spec: object) -> UploadWindow:
    where = f"upload window {index + 1}"
    if not isinstance(spec, str):
        raise WindowSpecError(
            f"{where}: expected a string HH:MM-HH:MM, found {type(spec).__name__} {_shown(spec)}"
        )
    match = _WINDOW_RE.fullmatch(spec)
    if match is None:
        raise WindowSpecError(f"{where}: expected HH:MM-HH:MM, found {_shown(spec)}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59:
        raise WindowSpecError(
            f"{where}: expected a start time from 00:00 to 23:59, found {h1:02d}:{m1:02d} in {_shown(spec)}"
        )
    if not ((h2 <= 23 and m2 <= 59) or (h2 == 24 and m2 == 0)):
        raise WindowSpecError(
            f"{where}: expected an end time from 00:00 to 24:00, found {h2:02d}:{m2:02d} in {_shown(spec)}"
        )
    start_s = h1 * 3600 + m1 * 60
    end_s = h2 * 3600 + m2 * 60
    if start_s == end_s:
        raise WindowSpecError(
            f"{where}: start and end are the same time in {_shown(spec)}; "
            "write 00:00-24:00 for the whole day, or leave the list empty for always"
        )
    return UploadWindow(start_s=start_s, end_s=end_s, spec=spec.strip())


class UploadWindows:
    """Daily local-time windows during which uploads may run. No windows means always open.

    Times are compared on the wall clock of the ``datetime`` given (naive local time, or aware in
    the station's zone); ranges are half-open ``[start, end)`` and may cross midnight
    (``22:00-06:00``).
    """

    def __init__(self, windows: Iterable[UploadWindow] = ()) -> None:
        self.windows: tuple[UploadWindow, ...] = tuple(windows)
        # Merged open intervals within one day, in seconds: [(start, end)] with 0 <= start < end <= 86400.
        pieces: list[tuple[int, int]] = []
        for w in self.windows:
            if w.start_s < w.end_s:
                pieces.append((w.start_s, w.end_s))
            else:
                pieces.append((w.start_s, _SECONDS_PER_DAY))
                if w.end_s > 0:
                    pieces.append((0, w.end_s))
        pieces.sort()
        merged: list[tuple[int, int]] = []
        for start, end in pieces:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self._intervals: tuple[tuple[int, int], ...] = tuple(merged)

    @classmethod
    def parse(cls, specs: Sequence[str]) -> UploadWindows:
        """``["22:00-06:00", "12:00-13:00"]`` → windows; raises :class:`WindowSpecError`."""
        if isinstance(specs, str):
            raise WindowSpecError(
                f"upload windows: expected a list of HH:MM-HH:MM strings, found {_shown(specs)}"
            )
        return cls(_parse_window(i, spec) for i, spec in enumerate(specs))

    @property
    def always_open(self) -> bool:
        return not self.windows or self._intervals == ((0, _SECONDS_PER_DAY),)

    def is_open(self, dt: datetime) -> bool:
        if not self.windows:
            return True
        sod = _second_of_day(dt)
        return any(start <= sod < end for start, end in self._intervals)

    def next_open(self, dt: datetime) -> datetime:
        """``dt`` itself when open, else the next moment a window opens (same tzinfo as ``dt``)."""
        if self.is_open(dt):
            return dt
        sod = _second_of_day(dt)
        midnight = datetime.combine(dt.date(), time(0, 0), tzinfo=dt.tzinfo)
        later_today = [start for start, _ in self._intervals if start > sod]
        if later_today:
            return midnight + timedelta(seconds=min(later_today))
        return midnight + timedelta(days=1, seconds=self._intervals[0][0])

    def next_close(self, dt: datetime) -> datetime | None:
        """When the open stretch containing ``dt`` ends; None if always open; ``dt`` if closed now.

        Adjacent windows (``22:00-24:00`` and ``00:00-06:00``) count as one stretch."""
        if self.always_open:
            return None
        if not self.is_open(dt):
            return dt
        sod = _second_of_day(dt)
        midnight = datetime.combine(dt.date(), time(0, 0), tzinfo=dt.tzinfo)
        for start, end in self._intervals:
            if start <= sod < end:
                if end == _SECONDS_PER_DAY and self._intervals[0][0] == 0:
                    return midnight + timedelta(days=1, seconds=self._intervals[0][1])
                return midnight + timedelta(seconds=end)
        raise AssertionError("is_open and the merged intervals disagree")  # pragma: no cover

    def __repr__(self) -> str:
        return f"UploadWindows({[w.spec for w in self.windows]!r})"
