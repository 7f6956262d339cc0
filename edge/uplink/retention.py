"""When the retention purge may believe the wall clock, and how fast it may purge.

A local copy is purged when its receipt is older than the retention period by the wall clock. The wall
clock is the one thing here that a fault moves at will: a bad NTP server or an RTC reset to the future
would make every receipt look old at once and purge every local copy in one pass. The central still
holds them, but a station must not lose its copies through a clock fault. So the purge:

* runs only while the station clock is trusted (the verdict of :mod:`edge.runtime.clock`, the one that
  decides 校时), and otherwise purges nothing;
* never counts more time than the store's own history and the boot clock explain
  (:class:`RetentionClock`): the wall clock may not have moved further since the uplink started than
  ``CLOCK_BOOTTIME`` (which counts suspend, unlike the monotonic clock) plus a small slack, nor be beyond
  the newest ledger entry written before this start by more than the time since boot plus the allowed
  downtime (``[uplink] purge_max_downtime_h``). When it is, the purge counts time up to that bound only:
  a forward jump cannot bring a purge forward by more than the slack or the allowed downtime, and the
  purge is on the ledger as refused, once, until the clock is plausible again;
* purges at most ``[uplink] purge_max_per_hour`` copies an hour (:class:`PurgeBudget`, on the boot
  clock), so that whatever the clock says, a mistake is small and seen before it is large.

Limit: across a restart the store's history is all there is. A station whose clock was already wrong
on its previous run wrote that wrong time into its ledger, and the next start measures from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

# A sane clock is stepped by NTP by milliseconds; five minutes covers a slow first synchronisation
# after boot without letting a real jump through.
STEP_SLACK_S = 300.0


def boot_clock() -> float:
    """Seconds since boot, suspend included: what the wall clock should have moved by."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def utc_text(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PurgeTime:
    """The time up to which receipts count as elapsed, and why it is not the wall clock (or None)."""

    until: float
    refusal: str | None


class RetentionClock:
    """The wall clock, bounded by what the boot clock and the store's history make plausible.

    `wall` and `boot` are the seam the uplink uses (tests inject both); `history_newest` is the time of
    the newest ledger entry written before this start (epoch seconds), None for a new store.
    """

    def __init__(
        self,
        *,
        wall: Callable[[], float],
        boot: Callable[[], float],
        history_newest: float | None,
        max_downtime_s: float,
        step_slack_s: float = STEP_SLACK_S,
    ) -> None:
        self._wall = wall
        self._boot = boot
        self._wall_start = wall()
        self._boot_start = boot()
        self.history_newest = history_newest
        self.max_downtime_s = max_downtime_s
        self.step_slack_s = step_slack_s

    def purge_time(self) -> PurgeTime:
        wall, boot = self._wall(), self._boot()
        bounds = [(
            self._wall_start + (boot - self._boot_start) + self.step_slack_s,
            f"it moved {wall - self._wall_start - (boot - self._boot_start):.0f} s further than the boot "
            "clock since the uplink started",
        )]
        if self.history_newest is not None:
            bounds.append((
                self.history_newest + boot + self.max_downtime_s,
                f"the newest ledger entry before this start is {utc_text(self.history_newest)}, the "
                f"station has been up {boot:.0f} s and at most {self.max_downtime_s:.0f} s of downtime "
                "is allowed",
            ))
        bound, why = min(bounds)
        if wall <= bound:
            return PurgeTime(wall, None)
        return PurgeTime(
            bound,
            f"wall clock {utc_text(wall)} is {wall - bound:.0f} s ahead of what the station's history makes "
            f"plausible ({why}): receipts count as elapsed up to {utc_text(bound)} only",
        )


class PurgeBudget:
    """At most `per_hour` purges an hour, on the boot clock (a token bucket holding one hour's worth)."""

    def __init__(self, per_hour: int, *, boot: Callable[[], float]) -> None:
        if per_hour < 1:
            raise ValueError(f"purge budget: expected >= 1 an hour, got {per_hour}")
        self.per_hour = per_hour
        self._boot = boot
        self._tokens = float(per_hour)
        self._at = boot()

    def available(self) -> int:
        now = self._boot()
        self._tokens = min(float(self.per_hour), self._tokens + (now - self._at) * self.per_hour / 3600)
        self._at = now
        return int(self._tokens)

    def spend(self, count: int) -> None:
        self._tokens -= count
