"""Uplink policies on a fake clock: backoff, circuit breaker, rate limiter, upload windows."""

from __future__ import annotations

import asyncio
import email.utils
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from edge.uplink.policy import (
    Backoff,
    BreakerState,
    CircuitBreaker,
    Jitter,
    RateLimiter,
    UploadWindows,
    WindowSpecError,
    parse_retry_after,
)


def state_of(cb: CircuitBreaker) -> BreakerState:
    """Read the state through a call, so the type checker does not narrow it between reads."""
    return cb.state


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------------------------------------- backoff


def test_backoff_cap_grows_exponentially_then_saturates() -> None:
    b = Backoff(0.5, 30.0, jitter=Jitter.NONE)
    assert [b.next_delay(n) for n in range(0, 9)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_backoff_huge_attempt_does_not_overflow() -> None:
    b = Backoff(1.0, 600.0, factor=3.0, rng=random.Random(1))
    assert b.cap_s(10**9) == 600.0
    assert 0.0 <= b.next_delay(10**9) <= 600.0


def test_backoff_full_jitter_is_spread_over_zero_to_cap_and_seeded() -> None:
    b1 = Backoff(1.0, 64.0, rng=random.Random(42))
    b2 = Backoff(1.0, 64.0, rng=random.Random(42))
    delays = [b1.next_delay(7) for _ in range(2000)]
    assert delays == [b2.next_delay(7) for _ in range(2000)]
    assert all(0.0 <= d <= 64.0 for d in delays)
    # Full jitter: the whole [0, cap] range is used, not just its upper half.
    assert min(delays) < 64.0 * 0.05
    assert max(delays) > 64.0 * 0.95
    assert 64.0 * 0.45 < sum(delays) / len(delays) < 64.0 * 0.55


def test_backoff_equal_jitter_stays_in_upper_half() -> None:
    b = Backoff(2.0, 100.0, jitter=Jitter.EQUAL, rng=random.Random(3))
    delays = [b.next_delay(3) for _ in range(500)]
    assert all(4.0 <= d <= 8.0 for d in delays)


def test_backoff_factor_one_is_constant() -> None:
    assert Backoff(5.0, 5.0, factor=1.0, jitter=Jitter.NONE).next_delay(100) == 5.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_s": 0.0, "max_s": 1.0}, "base_s"),
        ({"base_s": float("nan"), "max_s": 1.0}, "base_s"),
        ({"base_s": 2.0, "max_s": 1.0}, "max_s"),
        ({"base_s": 1.0, "max_s": float("inf")}, "max_s"),
        ({"base_s": 1.0, "max_s": 2.0, "factor": 0.5}, "factor"),
    ],
)
def test_backoff_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_backoff_rejects_negative_attempt() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff(1.0, 2.0).next_delay(-1)


# ---------------------------------------------------------------------------------------------- breaker


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(3, 60.0, clock)
    assert state_of(cb) is BreakerState.CLOSED and cb.retry_at is None
    cb.record_failure()
    cb.record_failure()
    cb.record_success()  # resets the count: failures must be consecutive
    cb.record_failure()
    cb.record_failure()
    assert cb.allow() and state_of(cb) is BreakerState.CLOSED
    cb.record_failure()
    assert state_of(cb) is BreakerState.OPEN
    assert cb.retry_at == 1060.0
    assert not cb.allow()


def test_breaker_half_open_allows_exactly_one_probe_and_closes_on_success() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(1, 30.0, clock)
    cb.record_failure()
    clock.advance(29.9)
    assert state_of(cb) is BreakerState.OPEN and not cb.allow()
    clock.advance(0.1)
    assert state_of(cb) is BreakerState.HALF_OPEN
    assert cb.allow() is True
    assert cb.allow() is False  # a second caller waits for the probe's outcome
    assert cb.allow() is False
    cb.record_success()
    assert state_of(cb) is BreakerState.CLOSED
    assert cb.allow() and cb.allow()
    assert cb.consecutive_failures == 0


def test_breaker_failed_probe_reopens_for_another_period() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(2, 10.0, clock)
    cb.record_failure()
    cb.record_failure()
    clock.advance(10.0)
    assert cb.allow()
    clock.advance(2.0)
    cb.record_failure()
    assert state_of(cb) is BreakerState.OPEN
    assert cb.retry_at == clock.now + 10.0
    assert not cb.allow()
    clock.advance(10.0)
    assert cb.allow()


def test_breaker_lost_probe_does_not_wedge_half_open() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(1, 5.0, clock)
    cb.record_failure()
    clock.advance(5.0)
    assert cb.allow()  # the probe's task is then cancelled: no outcome is ever recorded
    clock.advance(4.0)
    assert not cb.allow()
    assert cb.retry_at == clock.now + 1.0
    clock.advance(1.0)
    assert cb.allow()  # a replacement probe


def test_breaker_straggler_failures_while_open_do_not_extend_it() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(1, 10.0, clock)
    cb.record_failure()
    clock.advance(9.0)
    cb.record_failure()  # a request that was in flight when the breaker opened
    assert cb.retry_at == 1010.0
    clock.advance(1.0)
    assert cb.allow()


def test_breaker_success_while_open_closes_it() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(1, 10.0, clock)
    cb.record_failure()
    cb.record_success()
    assert state_of(cb) is BreakerState.CLOSED and cb.allow()


def test_breaker_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(0, 1.0, FakeClock())
    with pytest.raises(ValueError, match="open_s"):
        CircuitBreaker(1, 0.0, FakeClock())


def test_breaker_holds_everything_until_retry_after_even_the_probe() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=2, open_s=5.0, clock=clock)
    cb.hold_until(clock.now + 30)
    assert state_of(cb) is BreakerState.CLOSED and not cb.allow()
    assert cb.held_until == cb.retry_at == 1030.0
    cb.hold_until(clock.now + 10)  # an earlier hold changes nothing
    assert cb.held_until == 1030.0
    cb.record_failure()
    cb.record_failure()  # opens for 5 s, but the hold is longer: no probe before it ends
    clock.advance(6)
    assert state_of(cb) is BreakerState.HALF_OPEN and not cb.allow() and cb.retry_at == 1030.0
    clock.advance(24)
    assert cb.held_until is None and cb.allow()  # the probe, at last
    assert not cb.allow()  # and only one
    cb.record_success()
    assert cb.allow() and cb.retry_at is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("007", 7.0),
        (email.utils.formatdate(1_800_000_090, usegmt=True), 90.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),  # a date in the past: at once
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("+5", None),
        ("1_000", None),
        ("٣٠", None),  # Arabic-Indic digits are not delay-seconds
        ("99999999999", None),  # beyond ten digits: not a delay anyone meant
        ("soon", None),
        ("Sun, 06 Nov 1994 08:49:37", None),  # no zone: not an HTTP-date
        ("Sun, 06 Nov 1994 08:49:37 GMT\r\nX-Forged: 1", None),
        ("x" * 10_000, None),
    ],
)
def test_retry_after_is_read_strictly(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, 1_800_000_000.0) == expected


# ---------------------------------------------------------------------------------------------- limiter


class RecordingSleep:
    """Records wake-up times on the fake clock without advancing it (concurrent sleepers overlap)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.wakes: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.wakes.append(self.clock.now + seconds)
        await asyncio.sleep(0)


async def test_limiter_unlimited_never_sleeps() -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    rl = RateLimiter(None, clock=clock, sleep=sleep)
    for _ in range(100):
        await rl.acquire(10**9)
    assert sleep.wakes == [] and rl.unlimited


async def test_limiter_allows_the_burst_then_paces() -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    rl = RateLimiter(1000.0, clock=clock, burst_bytes=500, sleep=sleep)
    await rl.acquire(500)
    assert sleep.wakes == []
    await rl.acquire(250)
    assert sleep.wakes == [pytest.approx(clock.now + 0.25)]


async def test_limiter_refills_with_time_but_not_beyond_burst() -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    rl = RateLimiter(1000.0, clock=clock, burst_bytes=500, sleep=sleep)
    await rl.acquire(500)
    clock.advance(100.0)  # idle for long: the bucket holds at most burst_bytes
    await rl.acquire(500)
    assert sleep.wakes == []
    await rl.acquire(100)
    assert sleep.wakes == [pytest.approx(clock.now + 0.1)]


async def test_limiter_piece_larger_than_burst_waits_instead_of_deadlocking() -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    rl = RateLimiter(100.0, clock=clock, burst_bytes=10, sleep=sleep)
    await rl.acquire(1010)
    assert sleep.wakes == [pytest.approx(clock.now + 10.0)]


async def test_limiter_is_an_aggregate_limit_across_concurrent_uploads() -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    rate = 1000.0
    rl = RateLimiter(rate, clock=clock, burst_bytes=100, sleep=sleep)
    piece = 100

    async def upload(pieces: int) -> None:
        for _ in range(pieces):
            await rl.acquire(piece)

    await asyncio.gather(*(upload(10) for _ in range(4)))
    # 4000 bytes at 1000 B/s with a 100-byte burst: the last piece may go only at t0 + 3.9 s, and no
    # piece ever goes before the aggregate allows it.
    t0 = 1000.0
    assert max(sleep.wakes) == pytest.approx(t0 + (4000 - 100) / rate)
    sent_by = sorted(sleep.wakes)
    for k, wake in enumerate(sent_by, start=2):  # the first piece went without sleeping
        assert wake >= t0 + (k * piece - 100) / rate - 1e-9


async def test_limiter_cancelled_waiter_gives_its_bytes_back() -> None:
    clock = FakeClock()
    gate = asyncio.Event()

    async def blocking_sleep(seconds: float) -> None:
        await gate.wait()

    rl = RateLimiter(100.0, clock=clock, burst_bytes=100, sleep=blocking_sleep)
    await rl.acquire(100)
    task = asyncio.create_task(rl.acquire(1000))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Without the refund the next 50 bytes would wait 10.5 s for the cancelled reservation.
    assert rl.reserve(50) == pytest.approx(0.5)


def test_limiter_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="bytes_per_s"):
        RateLimiter(0.0, clock=FakeClock())
    with pytest.raises(ValueError, match="burst_bytes"):
        RateLimiter(10.0, clock=FakeClock(), burst_bytes=0)
    with pytest.raises(ValueError, match="negative"):
        RateLimiter(10.0, clock=FakeClock()).reserve(-1)


# ---------------------------------------------------------------------------------------------- windows


def at(hh: int, mm: int, ss: int = 0, day: int = 10) -> datetime:
    return datetime(2024, 3, day, hh, mm, ss)


def test_windows_empty_means_always_open() -> None:
    w = UploadWindows.parse([])
    assert w.always_open
    assert w.is_open(at(3, 0)) and w.next_open(at(3, 0)) == at(3, 0)
    assert w.next_close(at(3, 0)) is None


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (at(21, 59, 59), False),
        (at(22, 0), True),
        (at(23, 59, 59), True),
        (at(0, 0), True),
        (at(5, 59, 59), True),
        (at(6, 0), False),  # half-open: the end minute is closed
        (at(11, 59), False),
        (at(12, 0), True),
        (at(12, 30), True),
        (at(13, 0), False),
    ],
)
def test_windows_is_open_with_midnight_crossing(moment: datetime, expected: bool) -> None:
    w = UploadWindows.parse(["22:00-06:00", "12:00-13:00"])
    assert w.is_open(moment) is expected


def test_windows_next_open() -> None:
    w = UploadWindows.parse(["22:00-06:00", "12:00-13:00"])
    assert w.next_open(at(7, 15, 3)) == at(12, 0)
    assert w.next_open(at(13, 0)) == at(22, 0)
    assert w.next_open(at(23, 0)) == at(23, 0)
    only_morning = UploadWindows.parse(["02:30-03:00"])
    assert only_morning.next_open(at(3, 0)) == at(2, 30, day=11)  # tomorrow
    assert only_morning.next_open(at(1, 0)) == at(2, 30)


def test_windows_next_open_keeps_timezone() -> None:
    tz = timezone(timedelta(hours=8))
    w = UploadWindows.parse(["22:00-06:00"])
    moment = datetime(2024, 3, 10, 12, 0, tzinfo=tz)
    assert w.next_open(moment) == datetime(2024, 3, 10, 22, 0, tzinfo=tz)
    assert w.next_open(moment).utcoffset() == timedelta(hours=8)
    assert w.next_open(moment).astimezone(UTC).hour == 14


def test_windows_next_close_joins_adjacent_windows_across_midnight() -> None:
    w = UploadWindows.parse(["22:00-24:00", "00:00-06:00", "05:00-07:00"])
    assert w.next_close(at(23, 0)) == at(7, 0, day=11)
    assert w.next_close(at(1, 0)) == at(7, 0)
    assert w.next_close(at(8, 0)) == at(8, 0)
    assert UploadWindows.parse(["00:00-24:00"]).next_close(at(8, 0)) is None
    assert UploadWindows.parse(["12:00-00:00", "00:00-12:00"]).always_open


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("22:00", "expected HH:MM-HH:MM, found '22:00'"),
        ("22-06", "expected HH:MM-HH:MM, found '22-06'"),
        ("", "expected HH:MM-HH:MM, found ''"),
        ("25:00-01:00", "start time from 00:00 to 23:59, found 25:00"),
        ("10:60-11:00", "start time from 00:00 to 23:59, found 10:60"),
        ("10:00-24:30", "end time from 00:00 to 24:00, found 24:30"),
        ("08:00-08:00", "same time"),
        ("00:00-24:00x", "expected HH:MM-HH:MM"),
        ("１２:00-13:00", "expected HH:MM-HH:MM"),  # full-width digits are not ASCII
        ("x" * 1000, "found 'xxxxxxxx"),
    ],
)
def test_windows_reject_malformed_specs_clearly(spec: str, message: str) -> None:
    with pytest.raises(WindowSpecError, match=r"^upload window 2: ") as info:
        UploadWindows.parse(["01:00-02:00", spec])
    assert message in str(info.value)
    assert len(str(info.value)) < 200


def test_windows_reject_non_string_and_bare_string() -> None:
    with pytest.raises(WindowSpecError, match="upload window 1: expected a string"):
        UploadWindows.parse([2200])  # type: ignore[list-item]
    with pytest.raises(WindowSpecError, match="expected a list"):
        UploadWindows.parse("22:00-06:00")


def test_windows_tolerate_spaces_and_single_digit_hours() -> None:
    w = UploadWindows.parse([" 9:30 - 10:00 "])
    assert w.is_open(at(9, 45)) and not w.is_open(at(10, 0))
    assert repr(w) == "UploadWindows(['9:30 - 10:00'])"
