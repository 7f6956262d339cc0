"""The fleet of a real station agent, from real check-outs at the desk and real dockings of simulated
recorders: each recorder's state (in a bay and how, out with whom, overdue, faulty, away, never docked),
its health as it reported it at docking, its last docking; the overdue alert once, also across an agent
restart, with a control that is not overdue; `edge status --json`, GET /api/v1/fleet and the metric.

Phase 1 (no agent, so the recorders stay in control mode for the desk; as in test_shift): the station's
record of the recorders' last docking, the officer list, and check-outs through the USB control
protocol. Phase 2: the station agent docks some of them (check-in and offload) while others stay out."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from edge.custody.ledger import station_time_now
from edge.equipment.checkout import CheckoutDesk, CheckoutPolicy
from edge.equipment.fleet import (
    DOCKING_DONE,
    DOCKING_FINE,
    BayState,
    DockingRecord,
    FleetPolicy,
    FleetRecords,
    LiveBay,
    RecorderState,
    StatusReading,
    build_fleet,
    fleet_summary,
)
from edge.equipment.fleet_records import reading_of_entry
from edge.equipment.importing import import_officers
from edge.equipment.officer_csv import parse_officer_csv
from edge.equipment.usb_recorders import RecorderAccess, UsbRecorderBench
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome
from simulators.recorder.backend import get_backend
from simulators.recorder.bus import RecorderBus, RecorderBusServer, RecorderSpec
from simulators.recorder.device import DEFAULT_FIRMWARE_VERSION, FirmwareFault
from simulators.recorder.faultfs import VolumeFaults
from tests.mounting import require_volume_mounts
from tests.station.harness import PASSWORD, Station, eventually, simulated_station, spec, station_config

OFFICERS = ("警号,姓名,单位编号,单位名称,卡号\n"
            "110001,张伟,330100000000,杭州市综合行政执法局,01000734E0\n"
            "220001,赵敏,330100000000,杭州市综合行政执法局,04A21B7C\n")
WAIT_S = 60.0


async def check_out(root: Path, docked_before: list[RecorderSpec], others: list[RecorderSpec], *,
                    officers: str = OFFICERS) -> list[str]:
    """Phase 1: every recorder on the bus, those of `docked_before` with a finished docking here; two
    check-outs by card (01000734E0, 张伟, first; then 04A21B7C); the serials they took, in that order."""
    bus = RecorderBus(root / "sim" / "state", root / "media")
    server = RecorderBusServer(bus, root / "sim" / "bus.sock")
    server.start()
    backend = get_backend(root / "sim" / "bus.sock")
    store = StationStore(root / "store", "TEST-STATION")
    try:
        import_officers(store, parse_officer_csv(officers.encode()), source="officers.csv", by="admin")
        repository = IngestRepository(store)
        for index, s in enumerate([*docked_before, *others]):
            bus.add_recorder(s)
            if s in docked_before:
                bus.plug(s.device_serial, f"1-1.{index + 1}")
                session = str(uuid.uuid4())
                repository.start_session(session, device_serial=s.device_serial, usb_serial=s.usb_serial,
                                         bay=index + 1, started=station_time_now(), facts={}, entry={})
                repository.end_session(session, ended=station_time_now(), outcome="done", entry={})
        access = RecorderAccess(lambda usb_serial: None, lambda usb_serial: PASSWORD, lambda d, u: None,
                                lambda port: int(port.rsplit(".", 1)[1]))

        async def untrusted() -> bool:
            return False

        desk = CheckoutDesk(store, UsbRecorderBench(backend, access), CheckoutPolicy(min_battery_percent=50),
                            clock_trusted=untrusted)
        first = await desk.check_out_by_card("01000734E0")
        second = await desk.check_out_by_card("04A21B7C")
    finally:
        store.close()
    for s in docked_before:
        bus.unplug(s.device_serial)
    backend.close()
    server.stop()
    bus.close()
    return [first.device_serial, second.device_serial]


def edge_status_json(socket_path: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "edge.cli", "status", "--socket", str(socket_path), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status: dict[str, Any] = json.loads(done.stdout)
    return status


async def fleet_over_api(socket_path: Path) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as client, \
            client.get("http://station/api/v1/fleet") as response:
        assert response.status == 200, await response.text()
        fleet: dict[str, Any] = await response.json()
        return fleet


async def overdue_gauge(socket_path: Path) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as client, \
            client.get("http://station/metrics") as response:
        text = await response.text()
    return next(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == "edge_station_recorders_overdue")


def by_serial(fleet: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["device_serial"]: r for r in fleet["recorders"]}


async def fresh_fleet(station: Station, ready: Any) -> dict[str, Any]:
    """The agent's fleet once `ready(fleet)` holds (the fleet task checks every overdue_check_s)."""
    assert station.agent.fleet is not None
    found: dict[str, Any] = {}

    def check() -> bool:
        nonlocal found
        summary = station.agent.fleet.summary() if station.agent.fleet is not None else None
        found = summary or {}
        return summary is not None and bool(ready(summary))

    await eventually(check, WAIT_S)
    return found


async def test_the_fleet_of_a_station_from_its_check_outs_and_dockings(tmp_path: Path) -> None:
    require_volume_mounts()
    short = Path("/tmp") / f"edge-fleet-{uuid.uuid4().hex[:8]}"
    short.mkdir()
    socket_path = short / "station.sock"
    returned = spec(0, files=1, battery_percent=95)  # 张伟 takes it (the fullest), and docks it back
    kept = spec(1, files=0, battery_percent=90)  # 赵敏 takes it and keeps it: out, then overdue
    broken = spec(2, files=2, battery_percent=60,  # never checked out; its offload fails a file
                  faults=VolumeFaults(read_error=("*_0001.MP4", 4096)),
                  firmware_fault=FirmwareFault.CONTROL_CHARS)  # and its version string is hostile
    unseen = spec(3)  # on the allow-list, never docked
    taken = await check_out(tmp_path, [returned, kept], [broken])
    assert taken == [returned.device_serial, kept.device_serial]
    config = station_config(tmp_path, [returned, kept, broken, unseen],
                            equipment={"enabled": True, "overdue_check_s": 1},
                            api={"socket_path": str(socket_path)})
    try:
        async with simulated_station(tmp_path, [], agent_config=config) as station:
            await station.dock_recorder(returned.device_serial, 1)
            await station.dock_recorder(broken.device_serial, 3)
            await station.wait_results(2, timeout_s=120)
            fleet = await fresh_fleet(station, lambda f: (
                by_serial(f)[broken.device_serial]["state"] == "faulty"
                and by_serial(f)[returned.device_serial]["state"] == "docked"))
            recorders = by_serial(fleet)
            assert set(recorders) == {returned.device_serial, kept.device_serial, broken.device_serial,
                                      unseen.device_serial}
            back = recorders[returned.device_serial]
            assert back["bay"] == {"bay": 1, "state": "ready", "charge_percent": None}
            assert back["last_holder"]["officer_no"] == "110001" and back["holder"] is None
            assert back["dockings"] == 2 and back["last_docking"]["outcome"] == "done"
            assert (back["battery_percent"], back["model"]) == (95, "EEZ01")
            assert back["firmware"] == DEFAULT_FIRMWARE_VERSION  # GET_VERSION at its docking
            assert back["storage_total_bytes"] == returned.storage_total_bytes
            assert 0 < back["storage_free_bytes"] < back["storage_total_bytes"]
            out = recorders[kept.device_serial]
            assert out["state"] == "out" and out["bay"] is None
            assert (out["holder"]["officer_no"], out["holder"]["officer_name"]) == ("220001", "赵敏")
            since = datetime.strptime(out["holder"]["since"], "%Y-%m-%dT%H:%M:%SZ")
            due = datetime.strptime(out["holder"]["due_at"], "%Y-%m-%dT%H:%M:%SZ")
            assert due - since == timedelta(hours=14) and out["holder"]["overdue"] is False
            faulty = recorders[broken.device_serial]
            assert faulty["bay"]["state"] == "faulty" and faulty["last_docking"]["outcome"] == "partial"
            assert [p["code"] for p in faulty["problems"]] == ["last_docking_failed"]
            # A hostile version string is no version: none shown, an error entry says why, on one line.
            assert faulty["firmware"] is None
            [refused] = [e for e in station.ledger("error") if e.get("stage") == "firmware-version"]
            assert refused["device_serial"] == broken.device_serial
            assert "printable" in refused["reason"] and refused["reason"].isprintable()
            assert recorders[unseen.device_serial]["state"] == "never_docked"
            assert recorders[unseen.device_serial]["allowed"] is True
            # `edge status --json` and the API carry the same view.
            status = await asyncio.to_thread(edge_status_json, socket_path)
            assert by_serial(status["fleet"])[kept.device_serial]["state"] == "out"
            assert by_serial(await fleet_over_api(socket_path))[broken.device_serial]["state"] == "faulty"
            assert await overdue_gauge(socket_path) == 0
            # Taken from its bay with no check-out: away.
            await station.undock(returned.device_serial, 1)
            fleet = await fresh_fleet(
                station, lambda f: by_serial(f)[returned.device_serial]["state"] == "away")
            assert by_serial(fleet)[returned.device_serial]["bay"] is None
            assert station.ledger("overdue") == []  # 14 h: nothing was overdue

        # The agent again, with a threshold of a few seconds: 赵敏's recorder, out since phase 1, is overdue.
        config = config.model_copy(update={"equipment": config.equipment.model_copy(
            update={"overdue_after_h": 2 / 3600})})
        async with simulated_station(tmp_path, [], agent_config=config) as station:
            [alert] = await station.wait_ledger("overdue", timeout_s=WAIT_S)
            assert (alert["device_serial"], alert["officer_no"]) == (kept.device_serial, "220001")
            fleet = await fresh_fleet(station, lambda f: f["counts"]["overdue"] == 1)
            assert by_serial(fleet)[kept.device_serial]["holder"]["alerted_at"] is not None
            assert by_serial(fleet)[returned.device_serial]["state"] == "away"  # returned: never overdue
            status = await asyncio.to_thread(edge_status_json, socket_path)
            assert status["fleet"]["counts"]["overdue"] == 1
            assert status["fleet"]["recorders"][0]["device_serial"] == kept.device_serial  # first
            assert await overdue_gauge(socket_path) == 1
            shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "edge.cli", "status",
                                            "--socket", str(socket_path)], capture_output=True, text=True,
                                            timeout=60)
            assert f"recorder {kept.device_serial}: OVERDUE (赵敏 220001 since" in shown.stdout
            assert "fleet: 4 recorder(s): 1 OVERDUE" in shown.stdout

        # Restarted once more, still overdue: no second alert.
        async with simulated_station(tmp_path, [], agent_config=config) as station:
            await fresh_fleet(station, lambda f: f["counts"]["overdue"] == 1)
            # Its return closes the alert and says how late it came back.
            await station.dock_recorder(kept.device_serial, 2)
            await station.wait_results(1, timeout_s=120)
            [back_late] = await station.wait_ledger("returned", where=lambda e: e["officer_no"] == "220001")
            assert back_late["overdue"]["late_s"] > 0
            fleet = await fresh_fleet(station, lambda f: f["counts"]["overdue"] == 0)
            assert by_serial(fleet)[kept.device_serial]["state"] == "docked"
            assert len(station.ledger("overdue")) == 1
            assert back_late["overdue"]["alerted_seq"] == next(
                e.seq for e in station.agent.store.ledger.entries()  # type: ignore[union-attr]
                if e.type == "overdue")
    finally:
        for leftover in short.iterdir():
            leftover.unlink()
        short.rmdir()


def test_hostile_readings_in_the_ledger_are_faults_not_numbers() -> None:
    now = datetime.now(UTC)
    at = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # Entries that hold no reading: not JSON, not an object, no serial, no status.
    for junk in ("{", "[]", '{"status": {}}', '{"device_serial": "", "status": {}}',
                 '{"device_serial": "3300001", "status": 5}'):
        assert reading_of_entry(at, junk) is None
    assert reading_of_entry("yesterday", '{"device_serial": "3300001", "status": {}}') is None
    found = reading_of_entry(at, json.dumps({"device_serial": "3300001", "identity": {"id_code": "EEZ01"},
                                             "status": {"battery_percent": "101", "storage_free_bytes": 9,
                                                        "storage_total_bytes": 4}}))
    assert found is not None
    serial, reading = found
    docked = DockingRecord(1, now - timedelta(minutes=5), now - timedelta(minutes=1), "done")
    sane = StatusReading(now, 90, 4, 9, "EEZ01")
    records = FleetRecords(["3300001", "3300002"], {"3300001": docked, "3300002": docked},
                           {"3300001": 1, "3300002": 1}, {serial: reading, "3300002": sane})
    live = {"3300001": LiveBay(1), "3300002": LiveBay(2)}
    fleet = build_fleet(records, live, FleetPolicy(timedelta(hours=14), 80), now)
    views = {r.device_serial: r for r in fleet.recorders}
    hostile = views["3300001"]
    assert hostile.state is RecorderState.FAULTY
    assert [p.code for p in hostile.problems] == ["battery_out_of_bounds", "storage_out_of_bounds"]
    assert hostile.battery_percent is None and hostile.storage_free_bytes is None  # never shown as numbers
    # The control: the same docking with readings in bounds is docked and ready.
    assert views["3300002"].state is RecorderState.DOCKED and views["3300002"].battery_percent == 90
    summary = fleet_summary(fleet, station_id="TEST-STATION")
    assert summary["recorders"][0]["device_serial"] == "3300001"  # faulty before docked
    assert "101" in summary["recorders"][0]["problems"][0]["detail"]


async def test_a_recorder_pulled_out_early_is_faulty_and_not_in_its_bay_at_once(tmp_path: Path) -> None:
    require_volume_mounts()
    pulled = spec(0, files=3, faults=VolumeFaults(unplug_after_bytes=100_000))
    whole = spec(1, files=1)  # the control: the same docking, not pulled out
    # Read every hour only: what the fleet shows below, the dockings' ledger entries brought forward.
    config = station_config(tmp_path, [pulled, whole], equipment={"overdue_check_s": 3600})
    async with simulated_station(tmp_path, [pulled, whole], agent_config=config) as station:
        before = await fresh_fleet(station, lambda f: True)  # the read at start: nothing docked yet
        assert {r["state"] for r in before["recorders"]} == {"never_docked"}
        await station.dock_recorder(pulled.device_serial, 1)
        await station.dock_recorder(whole.device_serial, 2)
        await station.wait_results(2, timeout_s=120)
        # The bay still tells the officer to dock it again; the recorder itself is not there.
        await eventually(lambda: (station.agent.status.bay("1") or {}).get("error_class") == "pulled_early",
                         WAIT_S)
        # The two dockings end at different times: a read between their session_stopped entries shows
        # the whole one still docked and offloading; the second entry brings the read that ends it.
        fleet = await fresh_fleet(station, lambda f: (
            by_serial(f)[pulled.device_serial]["state"] == "faulty"
            and by_serial(f)[whole.device_serial]["state"] == "docked"
            and by_serial(f)[whole.device_serial]["last_docking"]["ended_at"] is not None))
        gone, docked = by_serial(fleet)[pulled.device_serial], by_serial(fleet)[whole.device_serial]
        assert gone["bay"] is None and gone["last_docking"]["outcome"] == OffloadOutcome.DEVICE_GONE
        assert [p["code"] for p in gone["problems"]] == ["last_docking_failed"]
        assert docked["bay"]["bay"] == 2 and docked["bay"]["state"] in ("ready", "charging")


def test_the_fleets_docking_outcomes_are_the_offloads() -> None:
    """The fleet names docking outcomes as literals (equipment does not import the USB source)."""
    fine = {OffloadOutcome.DONE, OffloadOutcome.AWAITING_RECEIPT, OffloadOutcome.AWAITING_WITNESS}
    assert set(DOCKING_FINE) == fine
    assert OffloadOutcome(DOCKING_DONE) is OffloadOutcome.DONE


def test_a_recorder_whose_files_wait_for_the_central_is_not_ready_to_issue() -> None:
    now = datetime.now(UTC)
    reading = StatusReading(now, 99, 4, 9, "EEZ01")
    dockings = {serial: DockingRecord(1, now - timedelta(minutes=5), now, outcome)
                for serial, outcome in (("3300001", OffloadOutcome.AWAITING_RECEIPT.value),
                                        ("3300002", OffloadOutcome.DONE.value))}
    records = FleetRecords([], dockings, readings={"3300001": reading, "3300002": reading})
    fleet = build_fleet(records, {"3300001": LiveBay(1), "3300002": LiveBay(2)},
                        FleetPolicy(timedelta(hours=14), 80), now)
    views = {r.device_serial: r for r in fleet.recorders}
    assert (views["3300001"].state, views["3300001"].bay_state) == (RecorderState.DOCKED, BayState.OFFLOADING)
    assert views["3300002"].bay_state is BayState.READY  # control: done, charged
