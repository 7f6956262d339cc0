"""Is the station clock trustworthy enough to stamp recorders (校时)? Invariant 8.

`station.clock = "trusted"` or `"untrusted"` decides by configuration. `"auto"` asks the sources of
`[time_sync] sources` in their configured order (by default chrony, systemd-timesyncd, systemd-timedated,
the kernel's adjtimex) and the first that can tell decides; sources that are absent or refused (adjtimex
always is under the shipped unit) are passed over. When none can tell, the clock is not trusted. The
verdict names the deciding source and its reason, with every reading taken on the way, so the ledger
says why a recorder's clock was or was not set. See `edge.runtime.timesync` for the readers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from edge.runtime.timesync import (
    SyncReading,
    read_adjtimex,
    read_chrony,
    read_timedated,
    read_timesyncd,
)

log = logging.getLogger(__name__)

ClockSetting = Literal["auto", "trusted", "untrusted"]
SYNC_SOURCES = ("chrony", "timesyncd", "timedated", "adjtimex")


class TimeSyncSettings(Protocol):
    """What `auto` needs to know (the station config's `[time_sync]` section satisfies it)."""

    @property
    def sources(self) -> Sequence[str]: ...
    @property
    def chronyc(self) -> str: ...
    @property
    def chrony_max_error_ms(self) -> float: ...
    @property
    def timesyncd_flag(self) -> Path: ...
    @property
    def timesyncd_max_age_s(self) -> float: ...
    @property
    def busctl(self) -> str: ...
    @property
    def command_timeout_s(self) -> float: ...


@dataclass(frozen=True)
class ClockTrust:
    """The verdict: may the station set recorder clocks, which source decided, and why."""

    trusted: bool
    source: str  # "config", one of SYNC_SOURCES, or "none" when no source could tell
    reason: str
    readings: tuple[SyncReading, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "trusted": self.trusted,
            "source": self.source,
            "reason": self.reason,
            "readings": [asdict(r) for r in self.readings],
        }


def _reader(name: str, settings: TimeSyncSettings) -> Callable[[], SyncReading]:
    timeout_s = settings.command_timeout_s
    if name == "chrony":
        return lambda: read_chrony(
            settings.chronyc, max_error_s=settings.chrony_max_error_ms / 1000, timeout_s=timeout_s
        )
    if name == "timesyncd":
        return lambda: read_timesyncd(settings.timesyncd_flag, max_age_s=settings.timesyncd_max_age_s)
    if name == "timedated":
        return lambda: read_timedated(settings.busctl, timeout_s=timeout_s)
    if name == "adjtimex":
        return read_adjtimex
    raise ValueError(f"unknown time-sync source {name!r}; expected one of {', '.join(SYNC_SOURCES)}")


def station_clock_trust(setting: ClockSetting, settings: TimeSyncSettings) -> ClockTrust:
    """Decide whether the station clock is trusted. Blocking (runs status commands): call it from a
    worker thread. Never raises for a source's failure; an unknown source name is a programming error."""
    if setting == "trusted":
        return ClockTrust(True, "config", 'station.clock = "trusted" (not checked)')
    if setting == "untrusted":
        return ClockTrust(False, "config", 'station.clock = "untrusted"')
    readings: list[SyncReading] = []
    for name in settings.sources:
        read = _reader(name, settings)
        try:
            reading = read()
        except Exception as exc:  # a reader bug must not stop a docking: this source just cannot tell
            log.exception("time-sync source %s failed", name)
            reading = SyncReading(name, None, f"failed unexpectedly: {type(exc).__name__}: {exc}")
        readings.append(reading)
        if reading.synchronised is not None:
            return ClockTrust(reading.synchronised, name, reading.reason, tuple(readings))
    passed = "; ".join(f"{r.source}: {r.reason}" for r in readings) or "no sources configured"
    return ClockTrust(False, "none", f"no source could tell whether the clock is synchronised ({passed})",
                      tuple(readings))


def measure_offset_ms(host_before_ms: int, device_ms: int, host_after_ms: int) -> int:
    """Device minus station time, taking the station time at the middle of the round trip."""
    return device_ms - (host_before_ms + host_after_ms) // 2
