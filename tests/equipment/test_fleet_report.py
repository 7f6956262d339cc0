"""The fleet report: built from the station's assignments; read strictly by the central (hostile input)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from edge.equipment.assignments import AssignmentBook
from edge.equipment.fleet_report import FleetReportError, check_report, fleet_report
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
