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
  the bay to settle), so a flood costs at most one entry per bay every `BAY_BURST_MAX_S`.

Pure: times and order stamps come from the caller. Memory per bay is constant however long the burst.
"""

from __future__ import annotations

from dataclasses import dataclass

# How long a bay's presence must hold before it stands: a switch bounces for a few milliseconds, a person
# docks or undocks a recorder in no less than about a second.
BAY_SETTLE_S = 0.25
# A burst still bouncing after this long is recorded all the same (unsettled), and a new one begins.
BAY_BURST_MAX_S = 2.0


@dataclass(frozen=True)
class Settled:
    """What one burst of raw presence events of a bay stands for."""

    bay: int
    present: bool  # the state of its last raw event
    charge_percent: int | None  # as the last raw event reported it
    raw_events: int  # how many raw events it stands for (1: a clean dock or undock)
    last_stamp: int  # the caller's order stamp of its last raw event
    settled: bool = True  # False: handed over while the bay still bounced (BAY_BURST_MAX_S)


@dataclass
class _Burst:
    started_at: float
    last_at: float
    present: bool
    charge_percent: int | None
    raw_events: int
    last_stamp: int


class BayPresenceDebounce:
    """Per bay, the raw presence events not yet handed over, and when they settle."""

    def __init__(self, settle_s: float = BAY_SETTLE_S, burst_max_s: float = BAY_BURST_MAX_S) -> None:
        if settle_s < 0 or burst_max_s < settle_s:
            raise ValueError(f"need 0 <= settle_s <= burst_max_s, got {settle_s} and {burst_max_s}")
        self.settle_s = settle_s
        self.burst_max_s = burst_max_s
        self._bursts: dict[int, _Burst] = {}

    def add(self, bay: int, present: bool, charge_percent: int | None, *, stamp: int, now: float) -> None:
        """One raw event of `bay`: it joins the bay's burst (or starts one)."""
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
        """The bursts that settled by `now` (their bay kept still for `settle_s`), and those that have
        been bouncing for `burst_max_s` (handed over unsettled), in bay order."""
        out: list[Settled] = []
        for bay in sorted(self._bursts):
            burst = self._bursts[bay]
            if now - burst.last_at >= self.settle_s:
                out.append(_settled(bay, self._bursts.pop(bay), settled=True))
            elif now - burst.started_at >= self.burst_max_s:
                out.append(_settled(bay, self._bursts.pop(bay), settled=False))
        return out

    def wait_s(self, now: float) -> float | None:
        """How long until the next burst is due; None when no bay is settling."""
        if not self._bursts:
            return None
        return max(0.0, min(
            min(b.last_at + self.settle_s, b.started_at + self.burst_max_s) for b in self._bursts.values()
        ) - now)

    def drain(self) -> list[Settled]:
        """Every burst still settling, handed over as it stands (the board is going): settled as far as
        anyone will ever know, since no later event of this board will come."""
        out = [_settled(bay, self._bursts[bay], settled=True) for bay in sorted(self._bursts)]
        self._bursts.clear()
        return out

    def settling(self, bay: int) -> int:
        """How many raw events of `bay` wait to settle (0: none)."""
        burst = self._bursts.get(bay)
        return 0 if burst is None else burst.raw_events


def _settled(bay: int, burst: _Burst, *, settled: bool) -> Settled:
    return Settled(bay, burst.present, burst.charge_percent, burst.raw_events, burst.last_stamp, settled)
