"""The fleet: every recorder this station knows, where it is and how it is, from the station's own records.

A pure view. :func:`build_fleet` takes what :mod:`.fleet_records` read from the store (the allow-list,
each recorder's latest docking and the status it reported then, its assignments and overdue alerts) and
what the agent sees live (which bay holds which recorder, the bay board's charge), and returns a
:class:`Fleet`; nothing here reads a file, a clock or a device. The recorders known: those the
allow-list names and every one that ever docked here (or was issued here).

Each recorder's ``state``:

- ``out``: an open assignment (领用): with whom (警号, name, unit) since when, due back when;
- ``overdue``: out longer than ``[equipment] overdue_after_h`` (:mod:`.overdue` writes one ``overdue``
  ledger entry per assignment, and the return closes it);
- ``faulty``: not out, and its last docking here failed (partial, pulled early, store full, failed) or a
  reading it gave at docking is out of bounds (battery outside 0-100 %, free storage above total, no
  storage at all): the ``problems`` say which;
- ``docked``: in a bay, with ``bay.state`` ``offloading`` (its docking is under way, or every file is safe
  here and some wait for the central's receipt before the recorder is wiped), ``charging`` (done,
  battery below ``min_battery_percent``) or ``ready`` (done, charged: may be issued);
- ``away``: not in a bay and not out: taken from its bay without a check-out (or the station does not
  run issue and return);
- ``never_docked``: on the allow-list, never seen here.

:func:`fleet_summary` is the JSON of the view: ``GET /api/v1/fleet``, the status's ``fleet`` part (``edge
status``, the dock screen). What goes to the central for the agency's whole fleet is made from the same
view by :func:`edge.equipment.fleet_report.fleet_report_v2` (fewer members, strict types, no unit names).
In a running agent the latest is ``StationAgent.fleet.summary()``
(:class:`edge.equipment.fleet_monitor.FleetMonitor`, refreshed every ``[equipment] overdue_check_s``; None
before its first read); it is plain JSON (str, int, float, bool, None, lists and dicts)::

    {"station": str, "at": time, "overdue_after_h": float,
     "counts": {"docked": int, "out": int, "overdue": int, "faulty": int, "away": int, "never_docked": int},
     "recorders": [RECORDER, ...]}            # overdue first, then faulty, out, docked, away, never_docked

RECORDER::

    {"device_serial": str, "usb_serial": str | null, "model": str | null,   # model: GetIDCode (maker+model)
     "allowed": bool,                                  # named by the allow-list
     "state": "out" | "overdue" | "faulty" | "docked" | "away" | "never_docked",
     "bay": {"bay": int | null, "state": "offloading" | "charging" | "ready" | "faulty",
             "charge_percent": int | null} | null,     # while it is in a bay (charge: the bay board's)
     "holder": {"assignment": int, "officer_no": str, "officer_name": str, "unit_code": str,
                "unit_name": str, "since": time, "due_at": time, "overdue": bool,
                "alerted_at": time | null} | null,     # while out (alerted_at: its `overdue` entry)
     "last_holder": {"officer_no": str, "officer_name": str, "returned_at": time} | null,
     "problems": [{"code": "last_docking_failed" | "battery_out_of_bounds" | "storage_out_of_bounds",
                   "detail": str}],
     "battery_percent": int | null, "storage_free_bytes": int | null, "storage_total_bytes": int | null,
     "status_at": time | null,                         # when it reported them (its last control docking)
     "firmware": str | null,                           # GET_VERSION at its last control docking; null:
                                                       # it reported none (older firmware) or junk
     "last_docking": {"bay": int | null, "started_at": time, "ended_at": time | null,
                      "outcome": str | null} | null,   # outcome null: under way
     "dockings": int}

Times are ISO 8601 UTC with seconds (the status model's), device text escaped with
:func:`edge.custody.text.printable`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from edge.custody.text import printable

__all__ = [
    "BayState",
    "DockingRecord",
    "Fleet",
    "FleetPolicy",
    "FleetRecords",
    "HolderRecord",
    "LiveBay",
    "Problem",
    "RecorderState",
    "RecorderView",
    "StatusReading",
    "build_fleet",
    "fleet_summary",
    "parse_station_time",
    "status_time",
]

# How a docking ended when every file was sealed (and wiped per policy): OffloadOutcome.DONE. Literals
# here (as in .checkout) so that equipment does not import the USB source; a test holds them to it.
DOCKING_DONE = "done"
# Dockings that did not fail: done, or every file safe and some waiting for the central before they are
# erased from the recorder (OffloadOutcome.AWAITING_RECEIPT, AWAITING_WITNESS).
DOCKING_FINE = frozenset({DOCKING_DONE, "awaiting-receipt", "awaiting-witness"})


class RecorderState(StrEnum):
    OUT = "out"
    OVERDUE = "overdue"
    FAULTY = "faulty"
    DOCKED = "docked"
    AWAY = "away"
    NEVER_DOCKED = "never_docked"


# The order a person reads the fleet in: what needs someone first.
STATE_ORDER = (RecorderState.OVERDUE, RecorderState.FAULTY, RecorderState.OUT, RecorderState.DOCKED,
               RecorderState.AWAY, RecorderState.NEVER_DOCKED)


class BayState(StrEnum):
    OFFLOADING = "offloading"
    CHARGING = "charging"
    READY = "ready"
    FAULTY = "faulty"


def parse_station_time(text: str) -> datetime | None:
    """A station time of the store (``...T...[.ffffff]Z``), None if it is not one."""
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=UTC)
        except (TypeError, ValueError):
            continue
    return None


def status_time(moment: datetime | None) -> str | None:
    """The status model's time text: ISO 8601 UTC, seconds, Z."""
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class DockingRecord:
    """A recorder's latest docking here (the `sessions` table)."""

    bay: int | None
    started: datetime
    ended: datetime | None
    outcome: str | None
    usb_serial: str | None = None


@dataclass(frozen=True)
class StatusReading:
    """What a recorder reported at its latest control docking (the `device_authenticated` entry). Values
    are as the device sent them: anything, until :func:`build_fleet` checks them."""

    at: datetime
    battery_percent: object = None
    storage_free_bytes: object = None
    storage_total_bytes: object = None
    model: str | None = None  # GetIDCode
    firmware: str | None = None


@dataclass(frozen=True)
class HolderRecord:
    """An assignment of the recorder (the `assignments` table) and its overdue alert, if one was raised."""

    assignment: int
    officer_no: str
    officer_name: str
    unit_code: str
    unit_name: str
    checked_out: datetime
    returned: datetime | None = None
    alerted_at: datetime | None = None


@dataclass(frozen=True)
class FleetRecords:
    """The station's records of its recorders, as :mod:`.fleet_records` read them."""

    allowed: Sequence[str]
    dockings: Mapping[str, DockingRecord] = field(default_factory=dict)  # the latest, per device serial
    docking_counts: Mapping[str, int] = field(default_factory=dict)
    readings: Mapping[str, StatusReading] = field(default_factory=dict)
    open_assignments: Mapping[str, HolderRecord] = field(default_factory=dict)
    last_returned: Mapping[str, HolderRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class LiveBay:
    """A recorder the agent sees in a bay now: the bay, and the bay board's charge reading if any."""

    bay: int | None
    charge_percent: int | None = None


@dataclass(frozen=True)
class FleetPolicy:
    overdue_after: timedelta
    min_battery_percent: int


@dataclass(frozen=True)
class Problem:
    code: str
    detail: str


@dataclass(frozen=True)
class RecorderView:
    device_serial: str
    allowed: bool
    state: RecorderState
    bay: int | None = None
    bay_state: BayState | None = None
    charge_percent: int | None = None
    holder: HolderRecord | None = None
    due_at: datetime | None = None
    last_holder: HolderRecord | None = None
    problems: tuple[Problem, ...] = ()
    battery_percent: int | None = None
    storage_free_bytes: int | None = None
    storage_total_bytes: int | None = None
    reading: StatusReading | None = None
    docking: DockingRecord | None = None
    dockings: int = 0

    @property
    def in_bay(self) -> bool:
        return self.bay_state is not None


@dataclass(frozen=True)
class Fleet:
    at: datetime
    policy: FleetPolicy
    recorders: tuple[RecorderView, ...]

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in STATE_ORDER}
        for recorder in self.recorders:
            counts[recorder.state.value] += 1
        return counts

    @property
    def overdue(self) -> tuple[RecorderView, ...]:
        return tuple(r for r in self.recorders if r.state is RecorderState.OVERDUE)


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _problems(docking: DockingRecord | None, reading: StatusReading | None) -> list[Problem]:
    found = []
    if docking is not None and docking.ended is not None and docking.outcome not in DOCKING_FINE:
        found.append(Problem("last_docking_failed", f"its last docking here ended {docking.outcome}"))
    if reading is not None:
        battery = _whole(reading.battery_percent)
        if battery is None or not 0 <= battery <= 100:
            found.append(Problem("battery_out_of_bounds",
                                 f"it reported battery {printable(str(reading.battery_percent))[:40]} %"))
        free, total = _whole(reading.storage_free_bytes), _whole(reading.storage_total_bytes)
        if free is None or total is None or total <= 0 or not 0 <= free <= total:
            found.append(Problem(
                "storage_out_of_bounds",
                f"it reported {printable(str(reading.storage_free_bytes))[:40]} bytes free of "
                f"{printable(str(reading.storage_total_bytes))[:40]}"))
    return found


def _view(serial: str, records: FleetRecords, live: Mapping[str, LiveBay], policy: FleetPolicy,
          now: datetime, allowed: frozenset[str]) -> RecorderView:
    docking = records.dockings.get(serial)
    reading = records.readings.get(serial)
    holder = records.open_assignments.get(serial)
    problems = _problems(docking, reading)
    battery = storage_free = storage_total = None
    if reading is not None and not any(p.code == "battery_out_of_bounds" for p in problems):
        battery = _whole(reading.battery_percent)
    if reading is not None and not any(p.code == "storage_out_of_bounds" for p in problems):
        storage_free, storage_total = _whole(reading.storage_free_bytes), _whole(reading.storage_total_bytes)
    here = live.get(serial)
    bay_state: BayState | None = None
    bay = None
    charge = None
    # In a bay: the agent sees it there, or its docking is under way (a restart resumes it).
    if here is not None or (docking is not None and docking.ended is None):
        bay = here.bay if here is not None else docking.bay if docking is not None else None
        charge = here.charge_percent if here is not None else None
        if docking is None or docking.ended is None or (docking.outcome != DOCKING_DONE and not problems):
            bay_state = BayState.OFFLOADING  # under way, or its files wait for the central to be erased
        elif problems:
            bay_state = BayState.FAULTY
        else:
            level = charge if charge is not None else battery
            bay_state = BayState.READY if level is not None and level >= policy.min_battery_percent \
                else BayState.CHARGING
    due_at = None
    if holder is not None:
        due_at = holder.checked_out + policy.overdue_after
        state = RecorderState.OVERDUE if now >= due_at else RecorderState.OUT
    elif problems:
        state = RecorderState.FAULTY
    elif bay_state is not None:
        state = RecorderState.DOCKED
    elif docking is None and records.last_returned.get(serial) is None:
        state = RecorderState.NEVER_DOCKED
    else:
        state = RecorderState.AWAY
    return RecorderView(
        serial, serial in allowed, state, bay, bay_state, charge, holder, due_at,
        records.last_returned.get(serial), tuple(problems), battery, storage_free, storage_total, reading,
        docking, records.docking_counts.get(serial, 0))


def build_fleet(records: FleetRecords, live: Mapping[str, LiveBay], policy: FleetPolicy,
                now: datetime) -> Fleet:
    """The fleet at `now`: `live` maps the device serial of each recorder the agent sees in a bay."""
    allowed = frozenset(records.allowed)
    serials = (allowed | set(records.dockings) | set(records.open_assignments) | set(records.last_returned)
               | set(live))
    views = [_view(serial, records, live, policy, now, allowed) for serial in serials]
    rank = {state: index for index, state in enumerate(STATE_ORDER)}
    views.sort(key=lambda v: (rank[v.state], v.bay if v.bay is not None else 1 << 30, v.device_serial))
    return Fleet(now, policy, tuple(views))


def _holder_json(view: RecorderView) -> dict[str, Any] | None:
    holder = view.holder
    if holder is None:
        return None
    return {
        "assignment": holder.assignment, "officer_no": printable(holder.officer_no),
        "officer_name": printable(holder.officer_name), "unit_code": printable(holder.unit_code),
        "unit_name": printable(holder.unit_name), "since": status_time(holder.checked_out),
        "due_at": status_time(view.due_at), "overdue": view.state is RecorderState.OVERDUE,
        "alerted_at": status_time(holder.alerted_at),
    }


MAX_FIRMWARE_CHARS = 32  # the GET_VERSION field's width (drivers/usb/PROTOCOL.md)


def firmware_text(firmware: object) -> str | None:
    """The firmware version as shown and reported: printable, at most 32 characters, None for none. The
    driver refuses junk already; this holds for ledger entries written by any version of the station."""
    if not isinstance(firmware, str) or not firmware:
        return None
    return firmware if len(firmware) <= MAX_FIRMWARE_CHARS and firmware.isprintable() else None


def recorder_json(view: RecorderView) -> dict[str, Any]:
    reading, docking, last = view.reading, view.docking, view.last_holder
    return {
        "device_serial": printable(view.device_serial),
        "usb_serial": None if docking is None or not docking.usb_serial else printable(docking.usb_serial),
        "model": None if reading is None or not reading.model else printable(reading.model),
        "allowed": view.allowed,
        "state": view.state.value,
        "bay": None if view.bay_state is None else {
            "bay": view.bay, "state": view.bay_state.value, "charge_percent": view.charge_percent},
        "holder": _holder_json(view),
        "last_holder": None if last is None else {
            "officer_no": printable(last.officer_no), "officer_name": printable(last.officer_name),
            "returned_at": status_time(last.returned)},
        "problems": [{"code": p.code, "detail": p.detail} for p in view.problems],
        "battery_percent": view.battery_percent,
        "storage_free_bytes": view.storage_free_bytes,
        "storage_total_bytes": view.storage_total_bytes,
        "status_at": None if reading is None else status_time(reading.at),
        "firmware": firmware_text(reading.firmware) if reading is not None else None,
        "last_docking": None if docking is None else {
            "bay": docking.bay, "started_at": status_time(docking.started),
            "ended_at": status_time(docking.ended), "outcome": docking.outcome},
        "dockings": view.dockings,
    }


def fleet_summary(fleet: Fleet, *, station_id: str) -> dict[str, Any]:
    """The fleet as JSON (the module docstring): for the local API, the status and the central."""
    return {
        "station": station_id,
        "at": status_time(fleet.at),
        "overdue_after_h": round(fleet.policy.overdue_after.total_seconds() / 3600, 6),
        "counts": fleet.counts(),
        "recorders": [recorder_json(view) for view in fleet.recorders],
    }
