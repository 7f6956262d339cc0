"""An estimate of a mass-storage-only recorder's clock offset, from the times on its volume. Pure.

A recorder that only shows up as a USB disk cannot be asked its time, so its offset cannot be measured
(invariant 8 asks for device time, station time and their offset). The volume still carries the
recorder's clock: each recording's start in its file name (`{警号}_{设备号}_{YYYYMMDDHHMMSS}_{seq}.MP4`,
device wall time) and its last write in the file's mtime (FAT keeps the device's wall time; the station
mounts vfat with `tz=UTC`, so the mtime read as UTC is that wall time unchanged).

The newest recording ended at or before docking, so

    offset ≥ (newest device time on the volume, as UTC) − (station time at docking)

is a LOWER BOUND on the device-minus-station offset, equal to the offset (within FAT's 2 s resolution and
the time it took to notice the volume) when the recorder was still recording when it was docked, as
loop-recording and auto-record models are. It is recorded as an estimate with its method and basis,
never as a measurement.

Only files whose name parses and whose mtime lies between the start in the name and
`MAX_RECORDING_S` after it are a basis (an mtime that disagrees with the name was not written by the
recording, or the zone is wrong), and only when the result is within `MAX_PLAUSIBLE_OFFSET_S` of the
station's time (a clock reset to 1970/2000, or a FAT entry claiming 2200, is not a clock offset anyone
can use). Otherwise there is no estimate, and the reason says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from drivers.usb.mass_storage import parse_recorder_file_name

METHOD = "newest-recording-end"
# Recorders split recordings into files of at most 30-60 minutes (split_time); a photo has none.
MAX_RECORDING_S = 4 * 3600
MAX_PLAUSIBLE_OFFSET_S = 366 * 86400
FAT_RESOLUTION_MS = 2000
_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class TimedFile:
    """What the estimate needs of one volume file: its name, a printable path and its mtime."""

    name: str
    display_path: str
    mtime_ns: int


@dataclass(frozen=True)
class DeviceClockEstimate:
    """An ESTIMATE of the device-minus-station clock offset (a lower bound), or why there is none."""

    offset_ms: int | None
    reason: str
    basis: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "estimate",
            "bound": "lower",
            "method": METHOD,
            "offset_ms": self.offset_ms,
            "reason": self.reason,
            "basis": self.basis,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceClockEstimate:
        return cls(data.get("offset_ms"), str(data.get("reason", "")), dict(data.get("basis") or {}))


def _wall_from_mtime(mtime_ns: int) -> datetime | None:
    """The device wall time a FAT mtime holds (mounted tz=UTC), or None if no calendar holds it."""
    try:
        return _EPOCH + timedelta(microseconds=mtime_ns // 1000)
    except OverflowError:
        return None


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def estimate_device_clock_offset(
    files: Iterable[TimedFile], *, docked_utc_ms: int, tz_offset_min: int
) -> DeviceClockEstimate:
    """Estimate from the newest recording whose name and mtime agree; `tz_offset_min` is the zone the
    recorder's wall clock is assumed to keep (it cannot say)."""
    zone = timedelta(minutes=tz_offset_min)
    docked = _EPOCH + timedelta(milliseconds=docked_utc_ms)
    named = disagreeing = implausible = 0
    best: tuple[datetime, TimedFile, datetime] | None = None
    example = ""
    for file in files:
        parsed = parse_recorder_file_name(file.name)
        if parsed is None:
            continue
        named += 1
        wall = _wall_from_mtime(file.mtime_ns)
        start = parsed.recorded_at
        if wall is None or not start <= wall <= start + timedelta(seconds=MAX_RECORDING_S):
            disagreeing += 1
            example = example or (
                f"{file.display_path}: mtime {_iso(wall) if wall else 'beyond any calendar'} "
                f"vs start {_iso(start)} in its name"
            )
            continue
        if abs((wall - docked - zone).total_seconds()) > MAX_PLAUSIBLE_OFFSET_S:
            implausible += 1
            example = example or f"{file.display_path}: device time {_iso(wall)}"
            continue
        if best is None or wall > best[0]:
            best = (wall, file, start)
    counts = {"named_files": named, "disagreeing": disagreeing, "implausible": implausible}
    assumed = {"device_tz_offset_min": tz_offset_min, "station_docked_utc": _iso(docked) + "Z"}
    if best is None:
        if named == 0:
            reason = "no estimate: no file on the volume carries a recorder name with a valid time"
        elif implausible:
            reason = (
                f"no estimate: the device times are more than {MAX_PLAUSIBLE_OFFSET_S // 86400} days from "
                f"the station's (clock reset or not the device's times), e.g. {example}"
            )
        else:
            reason = (
                "no estimate: no file's mtime lies between the start in its name and "
                f"{MAX_RECORDING_S // 3600} h after it, e.g. {example}"
            )
        return DeviceClockEstimate(None, reason, {**counts, **assumed})
    wall, file, start = best
    offset_ms = round((wall - docked - zone) / timedelta(milliseconds=1))
    return DeviceClockEstimate(
        offset_ms,
        "newest recording's last write (device clock) minus the station time at docking: a lower bound on "
        "the device clock offset, equal to it when the recorder was recording until docked "
        f"(±{FAT_RESOLUTION_MS // 1000} s FAT resolution)",
        {
            **counts,
            **assumed,
            "file": file.display_path,
            "recording_start_device": _iso(start),
            "last_write_device": _iso(wall),
        },
    )
