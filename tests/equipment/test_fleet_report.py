"""The fleet report: built from the station's assignments; read strictly by the central (hostile input)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.equipment.assignments import AssignmentBook
from edge.equipment.fleet import (
    DockingRecord,
    Fleet,
    FleetPolicy,
    FleetRecords,
    HolderRecord,
    LiveBay,
    StatusReading,
    build_fleet,
)
from edge.equipment.fleet_report import FleetReportError, check_report, fleet_report, fleet_report_v2
from edge.ingest.store import StationStore

STATION = "ST-FLEET"
AT = "2026-12-06T09:00:00.000000Z"


def assign(store: StationStore, serial: str, officer_no: str, out: str, back: str | None, bay: int) -> None:
    book = AssignmentBook(store.conn)
    with store.transaction():
        opened = book.open(officer_no=officer_no, officer_name="张伟", unit_code="", unit_name="",
                           device_serial=serial, usb_serial="U1", bay=1, method="card", checked_out=out,
                           seq=1)
        if back is not None:
            book.close(opened.id, returned=back, bay=bay, seq=2)


@pytest.fixture
def report(tmp_path: Path) -> dict[str, Any]:
    store = StationStore(tmp_path / "store", STATION)
    try:
        AssignmentBook.create_schema(store.conn)
        # ZFY-1: out, then back in bay 2, then out again with 110002 (the latest counts).
        assign(store, "ZFY-1", "110001", "2026-12-05T08:00:00.000000Z", "2026-12-05T18:00:00.000000Z", 2)
        assign(store, "ZFY-1", "110002", "2026-12-06T08:00:00.000000Z", None, 0)
        assign(store, "ZFY-2", "110003", "2026-12-05T08:00:00.000000Z", "2026-12-05T17:00:00.000000Z", 4)
        return fleet_report(store.conn, station=STATION, at=AT)
    finally:
        store.close()


def test_the_report_says_which_recorder_is_out_with_whom_since_when_and_which_is_in_a_bay(
    report: dict[str, Any]
) -> None:
    assert report["station"] == STATION and report["officers_version"] == 0
    assert report["recorders"] == [
        {"device_serial": "ZFY-1", "state": "out", "since": "2026-12-06T08:00:00.000000Z",
         "officer_no": "110002", "officer_name": "张伟", "bay": None},
        {"device_serial": "ZFY-2", "state": "in", "since": "2026-12-05T17:00:00.000000Z",
         "officer_no": None, "officer_name": None, "bay": 4},
    ]
    assert check_report(report, station=STATION) == report


@pytest.mark.parametrize("fault, message", [
    (lambda r: r.update(station="ST-OTHER"), "must name the station"),
    (lambda r: r.update(extra=1), "exactly the members"),
    (lambda r: r["recorders"][0].update(device_serial="../../etc/passwd"), "device_serial"),
    (lambda r: r["recorders"][0].update(device_serial="ZFY\x1b[31m"), "device_serial"),
    (lambda r: r["recorders"][0].update(officer_no="11000"), "officer_no"),
    (lambda r: r["recorders"][0].update(officer_name="x" * 33), "officer_name"),
    (lambda r: r["recorders"][0].update(bay=3), "in no bay"),
    (lambda r: r["recorders"][1].update(bay=True), "bay"),
    (lambda r: r["recorders"][1].update(officer_no="110001"), "no officer"),
    (lambda r: r["recorders"][1].update(state="lost"), "state"),
    (lambda r: r["recorders"][1].update(since="yesterday"), "since"),
    (lambda r: r["recorders"].append(dict(r["recorders"][0])), "listed twice"),
    (lambda r: r.update(recorders=[r["recorders"][0]] * 2001), "at most 2000"),
    (lambda r: r.update(at=12), "at:"),
    (lambda r: r.update(officers_version=-1), "officers_version"),
    (lambda r: r.update(officers_version="1"), "officers_version"),
])
def test_a_malformed_report_is_refused_naming_what(report: dict[str, Any], fault: Any, message: str) -> None:
    bad = copy.deepcopy(report)
    fault(bad)
    with pytest.raises(FleetReportError, match=message):
        check_report(bad, station=STATION)


# -- version 2: from the station's fleet view ------------------------------------------------------------

NOW = datetime(2026, 12, 6, 9, 0, 0, tzinfo=UTC)
POLICY = FleetPolicy(overdue_after=timedelta(hours=14), min_battery_percent=50)


def holder(number: int, officer_no: str, name: str, out: datetime) -> HolderRecord:
    return HolderRecord(number, officer_no, name, "330100000000", "杭州市公安局", out)


@pytest.fixture
def fleet() -> Fleet:
    """ZFY-LATE out 15 h (overdue), ZFY-OUT out 2 h, ZFY-BAY back in bay 3 (docked, its reading), ZFY-BAD
    whose last docking failed (faulty, out of its bay), ZFY-NEW on the allow-list only (not reported)."""
    docked = DockingRecord(3, NOW - timedelta(minutes=30), NOW - timedelta(minutes=20), "done")
    records = FleetRecords(
        allowed=["ZFY-LATE", "ZFY-OUT", "ZFY-BAY", "ZFY-BAD", "ZFY-NEW"],
        dockings={"ZFY-BAY": docked,
                  "ZFY-BAD": DockingRecord(5, NOW - timedelta(hours=3), NOW - timedelta(hours=2), "partial")},
        docking_counts={"ZFY-BAY": 2, "ZFY-BAD": 1},
        readings={"ZFY-BAY": StatusReading(NOW - timedelta(minutes=30), 95, 1_000, 64_000, "EEZ01",
                                           "V2.4.1_20260301"),
                  # A ledger entry of a station that kept whatever the device said: not reported.
                  "ZFY-BAD": StatusReading(NOW - timedelta(hours=3), 50, 0, 1, None, "V9\x1b[2J\r\n")},
        open_assignments={"ZFY-LATE": holder(1, "110001", "张伟", NOW - timedelta(hours=15)),
                          "ZFY-OUT": holder(2, "110002", "王芳", NOW - timedelta(hours=2))},
        last_returned={"ZFY-BAY": HolderRecord(3, "110003", "李四", "", "", NOW - timedelta(hours=9),
                                               returned=NOW - timedelta(minutes=30))},
    )
    return build_fleet(records, {"ZFY-BAY": LiveBay(3)}, POLICY, NOW)


@pytest.fixture
def report_v2(fleet: Fleet) -> dict[str, Any]:
    return fleet_report_v2(fleet, station=STATION, officers_version=4)


def test_the_version_2_report_says_each_recorders_state_holder_due_time_health_and_last_docking(
    report_v2: dict[str, Any]
) -> None:
    assert {k: v for k, v in report_v2.items() if k != "recorders"} == {
        "type": "evidence-edge fleet report", "version": 2, "station": STATION,
        "at": "2026-12-06T09:00:00.000000Z", "officers_version": 4, "overdue_after_h": 14.0}
    recorders = {r["device_serial"]: r for r in report_v2["recorders"]}
    assert list(recorders) == ["ZFY-BAD", "ZFY-BAY", "ZFY-LATE", "ZFY-OUT"]  # never_docked: not reported
    assert recorders["ZFY-LATE"] == {
        "device_serial": "ZFY-LATE", "state": "overdue", "since": "2026-12-05T18:00:00.000000Z",
        "officer_no": "110001", "officer_name": "张伟", "due_at": "2026-12-06T08:00:00.000000Z", "bay": None,
        "battery_percent": None, "storage_free_bytes": None, "storage_total_bytes": None,
        "firmware": None, "last_docking": None}
    out = recorders["ZFY-OUT"]
    assert (out["state"], out["officer_no"], out["due_at"]) == (
        "out", "110002", "2026-12-06T21:00:00.000000Z")
    assert recorders["ZFY-BAY"] == {
        "device_serial": "ZFY-BAY", "state": "docked", "since": "2026-12-06T08:30:00.000000Z",
        "officer_no": None, "officer_name": None, "due_at": None, "bay": 3, "battery_percent": 95,
        "storage_free_bytes": 1_000, "storage_total_bytes": 64_000, "firmware": "V2.4.1_20260301",
        "last_docking": {"started_at": "2026-12-06T08:30:00.000000Z",
                         "ended_at": "2026-12-06T08:40:00.000000Z", "outcome": "done"}}
    bad = recorders["ZFY-BAD"]
    assert (bad["state"], bad["bay"], bad["since"], bad["last_docking"]["outcome"]) == (
        "faulty", None, "2026-12-06T07:00:00.000000Z", "partial")
    assert bad["firmware"] is None
    assert check_report(report_v2, station=STATION) == report_v2  # the control of the refusals below


def recorder_of(report: dict[str, Any], serial: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in report["recorders"] if r["device_serial"] == serial)
    return found


@pytest.mark.parametrize("fault, message", [
    (lambda r: r.update(version=3), "version: expected 2"),
    (lambda r: r.update(version=True), "version: expected 2"),
    (lambda r: r.pop("overdue_after_h"), "exactly the members"),
    (lambda r: r.update(overdue_after_h=0), "overdue_after_h"),
    (lambda r: r.update(overdue_after_h=1e308 * 10), "overdue_after_h"),
    (lambda r: r.update(overdue_after_h="14"), "overdue_after_h"),
    (lambda r: r.update(station="ST-OTHER"), "must name the station"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(extra=1), r"recorders\[1\]: expected exactly the members"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(state="never_docked"), r"recorders\[1\]\.state"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(device_serial="ZFY\x1b[31m"), "device_serial"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(battery_percent=101), "battery_percent"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(battery_percent=-1), "battery_percent"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(battery_percent=True), "battery_percent"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(storage_free_bytes=64_001), "storage_free_bytes"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(storage_total_bytes=None), "storage_free_bytes"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(storage_free_bytes=2**53, storage_total_bytes=2**60),
     "storage_free_bytes"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(bay=1000), "bay"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(firmware="V9\x1b[2J"), "firmware"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(firmware="V" * 10_240), "firmware"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(firmware=""), "firmware"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(firmware=2), "firmware"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(bay="3"), "bay"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(officer_no="110001"), "only a recorder out"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(due_at="2026-12-06T21:00:00.000000Z"), "only a recorder out"),
    (lambda r: recorder_of(r, "ZFY-BAY").update(since="2026-12-06 08:30"), "since"),
    (lambda r: recorder_of(r, "ZFY-BAY")["last_docking"].update(outcome="DONE; rm -rf"), "outcome"),
    (lambda r: recorder_of(r, "ZFY-BAY")["last_docking"].update(outcome=None), "exactly when it has ended"),
    (lambda r: recorder_of(r, "ZFY-BAY")["last_docking"].update(ended_at="2026-12-06 08:40"), "ended_at"),
    (lambda r: recorder_of(r, "ZFY-BAY")["last_docking"].update(started_at=None), "started_at"),
    (lambda r: recorder_of(r, "ZFY-BAY")["last_docking"].update(by="x"), "last_docking"),
    (lambda r: recorder_of(r, "ZFY-BAD").update(state="away", bay=5), "null when away"),
    (lambda r: recorder_of(r, "ZFY-LATE").update(officer_name=None), "officer_name"),
    (lambda r: recorder_of(r, "ZFY-LATE").update(officer_no="11000x"), "officer_no"),
    (lambda r: recorder_of(r, "ZFY-LATE").update(due_at=None), "has its check-out"),
    (lambda r: recorder_of(r, "ZFY-LATE").update(bay=2), "in no bay"),
    (lambda r: recorder_of(r, "ZFY-LATE").update(due_at="2026-12-06T10:00:00.000000Z"), "yet overdue"),
    (lambda r: recorder_of(r, "ZFY-OUT").update(due_at="2026-12-06T08:59:00.000000Z"), "yet not overdue"),
    (lambda r: recorder_of(r, "ZFY-OUT").update(due_at="2026-12-06T07:00:00.000000Z", state="overdue"),
     "not after its check-out"),
    (lambda r: r["recorders"].append(dict(r["recorders"][0])), "listed twice"),
    (lambda r: r["recorders"][0].update(bay=3, officer_no=None) or r.pop("version"), "exactly the members"),
])
def test_a_malformed_version_2_report_is_refused_naming_what(
    report_v2: dict[str, Any], fault: Any, message: str
) -> None:
    bad = copy.deepcopy(report_v2)
    fault(bad)
    with pytest.raises(FleetReportError, match=message):
        check_report(bad, station=STATION)


def test_a_recorder_out_that_just_docked_is_reported_out_in_no_bay() -> None:
    """Docked, its check-in not yet made: out by the station's records, in a bay by its board. The central
    refuses an out recorder with a bay, so the report says out, in no bay (it did refuse such a report)."""
    records = FleetRecords(allowed=["ZFY-BACK"], open_assignments={
        "ZFY-BACK": holder(1, "110001", "张伟", NOW - timedelta(hours=2))})
    report = fleet_report_v2(build_fleet(records, {"ZFY-BACK": LiveBay(2)}, POLICY, NOW), station=STATION)
    [back] = report["recorders"]
    assert (back["state"], back["bay"], back["officer_no"]) == ("out", None, "110001")
    assert check_report(report, station=STATION) == report


def test_a_version_2_report_from_before_firmware_is_still_read(report_v2: dict[str, Any]) -> None:
    older = copy.deepcopy(report_v2)
    for recorder in older["recorders"]:
        del recorder["firmware"]
    read = check_report(older, station=STATION)
    assert {r["device_serial"]: r["firmware"] for r in read["recorders"]} == {
        "ZFY-BAD": None, "ZFY-BAY": None, "ZFY-LATE": None, "ZFY-OUT": None}


def test_a_docking_outcome_the_central_would_not_take_goes_as_unknown() -> None:
    ended = NOW - timedelta(minutes=5)
    records = FleetRecords(allowed=[], dockings={
        "ZFY-ODD": DockingRecord(1, NOW - timedelta(minutes=9), ended, "Pulled Out!"),
        "ZFY-NONE": DockingRecord(2, NOW - timedelta(minutes=9), ended, None),
        "ZFY-NOW": DockingRecord(3, NOW - timedelta(minutes=1), None, None)})
    report = fleet_report_v2(build_fleet(records, {}, POLICY, NOW), station=STATION)
    assert {r["device_serial"]: r["last_docking"]["outcome"] for r in report["recorders"]} == {
        "ZFY-NONE": "unknown", "ZFY-NOW": None, "ZFY-ODD": "unknown"}
    assert check_report(report, station=STATION) == report


def test_a_version_1_report_of_an_older_station_is_still_read(report: dict[str, Any]) -> None:
    assert "version" not in report
    assert check_report(report, station=STATION)["recorders"][0]["state"] == "out"
