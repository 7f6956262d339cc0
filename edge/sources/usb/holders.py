"""Who held the recorder of a docking when each of its files was recorded: the `assignment` block of each
item's manifest, from the station's assignments (edge.equipment) and the session's identity and clock."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from edge.equipment.assignments import Assignment, AssignmentBook
from edge.equipment.binding import assignment_block
from edge.ingest.store import StationStore
from edge.sources.usb.enumerate import VolumeFile
from edge.sources.usb.identity import SessionInfo

__all__ = ["file_assignment", "recorder_assignments"]


def _station_zone_min() -> int:
    offset = datetime.now().astimezone().utcoffset()
    return 0 if offset is None else int(offset.total_seconds() // 60)


# Identities read over the recorder's control protocol (now, or before the restart that resumed the session).
_CONTROL_SOURCES = ("usb-control", "resumed session")


def recorder_assignments(store: StationStore, session: SessionInfo) -> list[Assignment]:
    """The assignments the docking's files are placed against (read once per docking, before its check-in):
    those of the recorder issued on the USB serial the docking's control protocol answered on. A volume that
    only names the recorder (PARAM.INI, file names) gets none: a file cannot claim an officer's assignment."""
    identity = session.identity
    if identity.source not in _CONTROL_SOURCES or not identity.usb_serial:
        return []
    AssignmentBook.create_schema(store.conn)
    return [a for a in AssignmentBook(store.conn).of_recorder(identity.device_serial)
            if a.usb_serial == identity.usb_serial]


def file_assignment(file: VolumeFile, session: SessionInfo, assignments: list[Assignment], *,
                    margin_s: float, mass_storage_tz_offset_min: int | None) -> dict[str, Any]:
    identity, clock = session.identity, session.clock
    if clock.offset_ms is not None:
        offset_ms, basis = clock.offset_ms, "measured at docking"
    elif clock.estimate is not None and clock.estimate.offset_ms is not None:
        offset_ms, basis = clock.estimate.offset_ms, "estimated from the volume (a lower bound)"
    else:
        offset_ms, basis = None, "unknown: the device clock is taken as it is"
    tz = clock.tz_offset_min
    if tz is None:  # a recorder that cannot say its zone: [usb] mass_storage_tz_offset_min, else local
        tz = mass_storage_tz_offset_min if mass_storage_tz_offset_min is not None else _station_zone_min()
    return assignment_block(
        file_name=file.name,
        mtime_ns=file.mtime_ns,
        claim={"officer_no": identity.officer_no, "officer_name": identity.officer_name,
               "unit_code": identity.unit_code, "unit_name": identity.unit_name,
               "identity_source": identity.source},
        tz_offset_min=tz,
        offset_ms=offset_ms,
        offset_basis=basis,
        assignments=assignments,
        margin_s=margin_s,
    )
