"""Who and what an offload is about: the recorder's identity claims and the clock facts at docking."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RecorderIdentity:
    """Identity as the recorder claims it. Claims, not proof: content is verified by hash."""

    device_serial: str
    officer_no: str
    officer_name: str
    unit_code: str
    unit_name: str
    source: str  # "usb-control" | "PARAM.INI" | "Info.dat" | "file names" | "resumed session"
    usb_serial: str = ""
    id_code: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClockFacts:
    """Device time against station time, measured at docking (invariant 8)."""

    device_utc_ms: int | None
    station_utc_ms: int
    offset_ms: int | None  # device minus station; None when the device has no readable clock
    tz_offset_min: int | None
    station_synchronised: bool
    clock_set: bool = False
    offset_after_set_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SessionInfo:
    session: str
    station_id: str
    bay: int | None
    identity: RecorderIdentity
    clock: ClockFacts
