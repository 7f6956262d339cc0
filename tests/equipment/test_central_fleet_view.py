"""The agency-wide fleet at the central from the stations' reports (version 2 from a station's fleet view,
version 1 from an older station): each recorder's state and holder, the overdue ones counted per station
and agency-wide (also one a silent station reported out that fell due since), a recorder at two stations
flagged, and the central's metric of overdue recorders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edge.central.equipment import EquipmentStore, fleet_view, overdue_count
from edge.central.metrics import CentralMetrics
from edge.central.sqlite.database import SqliteDatabase
from edge.equipment.fleet import FleetPolicy, FleetRecords, HolderRecord, LiveBay, build_fleet
from edge.equipment.fleet_report import check_report, fleet_report_v2, report_time

# Two days ago: the central's own clock (the metric's) is past every due time here.
MORNING = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def station_report(station: str, holders: dict[str, HolderRecord], docked: list[str]) -> dict[str, Any]:
    records = FleetRecords(allowed=[*holders, *docked], open_assignments=holders)
    fleet = build_fleet(records, {serial: LiveBay(index + 1) for index, serial in enumerate(docked)},
                        FleetPolicy(timedelta(hours=14), 50), MORNING)
    return check_report(fleet_report_v2(fleet, station=station), station=station)


def out_since(hours: float, officer_no: str) -> HolderRecord:
    return HolderRecord(1, officer_no, "张伟", "", "", MORNING - timedelta(hours=hours))


V1_REPORT = {"type": "evidence-edge fleet report", "station": "ST-OLD", "at": report_time(MORNING),
             "officers_version": 0,
             "recorders": [{"device_serial": "ZFY-B1", "state": "in", "since": report_time(MORNING),
                            "officer_no": None, "officer_name": None, "bay": 2}]}


def overdue_gauge(metrics: CentralMetrics) -> float:
    return next(sample.value for family in text_string_to_metric_families(metrics.exposition().decode())
                for sample in family.samples if sample.name == "edge_central_recorders_overdue")


def test_the_central_counts_overdue_recorders_per_station_and_agency_wide(tmp_path: Path) -> None:
    database = SqliteDatabase.open(tmp_path / "index.db")  # the embedded backend's central database
    store = EquipmentStore(database.equipment)
    try:
        # ST-A: ZFY-A1 overdue (out 15 h), ZFY-A2 out 13.5 h (due in half an hour), ZFY-B1 docked in bay 1.
        store.keep_report(station_report("ST-A", {"ZFY-A1": out_since(15, "110001"),
                                                  "ZFY-A2": out_since(13.5, "110002")}, ["ZFY-B1"]))
        # ST-B: one recorder out 1 h: overdue at no time in this test.
        store.keep_report(station_report("ST-B", {"ZFY-C1": out_since(1, "110003")}, []))
        # An older station reports version 1, and lists ZFY-B1 too: flagged at both.
        store.keep_report(check_report(V1_REPORT, station="ST-OLD"))

        view = fleet_view(store, None, now=MORNING + timedelta(minutes=10))
        assert view["overdue"] == 1 and view["counts"] == {"overdue": 1, "out": 2, "docked": 1, "in": 1}
        rows = {row["station"]: row for row in view["stations"]}
        assert [(s, rows[s]["report_version"], rows[s]["overdue"]) for s in sorted(rows)] == [
            ("ST-A", 2, 1), ("ST-B", 2, 0), ("ST-OLD", 1, 0)]
        assert rows["ST-A"]["counts"] == {"overdue": 1, "out": 1, "docked": 1}
        first = view["recorders"][0]  # overdue first
        assert (first["device_serial"], first["station"], first["overdue"]) == ("ZFY-A1", "ST-A", True)
        assert (first["officer_no"], first["officer_name"], first["due_at"]) == (
            "110001", "张伟", report_time(MORNING - timedelta(hours=1)))
        assert view["flagged"] == ["ZFY-B1"]
        docked = [r for r in view["recorders"] if r["station"] == "ST-A" and r["device_serial"] == "ZFY-B1"]
        assert [(r["state"], r["bay"], r["at_stations"]) for r in docked] == [
            ("docked", 1, ["ST-A", "ST-OLD"])]

        # Later, with no new report: ST-A's ZFY-A2 fell due meanwhile, so it is overdue here too.
        later = fleet_view(store, None, now=MORNING + timedelta(hours=1))
        assert later["overdue"] == 2 and {r["station"]: r["overdue"] for r in later["stations"]}["ST-A"] == 2
        assert [r["state"] for r in later["recorders"] if r["device_serial"] == "ZFY-A2"] == ["out"]
        # A reader of ST-B only: its own count.
        assert fleet_view(store, {"ST-B"}, now=MORNING + timedelta(hours=1))["overdue"] == 0

        # The metric reads every station's reports when scraped (the central's clock: two days after them).
        metrics = CentralMetrics()
        metrics.watch_fleet(lambda: overdue_count(store))
        assert overdue_gauge(metrics) == 3
        # Control: ST-A reports its recorders back (nothing out): only ST-B's, long past due by now.
        store.keep_report(station_report("ST-A", {}, ["ZFY-A1", "ZFY-A2", "ZFY-B1"]))
        assert overdue_gauge(metrics) == 1
        assert overdue_count(store, MORNING) == 0
    finally:
        database.close()
