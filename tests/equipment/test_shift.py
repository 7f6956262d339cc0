"""A shift through a real station agent: check-out at the desk, recording while out, docking (check-in) and
offload; each item's manifest says who held the recorder by the station's records, beside its claims.

Phase 1 (the agent not running, so the recorders stay in control mode for the desk): the station's record
of the recorders' last docking, the officer list, and check-outs through the USB control protocol. The
recorders then leave and record (the simulator writes files named with the identity they hold). Phase 2:
the station agent, with `[equipment] enabled`, docks them: check-in and offload."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from drivers.usb.protocol import RecorderInfo
from drivers.usb.recorder import RecorderDriver, find_recorders
from edge.custody.ledger import station_time_now
from edge.equipment.checkout import CheckoutDesk, CheckoutPolicy
from edge.equipment.importing import import_officers
from edge.equipment.officer_csv import parse_officer_csv
from edge.equipment.usb_recorders import RecorderAccess, UsbRecorderBench
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome
from edge.verify.station import verify_store
from simulators.recorder.backend import get_backend
from simulators.recorder.bus import RecorderBus, RecorderBusServer
from tests.mounting import require_volume_mounts
from tests.station.harness import PASSWORD, simulated_station, spec, station_config

OFFICERS = ("警号,姓名,单位编号,单位名称,卡号\n"
            "110001,张伟,330100000000,杭州市综合行政执法局,01000734E0\n"
            "220001,赵敏,330100000000,杭州市综合行政执法局,04A21B7C\n")


async def check_out_the_shift(root: Path, specs: list[Any]) -> dict[str, str]:
    """Phase 1; returns which recorder is which case: bound, mismatch, none (no check-out)."""
    bus = RecorderBus(root / "sim" / "state", root / "media")
    server = RecorderBusServer(bus, root / "sim" / "bus.sock")
    server.start()
    backend = get_backend(root / "sim" / "bus.sock")
    store = StationStore(root / "store", "TEST-STATION")
    try:
        import_officers(store, parse_officer_csv(OFFICERS.encode()), source="officers.csv", by="admin")
        repository = IngestRepository(store)
        for index, s in enumerate(specs):
            bus.add_recorder(s)
            bus.plug(s.device_serial, f"1-1.{index + 1}")
            # The station's record of each recorder's last docking: offloaded, done.
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
        first = await desk.check_out_by_card("01000734E0")   # 张伟 takes the fullest: any of the three
        second = await desk.check_out_by_card("04A21B7C")   # 赵敏 takes another
        out = {first.device_serial: "110001", second.device_serial: "220001"}
        assert len(out) == 2
    finally:
        store.close()
    # The third recorder leaves with no check-out; 赵敏's recorder has its identity rewritten elsewhere
    # (another PC's WriteZFYInfo) to a colleague's.
    left_without = next(s for s in specs if s.device_serial not in out)
    rewritten = second.device_serial
    [handle] = [h for h in find_recorders(backend) if h.location.port_path == bus.recorder_state(
        rewritten).port_path]
    with RecorderDriver(handle, backend) as driver:
        driver.login(PASSWORD)
        driver.write_info(RecorderInfo(rewritten, "110002", "王芳", "330100000000", "杭州市综合行政执法局"))
    for s in specs:
        bus.unplug(s.device_serial)
        bus.record(s.device_serial, files=2)
    backend.close()
    server.stop()
    bus.close()
    return {"bound": first.device_serial, "mismatch": rewritten, "none": left_without.device_serial}


async def test_a_shift_binds_each_item_to_the_officer_who_checked_its_recorder_out(tmp_path: Path) -> None:
    require_volume_mounts()
    specs = [spec(i, files=0, battery_percent=90 - i) for i in range(3)]
    return_plan = await check_out_the_shift(tmp_path, specs)
    config = station_config(tmp_path, specs, equipment={"enabled": True})
    async with simulated_station(tmp_path, [], agent_config=config) as station:
        for bay, s in enumerate(specs, start=1):
            await station.dock_recorder(s.device_serial, bay)
        await station.wait_results(3, timeout_s=120)
        assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE] * 3
        returned = {e["device_serial"]: e["officer_no"] for e in station.ledger("returned")}
        assert returned == {return_plan["bound"]: "110001", return_plan["mismatch"]: "220001"}
        assert station.agent.store is not None
        rows = station.agent.store.conn.execute("SELECT device_serial, manifest FROM items").fetchall()
        blocks: dict[str, list[dict[str, Any]]] = {}
        for device, manifest in rows:
            blocks.setdefault(device, []).append(json.loads(manifest)["assignment"])
        acquired = {(e["device_serial"], e["assignment_status"]) for e in station.ledger("acquired")}
    assert {len(b) for b in blocks.values()} == {2}
    bound = blocks[return_plan["bound"]]
    assert {(b["status"], b["holder"]["officer_no"]) for b in bound} == {("bound", "110001")}
    mismatch = blocks[return_plan["mismatch"]]
    assert {b["status"] for b in mismatch} == {"mismatch"}
    assert all(b["holder"]["officer_no"] == "220001" and b["device_claim"]["officer_no"] == "110002"
               for b in mismatch)
    assert all(b["status"] == "no_assignment" and b["holder"] is None for b in blocks[return_plan["none"]])
    # Flagged in the ledger too, with the item: each acquired entry carries its status.
    assert acquired == {(return_plan["bound"], "bound"), (return_plan["mismatch"], "mismatch"),
                        (return_plan["none"], "no_assignment")}
    assert verify_store(tmp_path / "store").ok
