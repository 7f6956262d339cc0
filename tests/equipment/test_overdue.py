"""Overdue alerts at the desk's store: once per assignment, across a restart, closed by the return.

The check-outs are real (the desk, the USB driver, simulated recorders); the moment of the check is
given, taken from the check-out times the station recorded, so no test waits for hours or races a
clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.config.base import ConfigError
from edge.config.station import parse_config
from edge.custody.ledger import EntryType
from edge.equipment.fleet import (
    FleetPolicy,
    LiveBay,
    RecorderState,
    build_fleet,
    fleet_summary,
    parse_station_time,
)
from edge.equipment.fleet_records import FleetRecordsReader
from edge.equipment.importing import import_officers
from edge.equipment.officer_csv import parse_officer_csv
from edge.equipment.overdue import raise_overdue_alerts
from edge.ingest.store import StationStore
from tests.equipment.test_checkout import OFFICERS, STATION, Rig, open_access
from tests.usb.conftest import SimBus


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    store = StationStore(tmp_path / "store", STATION)
    import_officers(store, parse_officer_csv(OFFICERS.encode()), source="officers.csv", by="admin")
    store.close()
    yield tmp_path / "store"


def entries(store: StationStore, type_: str) -> list[dict[str, Any]]:
    return [dict(e.data) | {"seq": e.seq} for e in store.ledger.entries() if e.type == type_]


async def test_an_overdue_recorder_is_alerted_once_across_a_restart_and_its_return_says_how_late(
        sim: SimBus, store_dir: Path) -> None:
    store = StationStore(store_dir, STATION)
    rig = Rig(sim, store, open_access(), trusted=False)
    rig.dock(0, "1-1.1", battery_percent=99)
    rig.dock(1, "1-1.2", battery_percent=90)
    late = await rig.desk.check_out_by_card("01000734E0")  # 赵敏, first
    on_time = await rig.desk.check_out_by_card("04A21B7C")  # 孙丽, after her
    first, second = rig.desk.book.open_assignments()
    out_late, out_on_time = parse_station_time(first.checked_out), parse_station_time(second.checked_out)
    assert out_late is not None and out_on_time is not None and out_on_time > out_late
    gap = out_on_time - out_late
    # Due after half the gap between the two check-outs, checked as the second one happened: the
    # first is past due, the second (the control) is not.
    due_after = gap / 2
    [alert] = raise_overdue_alerts(store, now=out_on_time, overdue_after=due_after)
    assert (alert.type, alert.data["assignment"], alert.data["officer_no"]) == ("overdue", late.id, "220001")
    assert alert.data["device_serial"] == late.device_serial and alert.data["officer_name"] == "赵敏"
    assert raise_overdue_alerts(store, now=out_on_time, overdue_after=due_after) == []  # not every tick

    # The fleet says so: the late one overdue, alerted; the other out, not overdue.
    reader = FleetRecordsReader(store_dir)
    try:
        fleet = build_fleet(reader.read([]), {}, FleetPolicy(due_after, 80), out_on_time)
    finally:
        reader.close()
    states = {r.device_serial: r for r in fleet.recorders}
    assert states[late.device_serial].state is RecorderState.OVERDUE
    assert states[late.device_serial].holder is not None
    assert states[late.device_serial].holder.alerted_at is not None  # type: ignore[union-attr]
    assert states[on_time.device_serial].state is RecorderState.OUT
    summary = fleet_summary(fleet, station_id=STATION)
    assert summary["counts"]["overdue"] == 1 and summary["counts"]["out"] == 1
    assert summary["recorders"][0]["device_serial"] == late.device_serial  # overdue first
    assert summary["recorders"][0]["holder"]["overdue"] is True
    store.close()

    # A restart: the store reopened, the check again, later but before the second is due.
    store = StationStore(store_dir, STATION)
    try:
        assert raise_overdue_alerts(store, now=out_on_time + gap / 4, overdue_after=due_after) == []
        assert len(entries(store, EntryType.OVERDUE)) == 1
        rig = Rig(sim, store, open_access(), trusted=False)
        # The control comes back on time: its `returned` entry says nothing of being late.
        assert rig.desk.check_in(on_time.device_serial, bay=2) is not None
        # The late one comes back: the return closes the alert and says how late.
        assert rig.desk.check_in(late.device_serial, bay=1) is not None
        on_time_entry, late_entry = entries(store, EntryType.RETURNED)
        assert "overdue" not in on_time_entry
        overdue = late_entry["overdue"]
        assert overdue["alerted_seq"] == entries(store, EntryType.OVERDUE)[0]["seq"]
        assert overdue["due_at"] == alert.data["due_at"]
        assert overdue["late_s"] > 0
        # Returned: no alert for either, however late the next check is.
        much_later = out_on_time + timedelta(days=30)
        assert raise_overdue_alerts(store, now=much_later, overdue_after=due_after) == []
    finally:
        store.close()


async def test_a_recorder_out_is_alerted_only_once_it_is_past_due(sim: SimBus, store_dir: Path) -> None:
    store = StationStore(store_dir, STATION)
    try:
        rig = Rig(sim, store, open_access(), trusted=False)
        rig.dock(0, "1-1.1")
        out = await rig.desk.check_out_by_card("01000734E0")
        out_at = parse_station_time(out.checked_out)
        assert out_at is not None
        due = timedelta(hours=14)
        assert raise_overdue_alerts(store, now=out_at + due - timedelta(seconds=1), overdue_after=due) == []
        [alert] = raise_overdue_alerts(store, now=out_at + due, overdue_after=due)
        assert alert.data["out_for_s"] == 14 * 3600 and alert.data["overdue_after_h"] == 14
    finally:
        store.close()


def test_a_store_without_issue_and_return_has_nothing_overdue(tmp_path: Path) -> None:
    store = StationStore(tmp_path / "store", STATION)
    try:
        assert raise_overdue_alerts(store, now=datetime.now(UTC), overdue_after=timedelta(hours=1)) == []
        reader = FleetRecordsReader(tmp_path / "store")
        try:
            fleet = build_fleet(reader.read(["3300009"]), {"3300010": LiveBay(2)},
                                FleetPolicy(timedelta(hours=14), 80), datetime.now(UTC))
        finally:
            reader.close()
        assert {(r.device_serial, r.state) for r in fleet.recorders} == {
            ("3300009", RecorderState.NEVER_DOCKED), ("3300010", RecorderState.DOCKED)}
    finally:
        store.close()


MINIMAL = '[station]\nid = "TEST-STATION"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n'


@pytest.mark.parametrize("line", ["overdue_after_h = 0", "overdue_after_h = -3", "overdue_after_h = 721",
                                  'overdue_after_h = "fourteen"', "overdue_check_s = 0"])
def test_an_overdue_setting_out_of_bounds_is_a_config_error_naming_the_key(line: str) -> None:
    key = line.split(" ", 1)[0]
    with pytest.raises(ConfigError, match=key):
        parse_config(MINIMAL + f"[equipment]\n{line}\n")
    # Control: in bounds, taken as given.
    good = "[equipment]\noverdue_after_h = 12.5\noverdue_check_s = 30\n"
    equipment = parse_config(MINIMAL + good).equipment
    assert (equipment.overdue_after_h, equipment.overdue_check_s) == (12.5, 30)
