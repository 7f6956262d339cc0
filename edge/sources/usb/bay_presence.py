"""Bay presence from the bay board, debounced: what the station records of a bay is its settled state.

A bay switch bounces for a few milliseconds when a recorder goes in or out, and a faulty or hostile board
can send hundreds of `INS`/`REM` frames a second (drivers/serial/DOCK_PROTOCOL.md). Recorded one entry per
raw event, a bouncing bay floods the custody record (review R5: 300 bounces made 256 entries) and its LED
flickers between states the officer cannot read. So raw events of a bay are held until the bay has kept
still for `BAY_SETTLE_S`, then stand as one settled state that remembers how many raw events it covers.

Two exceptions, both decided by the station (`edge.station`), which owns the LEDs:

- a pull in the middle of a docking is acted on at once (`take`): it must show `PULLED` now, not once the
  bay stops bouncing, and its entry must not be merged into the burst that may follow;
- a bay that keeps bouncing is not kept out of the record for ever: once a burst is `BAY_BURST_MAX_S` old
  it is handed over unsettled (`Settled.settled` False), recorded but not acted on (the LED waits for
  the bay to settle).

The settle window alone bounds bounce *within* it only: a board toggling a bay just slower than
`BAY_SETTLE_S` makes every toggle a settled state of its own, and one that bounces for ever makes an
unsettled entry every `BAY_BURST_MAX_S` (review R5: 77 entries in 20 s; ~43,200 a day per bay). So the
handovers of a bay are limited too: a bay handed over more than `changes_max` times within `window_s`
is *bouncing* (`Settled.bouncing` "started", once: the station records one error, flags the bay and shows
its BOUNCING LED pattern). From then on its raw events are only counted, and handed over (unsettled) with
exponential back-off, `report_first_s` after it started, then twice as long each time up to
`report_max_s` (at most `bounce_reports_per_day_max` entries a day per bay, each with the raw count since
the last). It stops bouncing once it held still for `calm_s` (`bouncing` "ended": its settled state, acted
on again). These come from `[dock.bouncing]` of the station configuration (`BouncingSection`, validated
by `edge check-config`); the `BAY_*` constants below are their defaults. A person docks and undocks far
slower: each of those is still one entry.

Pure: times and order stamps come from the caller. Memory per bay is constant however long the burst.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from edge.config.station import BAY_SETTLE_S as CONFIG_BAY_SETTLE_S
from edge.config.station import BouncingSection

# How long a bay's presence must hold before it stands: a switch bounces for a few milliseconds, a person
# docks or undocks a recorder in no less than about a second (the config checks its bouncing settings
# against it, so it lives there).
BAY_SETTLE_S = CONFIG_BAY_SETTLE_S
# A burst still bouncing after this long is recorded all the same (unsettled), and a new one begins.
BAY_BURST_MAX_S = 2.0
# When a bay is bouncing, and how it is recorded then: `[dock.bouncing]` of the station configuration
# (BouncingSection, validated by `edge check-config`). These are its defaults: more handovers than
# BAY_CHANGES_MAX of one bay within the window make it bouncing (a person docking, pulling and docking
# again within the window makes 3, a board toggling just slower than BAY_SETTLE_S makes 5 in 1.3 s); it is
# recorded BAY_BOUNCE_REPORT_FIRST_S after it started bouncing, then with the interval doubling, at most
# BAY_BOUNCE_REPORT_MAX_S apart; it is a bay again once it held still BAY_CALM_S.
_DEFAULTS = BouncingSection()
BAY_CHANGES_MAX = _DEFAULTS.changes_max
BAY_CHANGES_WINDOW_S = _DEFAULTS.window_s
BAY_BOUNCE_REPORT_FIRST_S = _DEFAULTS.report_first_s
BAY_BOUNCE_REPORT_MAX_S = _DEFAULTS.report_max_s
BAY_CALM_S = _DEFAULTS.calm_s


def bounce_reports_per_day_max(bouncing: BouncingSection) -> int:
    """Back-off reports of one bay in a day, at worst (the doubling steps, then one per report_max_s)."""
    return (math.ceil(math.log2(bouncing.report_max_s / bouncing.report_first_s))
            + math.ceil(86400 / bouncing.report_max_s))


BOUNCE_REPORTS_PER_DAY_MAX = bounce_reports_per_day_max(_DEFAULTS)

_LATE_ENOUGH_S = 1e-6

Bouncing = Literal["started", "ongoing", "ended"]


@dataclass(frozen=True)
class Settled:
    """What one burst of raw presence events of a bay stands for."""

    bay: int
    present: bool  # the state of its last raw event
    charge_percent: int | None  # as the last raw event reported it
    raw_events: int  # how many raw events it stands for (1: a clean dock or undock)
    last_stamp: int  # the caller's order stamp of its last raw event
    settled: bool = True  # False: handed over while the bay still bounced (BAY_BURST_MAX_S, bouncing, drain)
    # None: an ordinary burst. "started": this handover made the bay bouncing (its raw events are the
    # ones counted from here on, reported later); "ongoing": a back-off report of a bouncing bay, its raw
    # events since the last; "ended": it held still for BAY_CALM_S, its settled state (raw events since the
    # last report, possibly 0).
    bouncing: Bouncing | None = None
    changes: int = 0  # "started": how many handovers within the window made it bouncing


@dataclass
class _Burst:
    started_at: float
    last_at: float
    present: bool
    charge_percent: int | None
    raw_events: int
    last_stamp: int


@dataclass
class _Bounce:
    """A bouncing bay: its raw events since the last report, and when the next report is due."""

    last_at: float
    present: bool
    charge_percent: int | None
    last_stamp: int
    raw_events: int
    report_at: float
    interval_s: float


@dataclass
class _History:
    """A bay's recent handovers (at most one more than the limit is kept), and its bouncing if it is."""

    handovers: deque[float] = field(default_factory=deque)
    bounce: _Bounce | None = None


class BayPresenceDebounce:
    """Per bay, the raw presence events not yet handed over, and when they settle."""

    def __init__(
        self,
        settle_s: float = BAY_SETTLE_S,
        burst_max_s: float = BAY_BURST_MAX_S,
        bouncing: BouncingSection = _DEFAULTS,
    ) -> None:
        if settle_s < 0 or burst_max_s < settle_s:
            raise ValueError(f"need 0 <= settle_s <= burst_max_s, got {settle_s} and {burst_max_s}")
        self.settle_s = settle_s
        self.burst_max_s = burst_max_s
        self._bursts: dict[int, _Burst] = {}
        self._history: dict[int, _History] = {}
        self.changes_max = bouncing.changes_max
        self.changes_window_s = bouncing.window_s
        self.report_first_s = bouncing.report_first_s
        self.report_max_s = bouncing.report_max_s
        self.calm_s = bouncing.calm_s

    def add(self, bay: int, present: bool, charge_percent: int | None, *, stamp: int, now: float) -> None:
        """One raw event of `bay`: it joins the bay's burst (or starts one), or is counted if it bounces."""
        bounce = self._bounce(bay)
        if bounce is not None:
            bounce.last_at = now
            bounce.present = present
            bounce.charge_percent = charge_percent
            bounce.raw_events += 1
            bounce.last_stamp = stamp
            return
        burst = self._bursts.get(bay)
        if burst is None:
            self._bursts[bay] = _Burst(now, now, present, charge_percent, 1, stamp)
            return
        burst.last_at = now
        burst.present = present
        burst.charge_percent = charge_percent
        burst.raw_events += 1
        burst.last_stamp = stamp

    def take(self, bay: int) -> Settled | None:
        """The bay's burst so far, handed over now (the caller acts on its last event at once); later
        events of the bay start a new burst."""
        burst = self._bursts.pop(bay, None)
        return None if burst is None else _settled(bay, burst, settled=True)

    def due(self, now: float) -> list[Settled]:
        """The bursts that settled by `now` (their bay kept still for `settle_s`), those that have
        been bouncing for `burst_max_s` (handed over unsettled), and the reports of bouncing bays, in bay
        order. A handover that makes its bay bouncing comes as `bouncing` "started"."""
        out: list[Settled] = []
        # A wake-up a rounding error early (at `now + wait_s(now)`, or asyncio's clock resolution) counts:
        # else the caller would spin on a wait of 0.
        now += _LATE_ENOUGH_S
        for bay in sorted({*self._bursts, *(b for b, h in self._history.items() if h.bounce is not None)}):
            bounce = self._bounce(bay)
            if bounce is not None:
                if now >= bounce.last_at + self.calm_s:
                    out.append(Settled(bay, bounce.present, bounce.charge_percent, bounce.raw_events,
                                       bounce.last_stamp, True, "ended"))
                    self._history[bay] = _History()
                elif now >= bounce.report_at:
                    if bounce.raw_events:
                        out.append(Settled(bay, bounce.present, bounce.charge_percent, bounce.raw_events,
                                           bounce.last_stamp, False, "ongoing"))
                    bounce.raw_events = 0
                    bounce.interval_s = min(bounce.interval_s * 2, self.report_max_s)
                    bounce.report_at = now + bounce.interval_s
                continue
            burst = self._bursts[bay]
            if now >= burst.last_at + self.settle_s:
                out.append(self._hand_over(bay, self._bursts.pop(bay), settled=True, now=now))
            elif now >= burst.started_at + self.burst_max_s:
                out.append(self._hand_over(bay, self._bursts.pop(bay), settled=False, now=now))
        return out

    def _hand_over(self, bay: int, burst: _Burst, *, settled: bool, now: float) -> Settled:
        """A burst handed over by `due`: counted in its bay's window; one too many makes it bouncing."""
        history = self._history.setdefault(bay, _History())
        history.handovers.append(now)
        while history.handovers and (
            now - history.handovers[0] > self.changes_window_s
            or len(history.handovers) > self.changes_max + 1
        ):
            history.handovers.popleft()
        if len(history.handovers) <= self.changes_max:
            return _settled(bay, burst, settled=settled)
        changes = len(history.handovers)
        history.handovers.clear()
        # The burst that tipped it is not acted on: its raw events are the first the bouncing bay counts.
        history.bounce = _Bounce(burst.last_at, burst.present, burst.charge_percent, burst.last_stamp,
                                 burst.raw_events, now + self.report_first_s, self.report_first_s)
        return Settled(bay, burst.present, burst.charge_percent, burst.raw_events, burst.last_stamp, False,
                       "started", changes)

    def _bounce(self, bay: int) -> _Bounce | None:
        history = self._history.get(bay)
        return None if history is None else history.bounce

    def bouncing(self, bay: int) -> bool:
        """Whether `bay` is bouncing (its presence is counted, not acted on)."""
        return self._bounce(bay) is not None

    def wait_s(self, now: float) -> float | None:
        """How long until the next burst or bouncing report is due; None when no bay is settling."""
        due = [min(b.last_at + self.settle_s, b.started_at + self.burst_max_s) for b in self._bursts.values()]
        due += [min(h.bounce.last_at + self.calm_s, h.bounce.report_at)
                for h in self._history.values() if h.bounce is not None]
        return None if not due else max(0.0, min(due) - now)

    def drain(self) -> list[Settled]:
        """Every burst still settling and every bouncing bay's count, handed over as they stand (the
        board is going), unsettled: nobody saw them settle, and the LED is for the next board's status
        to decide (review R12). The bays' histories go with the board."""
        out = [_settled(bay, self._bursts[bay], settled=False) for bay in sorted(self._bursts)]
        for bay, history in sorted(self._history.items()):
            b = history.bounce
            if b is not None and b.raw_events:
                out.append(
                    Settled(bay, b.present, b.charge_percent, b.raw_events, b.last_stamp, False, "ongoing")
                )
        self._bursts.clear()
        self._history.clear()
        return out

    def settling(self, bay: int) -> int:
        """How many raw events of `bay` wait to settle or to be reported (0: none)."""
        bounce = self._bounce(bay)
        if bounce is not None:
            return bounce.raw_events
        burst = self._bursts.get(bay)
        return 0 if burst is None else burst.raw_events


def _settled(bay: int, burst: _Burst, *, settled: bool) -> Settled:
    return Settled(bay, burst.present, burst.charge_percent, burst.raw_events, burst.last_stamp, settled)
