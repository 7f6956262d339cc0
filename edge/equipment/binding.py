"""Who held a recorder when a file was recorded: the `assignment` block of an offloaded item's manifest.

Pure. The station's own assignments (:mod:`.assignments`) are the authority; what the recorder claims (its
GetZFYInfo / PARAM.INI identity at docking, the 警号 in the file name) is put beside them, never in their
place. A file is placed in station time from the recorder's clock: the start in its name and its last
write (the mtime, device wall time on a `tz=UTC` mount), both moved by the device's time zone and by the
clock offset measured at docking (or its labelled estimate); `margin_s` absorbs what that leaves uncertain.

`status`:

- `bound`: one assignment covers the recording, and every claim names its officer;
- `mismatch`: one assignment covers it, and the recorder (or the file name) names another officer — it
  is flagged, never resolved: the manifest keeps both;
- `no_assignment`: no assignment of this recorder overlaps the recording (taken without a check-out,
  recorded before it was issued, or docked after its return elsewhere), or the docking was a volume that
  only names the recorder (edge.sources.usb.holders gives it no assignments);
- `ambiguous`: the recording overlaps more than one assignment, or one only in part;
- `time_unknown`: neither the name nor the mtime gives a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.usb.mass_storage import parse_recorder_file_name
from edge.equipment.assignments import Assignment

__all__ = ["BOUND", "MISMATCH", "NO_ASSIGNMENT", "assignment_block"]

BOUND = "bound"
MISMATCH = "mismatch"
NO_ASSIGNMENT = "no_assignment"
AMBIGUOUS = "ambiguous"
TIME_UNKNOWN = "time_unknown"
_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_EPOCH = datetime(1970, 1, 1)


def _station_time(wall: datetime, tz_offset_min: int, offset_ms: int) -> datetime:
    """A device wall time (naive) as station UTC: minus the device's zone, minus its clock's offset."""
    return (wall - timedelta(minutes=tz_offset_min) - timedelta(milliseconds=offset_ms)).replace(tzinfo=UTC)


def _parse(text: str) -> datetime:
    return datetime.strptime(text, _FORMAT).replace(tzinfo=UTC)


def _holder(a: Assignment) -> dict[str, Any]:
    return {"assignment": a.id, "officer_no": a.officer_no, "officer_name": a.officer_name,
            "unit_code": a.unit_code, "unit_name": a.unit_name, "checked_out": a.checked_out,
            "returned": a.returned}


def assignment_block(
    *,
    file_name: str,
    mtime_ns: int | None,
    claim: dict[str, str],
    tz_offset_min: int | None,
    offset_ms: int | None,
    offset_basis: str,
    assignments: Sequence[Assignment],
    margin_s: float,
) -> dict[str, Any]:
    """The manifest's `assignment` block for one file of a recorder (see the module docstring).

    `claim`: what the recorder said at docking (officer_no, officer_name, unit_code, unit_name,
    identity_source). `tz_offset_min` None: the zone is unknown and taken as UTC (said in `recorded`);
    `offset_ms` None: uncorrected (`offset_basis` says why)."""
    tz = tz_offset_min if tz_offset_min is not None else 0
    offset = offset_ms if offset_ms is not None else 0
    parsed = parse_recorder_file_name(file_name)
    times: list[datetime] = []
    sources: list[str] = []
    if parsed is not None:
        times.append(_station_time(parsed.recorded_at, tz, offset))
        sources.append("file name")
    if mtime_ns is not None:
        with contextlib.suppress(OverflowError):  # a FAT entry no calendar holds: the name's time alone
            times.append(_station_time(_EPOCH + timedelta(microseconds=mtime_ns // 1000), tz, offset))
            sources.append("mtime")
    device_claim = dict(claim)
    if parsed is not None:
        device_claim["file_name_officer_no"] = parsed.officer_no
    block: dict[str, Any] = {
        "basis": "station assignment records",
        "device_claim": device_claim,
        "recorded": {
            "start_utc": min(times).strftime(_FORMAT) if times else None,
            "end_utc": max(times).strftime(_FORMAT) if times else None,
            "from": sources,
            "device_tz_offset_min": tz_offset_min,
            "device_clock_offset_ms": offset_ms,
            "offset_basis": offset_basis,
            "margin_s": margin_s,
        },
        "holder": None,
    }
    if not times:
        return {**block, "status": TIME_UNKNOWN}
    start, end = min(times), max(times)
    margin = timedelta(seconds=margin_s)

    far_future = datetime.max.replace(tzinfo=UTC)

    def span(a: Assignment) -> tuple[datetime, datetime]:
        """The assignment's times widened by the margin; still out: open-ended."""
        return (_parse(a.checked_out) - margin,
                far_future if a.returned is None else _parse(a.returned) + margin)

    overlapping = [a for a in assignments if span(a)[0] <= end and start <= span(a)[1]]
    covering = [a for a in overlapping if span(a)[0] <= start and end <= span(a)[1]]
    if not overlapping:
        return {**block, "status": NO_ASSIGNMENT}
    if len(overlapping) > 1 or len(covering) != 1:
        return {**block, "status": AMBIGUOUS, "overlapping": [_holder(a) for a in overlapping]}
    holder = covering[0]
    claims = [("device identity", claim.get("officer_no")),
              ("file name", device_claim.get("file_name_officer_no"))]
    differ = [f"{what} says 警号 {said}" for what, said in claims
              if said is not None and said != holder.officer_no]
    block["holder"] = _holder(holder)
    if differ:
        return {**block, "status": MISMATCH, "mismatch": differ}
    return {**block, "status": BOUND}
