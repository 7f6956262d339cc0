"""What a station tells the central about its recorders: a pure codec, and the two ways a station builds it.

Version 2, from the station's fleet view (:mod:`.fleet`, :func:`fleet_report_v2`), what a running agent
sends::

    REPORT  {"type": "evidence-edge fleet report", "version": 2, "station": S,
             "at": "<station UTC time of the view>", "officers_version": N (0 for none),
             "overdue_after_h": float, "recorders": [RECORDER, ...] (sorted by device_serial)}
    RECORDER {"device_serial": str,
              "state": "out" | "overdue" | "docked" | "faulty" | "away",
              "since": time | null,        # out/overdue: the check-out; docked: its docking began;
                                           # faulty/away: its last docking ended (or its return)
              "officer_no": "<警号>" | null, "officer_name": str | null,   # the holder, out/overdue only
              "due_at": time | null,       # out/overdue only: check-out + overdue_after_h
              "bay": int | null,           # docked/faulty: the bay it is in, if in one
              "battery_percent": int | null, "storage_free_bytes": int | null,
              "storage_total_bytes": int | null,   # as it reported them at its last control docking
              "firmware": str | null,      # its firmware version then (printable, <= 32 characters);
                                           # optional: a station before it sends none
              "last_docking": {"started_at": time, "ended_at": time | null,
                               "outcome": str | null} | null}   # outcome null: under way

A recorder the station only knows from its allow-list (``never_docked``) is not reported: it is nowhere yet.
Consistency the central holds a report to: ``overdue`` has ``due_at`` at or before ``at``, ``out`` after
it; only out/overdue name a holder and a due time; an ``away`` recorder is in no bay; free storage is at
most the total.

Version 1 (no ``version`` member), from the assignments table (:func:`fleet_report`): what an older
station sends, and what :class:`edge.uplink.service.UplinkService` sends without the agent's fleet view::

    REPORT  {"type": "evidence-edge fleet report", "station": S, "at": "<station UTC time>",
             "officers_version": N, "recorders": [RECORDER, ...] (sorted by device_serial)}
    RECORDER {"device_serial": str, "state": "out" | "in", "since": "<station UTC time>",
              "officer_no": "<警号>" | null, "officer_name": str | null, "bay": int | null}

a recorder whose last assignment is open is ``out`` with that officer since its check-out; one whose last
assignment is closed is ``in``, returned to ``bay`` at ``since``; one never issued is not reported.

Times are UTC with microseconds (``2026-12-06T09:00:00.000000Z``). The report goes over the station's
authenticated uplink (mutual TLS, or the broker's client certificate for the MQTT API), never over retained
telemetry: it names officers and real serials (the central needs the serials to see one recorder at two
stations), which the broker's retained store must not hold. :func:`check_report` is the central's strict
reading of either version (exact members, types, bounds; the message names the member).
"""

from __future__ import annotations

import math
import re
import sqlite3
from datetime import UTC, datetime
from typing import Any

from edge.custody.text import printable
from edge.equipment.assignments import AssignmentBook
from edge.equipment.fleet import Fleet, RecorderState, RecorderView, firmware_text

__all__ = ["MAX_RECORDERS", "REPORT_TYPE", "FleetReportError", "check_report", "fleet_report",
           "fleet_report_v2", "report_time"]

REPORT_TYPE = "evidence-edge fleet report"
MAX_RECORDERS = 2_000
_SERIAL = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_OFFICER_NO = re.compile(r"[0-9]{6}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_STATION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REPORT_MEMBERS = frozenset({"type", "station", "at", "officers_version", "recorders"})
_RECORDER_MEMBERS = frozenset({"device_serial", "state", "since", "officer_no", "officer_name", "bay"})
_REPORT_MEMBERS_V2 = _REPORT_MEMBERS | {"version", "overdue_after_h"}
_RECORDER_MEMBERS_V2 = frozenset({
    "device_serial", "state", "since", "officer_no", "officer_name", "due_at", "bay", "battery_percent",
    "storage_free_bytes", "storage_total_bytes", "last_docking"})
_OPTIONAL_RECORDER_MEMBERS_V2 = frozenset({"firmware"})
MAX_FIRMWARE_CHARS = 32
_DOCKING_MEMBERS = frozenset({"started_at", "ended_at", "outcome"})
_OUTCOME = re.compile(r"[a-z][a-z_-]{0,31}")
# The states a version 2 report carries (never_docked is not reported: the recorder is nowhere yet).
STATES_V2 = ("out", "overdue", "docked", "faulty", "away")
_HELD = frozenset({"out", "overdue"})
_NO_BAY_STATES = frozenset({RecorderState.AWAY, RecorderState.OUT, RecorderState.OVERDUE})
MAX_NAME_CHARS = 32
MAX_BAY = 999
MAX_BYTES = 2**53 - 1
MAX_OVERDUE_AFTER_H = 720.0  # the station's [equipment] overdue_after_h bound


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


def report_time(moment: datetime) -> str:
    """A report's time text: UTC with microseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _optional_time(moment: datetime | None) -> str | None:
    return None if moment is None else report_time(moment)


def _since(view: RecorderView) -> datetime | None:
    """When the recorder came into its state, as far as the station's records say."""
    if view.holder is not None:
        return view.holder.checked_out
    docking = view.docking
    if view.state is RecorderState.DOCKED:
        return None if docking is None else docking.started
    moments = [m for m in (docking.ended or docking.started if docking is not None else None,
                           view.last_holder.returned if view.last_holder is not None else None)
               if m is not None]
    return max(moments) if moments else None


def _recorder_v2(view: RecorderView) -> dict[str, Any]:
    holder, docking = view.holder, view.docking
    bay = view.bay if view.in_bay and view.bay is not None and 0 <= view.bay <= MAX_BAY else None
    outcome = None
    if docking is not None and docking.ended is not None:
        # An outcome the central would not take (another version's word, or none kept) is sent as unknown.
        outcome = docking.outcome if docking.outcome and _OUTCOME.fullmatch(docking.outcome) else "unknown"
    return {
        "device_serial": view.device_serial,
        "state": view.state.value,
        "since": _optional_time(_since(view)),
        "officer_no": None if holder is None else holder.officer_no,
        "officer_name": None if holder is None else printable(holder.officer_name)[:MAX_NAME_CHARS],
        "due_at": None if holder is None else _optional_time(view.due_at),
        # A recorder out is in no bay as far as the central is told: one just docked, its check-in not
        # yet made, is still out (and the central refuses an out recorder with a bay).
        "bay": None if view.state in _NO_BAY_STATES else bay,
        "battery_percent": view.battery_percent,
        "storage_free_bytes": view.storage_free_bytes,
        "storage_total_bytes": view.storage_total_bytes,
        "firmware": None if view.reading is None else firmware_text(view.reading.firmware),
        "last_docking": None if docking is None else {
            "started_at": report_time(docking.started), "ended_at": _optional_time(docking.ended),
            "outcome": outcome},
    }


def fleet_report_v2(fleet: Fleet, *, station: str, officers_version: int = 0) -> dict[str, Any]:
    """The station's report from its fleet view (see the module docstring); ``at`` is the view's time."""
    recorders = [
        _recorder_v2(view) for view in sorted(fleet.recorders, key=lambda v: v.device_serial)
        # never_docked: nowhere yet. A serial the central would refuse: the ledger names it already.
        if view.state is not RecorderState.NEVER_DOCKED and _SERIAL.fullmatch(view.device_serial)
        and (view.holder is None or _OFFICER_NO.fullmatch(view.holder.officer_no))
    ]
    return {"type": REPORT_TYPE, "version": 2, "station": station, "at": report_time(fleet.at),
            "officers_version": officers_version,
            "overdue_after_h": round(fleet.policy.overdue_after.total_seconds() / 3600, 6),
            "recorders": recorders[:MAX_RECORDERS]}


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _time_or_null(where: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise FleetReportError(f"{where}: expected the station's UTC time or null")
    return value


def _holder(where: str, officer_no: object, name: object) -> None:
    if not isinstance(officer_no, str) or not _OFFICER_NO.fullmatch(officer_no):
        raise FleetReportError(f"{where}.officer_no: expected 6 digits for a recorder out")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise FleetReportError(f"{where}.officer_name: expected printable text of at most "
                               f"{MAX_NAME_CHARS} characters")


def _firmware(where: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_FIRMWARE_CHARS or not value.isprintable():
        raise FleetReportError(f"{where}: expected null or 1-{MAX_FIRMWARE_CHARS} printable characters")
    return value


def _last_docking(where: str, doc: object) -> dict[str, Any] | None:
    if doc is None:
        return None
    if not isinstance(doc, dict) or set(doc) != _DOCKING_MEMBERS:
        raise FleetReportError(f"{where}: expected null or exactly the members {sorted(_DOCKING_MEMBERS)}")
    started = _time_or_null(f"{where}.started_at", doc["started_at"])
    if started is None:
        raise FleetReportError(f"{where}.started_at: expected the station's UTC time")
    # An end before the start is not refused: a station clock stepped back during a docking shows so.
    ended = _time_or_null(f"{where}.ended_at", doc["ended_at"])
    outcome = doc["outcome"]
    if outcome is not None and (not isinstance(outcome, str) or not _OUTCOME.fullmatch(outcome)):
        raise FleetReportError(f"{where}.outcome: expected null or a word of at most 32 a-z_-")
    if (outcome is None) != (ended is None):
        raise FleetReportError(f"{where}.outcome: a docking has an outcome exactly when it has ended")
    return {"started_at": started, "ended_at": ended, "outcome": outcome}


def _recorder_v2_checked(index: int, doc: object, at: str) -> dict[str, Any]:
    where = f"recorders[{index}]"
    if not isinstance(doc, dict) or not (
            _RECORDER_MEMBERS_V2 <= set(doc) <= _RECORDER_MEMBERS_V2 | _OPTIONAL_RECORDER_MEMBERS_V2):
        raise FleetReportError(f"{where}: expected exactly the members {sorted(_RECORDER_MEMBERS_V2)} "
                               f"(and optionally {sorted(_OPTIONAL_RECORDER_MEMBERS_V2)})")
    serial, state = doc["device_serial"], doc["state"]
    if not isinstance(serial, str) or not _SERIAL.fullmatch(serial):
        raise FleetReportError(f"{where}.device_serial: expected 1-64 characters A-Za-z0-9_.:-")
    if state not in STATES_V2:
        raise FleetReportError(f"{where}.state: expected one of {', '.join(STATES_V2)}")
    since = _time_or_null(f"{where}.since", doc["since"])
    due_at = _time_or_null(f"{where}.due_at", doc["due_at"])
    bay = doc["bay"]
    if state in _HELD:
        _holder(where, doc["officer_no"], doc["officer_name"])
        if since is None or due_at is None:
            raise FleetReportError(f"{where}: a recorder {state} has its check-out (since) and due_at")
        if due_at <= since:
            raise FleetReportError(f"{where}.due_at: not after its check-out")
        if state == "overdue" and due_at > at:
            raise FleetReportError(f"{where}.due_at: after the report's time, yet overdue")
        if state == "out" and due_at <= at:
            raise FleetReportError(f"{where}.due_at: past at the report's time, yet not overdue")
        if bay is not None:
            raise FleetReportError(f"{where}.bay: a recorder out is in no bay")
    else:
        if doc["officer_no"] is not None or doc["officer_name"] is not None or due_at is not None:
            raise FleetReportError(f"{where}: only a recorder out or overdue has an officer and a due_at")
        if bay is not None and (state == "away" or not _whole(bay, 0, MAX_BAY)):
            raise FleetReportError(f"{where}.bay: expected 0-{MAX_BAY} or null, and null when away")
    battery = doc["battery_percent"]
    if battery is not None and not _whole(battery, 0, 100):
        raise FleetReportError(f"{where}.battery_percent: expected 0-100 or null")
    free, total = doc["storage_free_bytes"], doc["storage_total_bytes"]
    if (free is None) != (total is None):
        raise FleetReportError(f"{where}.storage_free_bytes: given with storage_total_bytes or neither")
    if free is not None and not (_whole(total, 1, MAX_BYTES) and _whole(free, 0, MAX_BYTES)
                                 and free <= total):
        raise FleetReportError(f"{where}.storage_free_bytes: expected 0 to storage_total_bytes "
                               f"(at most {MAX_BYTES})")
    return {"device_serial": serial, "state": state, "since": since, "officer_no": doc["officer_no"],
            "officer_name": doc["officer_name"], "due_at": due_at, "bay": bay, "battery_percent": battery,
            "storage_free_bytes": free, "storage_total_bytes": total,
            "firmware": _firmware(f"{where}.firmware", doc.get("firmware")),
            "last_docking": _last_docking(f"{where}.last_docking", doc["last_docking"])}


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
    """``doc`` if it is a well-formed report of ``station`` (the authenticated caller), version 2 or 1."""
    if not isinstance(doc, dict):
        raise FleetReportError("expected a JSON object")
    if "version" in doc:
        if doc["version"] != 2 or isinstance(doc["version"], bool):
            raise FleetReportError("version: expected 2 (or no version member: a version 1 report)")
        if set(doc) != _REPORT_MEMBERS_V2:
            raise FleetReportError(f"expected exactly the members {sorted(_REPORT_MEMBERS_V2)}")
    elif set(doc) != _REPORT_MEMBERS:
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
    if "version" in doc:
        hours = doc["overdue_after_h"]
        if not isinstance(hours, (int, float)) or isinstance(hours, bool) or not math.isfinite(hours) \
                or not 0 < hours <= MAX_OVERDUE_AFTER_H:
            raise FleetReportError(f"overdue_after_h: expected more than 0, at most {MAX_OVERDUE_AFTER_H:g}")
        checked = [_recorder_v2_checked(i, r, doc["at"]) for i, r in enumerate(recorders)]
    else:
        checked = [_recorder(i, r) for i, r in enumerate(recorders)]
    serials = [r["device_serial"] for r in checked]
    if len(set(serials)) != len(serials):
        raise FleetReportError("recorders: a device_serial is listed twice")
    if "version" in doc:
        return {"type": REPORT_TYPE, "version": 2, "station": station, "at": doc["at"],
                "officers_version": version, "overdue_after_h": float(doc["overdue_after_h"]),
                "recorders": checked}
    return {"type": REPORT_TYPE, "station": station, "at": doc["at"], "officers_version": version,
            "recorders": checked}
