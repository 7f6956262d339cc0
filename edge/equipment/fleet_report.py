"""What a station tells the central about its recorders: a pure codec, and the report from the assignments.

    REPORT  {"type": "evidence-edge fleet report", "station": S, "at": "<station UTC time>",
             "officers_version": N (the central officer list in force there, 0 for none),
             "recorders": [RECORDER, ...] (sorted by device_serial)}
    RECORDER {"device_serial": str, "state": "out" | "in", "since": "<station UTC time>",
              "officer_no": "<警号>" | null, "officer_name": str | null, "bay": int | null}

Until the station's fleet view (every recorder with its battery, firmware and last docking) lands, the
report is built from the assignments table, the station's own record of issue and return: a recorder
whose last assignment is open is ``out`` with that officer since its check-out; one whose last
assignment is closed is ``in``, returned to ``bay`` at ``since``. A recorder never issued here is not
reported.

The report goes over the station's authenticated uplink (mutual TLS, or the broker's client certificate
for the MQTT API), never over retained telemetry: it names officers and real serials (the central needs
the serials to see one recorder at two stations), which the broker's retained store must not hold.
:func:`check_report` is the central's strict reading of one.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from edge.equipment.assignments import AssignmentBook

__all__ = ["MAX_RECORDERS", "REPORT_TYPE", "FleetReportError", "check_report", "fleet_report"]

REPORT_TYPE = "evidence-edge fleet report"
MAX_RECORDERS = 2_000
_SERIAL = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_OFFICER_NO = re.compile(r"[0-9]{6}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_STATION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REPORT_MEMBERS = frozenset({"type", "station", "at", "officers_version", "recorders"})
_RECORDER_MEMBERS = frozenset({"device_serial", "state", "since", "officer_no", "officer_name", "bay"})
MAX_NAME_CHARS = 32


class FleetReportError(ValueError):
    """A report the central does not keep; the message names the member."""


def fleet_report(conn: sqlite3.Connection, *, station: str, at: str, officers_version: int = 0
                 ) -> dict[str, Any]:
    """The station's report from its assignments table (see the module docstring)."""
    AssignmentBook.create_schema(conn)
    rows = conn.execute(
        "SELECT a.device_serial, a.officer_no, a.officer_name, a.checked_out, a.returned, a.returned_bay "
        "FROM assignments a WHERE a.id = (SELECT b.id FROM assignments b WHERE b.device_serial = "
        "a.device_serial ORDER BY b.checked_out DESC, b.id DESC LIMIT 1) ORDER BY a.device_serial"
    ).fetchall()
    recorders: list[dict[str, Any]] = []
    for serial, officer_no, officer_name, checked_out, returned, returned_bay in rows[:MAX_RECORDERS]:
        if not _SERIAL.fullmatch(str(serial)):
            continue  # a serial a device made up that the central would refuse: the ledger names it
        out = returned is None
        recorders.append({
            "device_serial": str(serial), "state": "out" if out else "in",
            "since": str(checked_out if out else returned),
            "officer_no": str(officer_no) if out else None,
            "officer_name": str(officer_name)[:MAX_NAME_CHARS] if out else None,
            "bay": None if out or returned_bay is None else int(returned_bay),
        })
    return {"type": REPORT_TYPE, "station": station, "at": at, "officers_version": officers_version,
            "recorders": recorders}


def _recorder(index: int, doc: object) -> dict[str, Any]:
    where = f"recorders[{index}]"
    if not isinstance(doc, dict) or set(doc) != _RECORDER_MEMBERS:
        raise FleetReportError(f"{where}: expected exactly the members {sorted(_RECORDER_MEMBERS)}")
    serial, state, since = doc["device_serial"], doc["state"], doc["since"]
    if not isinstance(serial, str) or not _SERIAL.fullmatch(serial):
        raise FleetReportError(f"{where}.device_serial: expected 1-64 characters A-Za-z0-9_.:-")
    if state not in ("out", "in"):
        raise FleetReportError(f"{where}.state: expected out or in")
    if not isinstance(since, str) or not _TIME.fullmatch(since):
        raise FleetReportError(f"{where}.since: expected the station's UTC time")
    officer_no, name, bay = doc["officer_no"], doc["officer_name"], doc["bay"]
    if state == "out":
        if not isinstance(officer_no, str) or not _OFFICER_NO.fullmatch(officer_no):
            raise FleetReportError(f"{where}.officer_no: expected 6 digits for a recorder out")
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise FleetReportError(f"{where}.officer_name: expected printable text of at most "
                                   f"{MAX_NAME_CHARS} characters")
        if bay is not None:
            raise FleetReportError(f"{where}.bay: a recorder out is in no bay")
    else:
        if officer_no is not None or name is not None:
            raise FleetReportError(f"{where}: a recorder in a bay has no officer")
        if bay is not None and (not isinstance(bay, int) or isinstance(bay, bool) or not 0 <= bay <= 999):
            raise FleetReportError(f"{where}.bay: expected 0-999 or null")
    return dict(doc)


def check_report(doc: object, *, station: str) -> dict[str, Any]:
    """``doc`` if it is a well-formed report of ``station`` (the authenticated caller)."""
    if not isinstance(doc, dict) or set(doc) != _REPORT_MEMBERS:
        raise FleetReportError(f"expected exactly the members {sorted(_REPORT_MEMBERS)}")
    if doc["type"] != REPORT_TYPE:
        raise FleetReportError(f"type: expected {REPORT_TYPE!r}")
    if not isinstance(doc["station"], str) or not _STATION.fullmatch(doc["station"]) \
            or doc["station"] != station:
        raise FleetReportError(f"station: the report must name the station that sends it ({station})")
    if not isinstance(doc["at"], str) or not _TIME.fullmatch(doc["at"]):
        raise FleetReportError("at: expected the station's UTC time")
    version = doc["officers_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= 2**53 - 1:
        raise FleetReportError("officers_version: expected a non-negative integer")
    recorders = doc["recorders"]
    if not isinstance(recorders, list) or len(recorders) > MAX_RECORDERS:
        raise FleetReportError(f"recorders: expected an array of at most {MAX_RECORDERS}")
    checked = [_recorder(i, r) for i, r in enumerate(recorders)]
    serials = [r["device_serial"] for r in checked]
    if len(set(serials)) != len(serials):
        raise FleetReportError("recorders: a device_serial is listed twice")
    return {"type": REPORT_TYPE, "station": station, "at": doc["at"], "officers_version": version,
            "recorders": checked}
