"""Review s9 (B): GET /v1/fleet (edge/central/equipment.py `fleet`) serves `fleet_view` of the reader's
stations as it is, and `fleet_view` names every station holding a flagged serial in `at_stations`, out of
scope or not. The console page strips them (`console_fleet`: control); a reader of unit A asking /v1/fleet
with the same session or a reader certificate learns unit B's station ids and which of A's recorders they
list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.central.console.fleet import console_fleet
from edge.central.equipment import EquipmentStore, fleet_view
from edge.central.sqlite.database import SqliteDatabase
from tests.equipment.test_central_fleet_view import out_since, station_report


def _store(tmp_path: Path) -> tuple[SqliteDatabase, EquipmentStore]:
    database = SqliteDatabase.open(tmp_path / "index.db")
    store = EquipmentStore(database.equipment)
    store.keep_report(station_report("ST-A", {"ZFY-A1": out_since(1, "110001")}, ["ZFY-B1"]))
    store.keep_report(station_report("ST-SECRET-B", {"ZFY-C1": out_since(1, "110003")}, ["ZFY-B1"]))
    return database, store


def _at(view: dict[str, Any]) -> list[Any]:
    return [r["at_stations"] for r in view["recorders"] if r["device_serial"] == "ZFY-B1"]


def test_control_console_page_does_not_name_the_other_units_station(tmp_path: Path) -> None:
    database, store = _store(tmp_path)
    try:
        view = console_fleet(fleet_view(store, {"ST-A"}), {"ST-A"}, None, None)
        assert _at(view) == [["ST-A"]]
    finally:
        database.close()


def test_v1_fleet_view_of_a_scoped_reader_does_not_name_the_other_units_station(tmp_path: Path) -> None:
    database, store = _store(tmp_path)
    try:
        view = fleet_view(store, {"ST-A"})  # what GET /v1/fleet serves a reader of unit A
        assert "ST-SECRET-B" not in repr(view), _at(view)
    finally:
        database.close()
