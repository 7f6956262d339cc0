"""Who and what an offload is about: the recorder's identity claims and the clock facts at docking."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from edge.sources.usb.volume_clock import DeviceClockEstimate


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
    # Where the recorder was attached when it was asked (control mode): with the bay, what tells two
    # recorders claiming one USB serial apart. "" for identities read from a volume.
    usb_port: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClockFacts:
    """Device time against station time, measured at docking (invariant 8).

    `offset_ms` is a measurement over the control protocol, or None. A mass-storage-only recorder has no
    readable clock; its `estimate` says what its volume suggests, labelled as an estimate, or why
    nothing can be said.
    """

    device_utc_ms: int | None
    station_utc_ms: int
    offset_ms: int | None  # device minus station; None when the device has no readable clock
    tz_offset_min: int | None
    station_synchronised: bool
    clock_set: bool = False
    offset_after_set_ms: int | None = None
    station_clock_source: str = ""  # which time-sync source decided `station_synchronised`
    station_clock_reason: str = ""  # and why, in its words (for the ledger; may name system files)
    estimate: DeviceClockEstimate | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "estimate"}
        if self.estimate is not None:
            data["estimate"] = self.estimate.as_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClockFacts:
        """Back from `as_dict` (sessions stored before a field existed get its default)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "estimate"}
        estimate = data.get("estimate")
        return cls(**values, estimate=None if estimate is None else DeviceClockEstimate.from_dict(estimate))


@dataclass(frozen=True)
class SessionInfo:
    session: str
    station_id: str
    bay: int | None
    identity: RecorderIdentity
    clock: ClockFacts
