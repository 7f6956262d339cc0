"""The agency-wide fleet from a real station agent: recorders checked out at the desk (USB control protocol,
as in test_fleet), then the agent (`edge run`'s StationAgent) with its uplink to a real central over mutual
TLS. One recorder stays out past `overdue_after_h` (a few seconds here) and shows overdue at the central
with its holder; the other is docked back and shows docked in its bay, with the battery it reported. The
report interval is an hour: what reaches the central after the start does so because the fleet changed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edge.central.app import METRICS
from edge.central.embedded import EmbeddedCentral
from edge.central.equipment import EquipmentStore, fleet_view
from simulators.recorder.device import DEFAULT_FIRMWARE_VERSION
from tests.equipment.test_fleet import check_out
from tests.mounting import require_volume_mounts
from tests.station.harness import simulated_station, spec, station_config

STATION = "TEST-STATION"  # the harness's station id
WAIT_S = 120.0
FAST_RETRY = {"backoff_base_s": 0.05, "backoff_max_s": 0.3, "request_timeout_s": 20}


async def central_shows(reports: EquipmentStore, what: str, ready: Callable[[dict[str, Any]], bool]
                        ) -> dict[str, Any]:
    """The central's fleet view (what GET /v1/fleet answers an auditor of every unit) once `ready` holds."""
    deadline = time.monotonic() + WAIT_S
    while True:
        view = fleet_view(reports, None)
        if ready(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S:g} s at the central: {what}; it shows {view}")
        await asyncio.sleep(0.2)


def at_central(view: dict[str, Any], serial: str) -> dict[str, Any]:
    rows = [r for r in view["recorders"] if r["device_serial"] == serial and r["station"] == STATION]
    return rows[0] if rows else {}


async def test_a_recorder_kept_out_past_due_shows_overdue_at_the_central_and_a_returned_one_docked(
    tmp_path: Path
) -> None:
    require_volume_mounts()
    returned = spec(0, files=1, battery_percent=95)  # 张伟 takes it (the fullest), and docks it back
    kept = spec(1, files=0, battery_percent=90)  # 赵敏 takes it and keeps it
    assert await check_out(tmp_path, [returned, kept], []) == [returned.device_serial, kept.device_serial]
    central = await EmbeddedCentral.start(tmp_path, STATION, tmp_path / "store")
    reports = EquipmentStore(central.running.parts.equipment)
    config = station_config(
        tmp_path, [returned, kept],
        equipment={"enabled": True, "overdue_check_s": 1, "overdue_after_h": 3 / 3600},
        uplink={**central.uplink_config(), **FAST_RETRY, "fleet_report_interval_s": 3600})
    try:
        async with simulated_station(tmp_path, [], agent_config=config) as station:
            view = await central_shows(reports, f"{kept.device_serial} overdue", lambda v: (
                at_central(v, kept.device_serial).get("state") == "overdue"))
            late = at_central(view, kept.device_serial)
            assert (late["officer_no"], late["officer_name"], late["overdue"], late["bay"]) == (
                "220001", "赵敏", True, None)
            assert late["due_at"] > late["since"]
            [row] = view["stations"]
            assert (row["station"], row["report_version"]) == (STATION, 2)
            assert row["overdue"] >= 1 and view["overdue"] == row["overdue"]

            await station.dock_recorder(returned.device_serial, 1)
            await station.wait_results(1, timeout_s=WAIT_S)
            view = await central_shows(reports, f"{returned.device_serial} docked", lambda v: (
                at_central(v, returned.device_serial).get("state") == "docked"))
            back = at_central(view, returned.device_serial)
            assert (back["bay"], back["officer_no"], back["due_at"], back["overdue"]) == (
                1, None, None, False)
            assert back["battery_percent"] == 95 and back["last_docking"]["outcome"] is not None
            assert back["firmware"] == DEFAULT_FIRMWARE_VERSION  # GET_VERSION at its docking, reported
            assert 0 < back["storage_free_bytes"] <= back["storage_total_bytes"]
            # The one kept out is overdue still, and counted: one overdue at the station and agency-wide.
            assert at_central(view, kept.device_serial)["state"] == "overdue"
            assert view["overdue"] == 1 and view["stations"][0]["overdue"] == 1
            assert view["flagged"] == []
            # The central's metric, as its metrics listener serves it.
            exposition = central.running.app[METRICS].exposition().decode()
            assert next(sample.value for family in text_string_to_metric_families(exposition)
                        for sample in family.samples if sample.name == "edge_central_recorders_overdue") == 1
            # Both were out past due when the agent started (one `overdue` entry each); one came back.
            assert sorted(e["device_serial"] for e in station.ledger("overdue")) == sorted(
                [returned.device_serial, kept.device_serial])
            [back_late] = station.ledger("returned")
            assert back_late["device_serial"] == returned.device_serial and back_late["overdue"]["late_s"] > 0
    finally:
        await central.stop()
