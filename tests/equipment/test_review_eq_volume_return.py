"""Review of issue 12: a check-in is the station's record, not a device's claim.

Recorder 3300001 is checked out at the desk (control protocol, its USB serial pinned by the allow-list) and
leaves with its officer. While it is out, a USB stick posing as it (a PARAM.INI naming 3300001, no control
protocol) goes into a bay. Docking is the check-in (edge.sources.usb.session `offload` calls
`return_recorder`), and the stick's docking is a VolumeSession whose identity is the text of its PARAM.INI:
the station closes the officer's assignment on the word of a file (a `returned` entry, the overdue alert
closed with it, the fleet showing the recorder back) while the recorder is still in the field. The control:
the genuine recorder docking in control mode closes the same assignment.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge.custody.ledger import station_time_now
from edge.equipment.checkout import CheckoutDesk, CheckoutPolicy
from edge.equipment.importing import import_officers
from edge.equipment.officer_csv import parse_officer_csv
from edge.equipment.usb_recorders import RecorderAccess, UsbRecorderBench
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from simulators.recorder.backend import get_backend
from simulators.recorder.bus import RecorderBus, RecorderBusServer, RecorderSpec
from tests.mounting import require_volume_mounts
from tests.station.harness import PASSWORD, simulated_station, spec, station_config

OFFICERS = ("警号,姓名,单位编号,单位名称,卡号\n"
            "110001,张伟,330100000000,杭州市综合行政执法局,01000734E0\n")


async def check_out(root: Path, genuine: RecorderSpec) -> str:
    """The recorder offloaded here before, checked out by card to 110001, then taken away (another bus:
    the station's bus later never sees it again)."""
    bus = RecorderBus(root / "phase1" / "state", root / "phase1" / "media")
    server = RecorderBusServer(bus, root / "phase1" / "bus.sock")
    server.start()
    backend = get_backend(root / "phase1" / "bus.sock")
    store = StationStore(root / "store", "TEST-STATION")
    try:
        import_officers(store, parse_officer_csv(OFFICERS.encode()), source="officers.csv", by="admin")
        bus.add_recorder(genuine)
        bus.plug(genuine.device_serial, "1-1.1")
        repository = IngestRepository(store)
        session = str(uuid.uuid4())
        repository.start_session(session, device_serial=genuine.device_serial, usb_serial=genuine.usb_serial,
                                 bay=1, started=station_time_now(), facts={}, entry={})
        repository.end_session(session, ended=station_time_now(), outcome="done", entry={})
        access = RecorderAccess(lambda usb_serial: None, lambda usb_serial: PASSWORD, lambda d, u: None,
                                lambda port: int(port.rsplit(".", 1)[1]))

        async def untrusted() -> bool:
            return False

        desk = CheckoutDesk(store, UsbRecorderBench(backend, access), CheckoutPolicy(min_battery_percent=50),
                            clock_trusted=untrusted)
        assignment = await desk.check_out_by_card("01000734E0")
        assert assignment.device_serial == genuine.device_serial
        bus.unplug(genuine.device_serial)
    finally:
        store.close()
        backend.close()
        server.stop()
        bus.close()
    return assignment.officer_no


@pytest.mark.parametrize("who_docks", ["genuine recorder", "stick claiming its serial"])
async def test_a_stick_claiming_a_recorder_that_is_out_does_not_check_it_in(tmp_path: Path,
                                                                            who_docks: str) -> None:
    require_volume_mounts()
    genuine = spec(0, files=0, battery_percent=90)
    await check_out(tmp_path, genuine)
    if who_docks == "genuine recorder":
        docking = spec(0, files=2, battery_percent=90)
    else:
        docking = spec(5, files=2, msc_only=True, seed=77, claims_device_serial=genuine.device_serial)
    # The allow-list names the genuine recorder and pins its USB serial, as an agency configures it.
    config = station_config(tmp_path, [genuine], equipment={"enabled": True})
    async with simulated_station(tmp_path, [docking], agent_config=config) as station:
        await station.dock_recorder(docking.device_serial, 2)
        await station.wait_results(1, timeout_s=120)
        returned = station.ledger("returned")
        claimed = [e for e in station.ledger("refused") if e.get("what") == "check-in"]
        assert station.agent.store is not None
        rows = station.agent.store.conn.execute("SELECT manifest FROM items").fetchall()
        blocks: list[dict[str, Any]] = [json.loads(m)["assignment"] for (m,) in rows]
        still_out = [tuple(row) for row in station.agent.store.conn.execute(
            "SELECT officer_no FROM assignments WHERE device_serial = ? AND returned IS NULL",
            (genuine.device_serial,))]
    if who_docks == "genuine recorder":  # the control: the recorder itself checks in
        checked_in = [(e["device_serial"], e["officer_no"]) for e in returned]
        assert checked_in == [(genuine.device_serial, "110001")]
        assert still_out == [] and claimed == []
        return
    # Failed before the fix: the stick's PARAM.INI closed 110001's assignment (recorder still out).
    assert returned == [], f"a stick's PARAM.INI checked the recorder in: {returned}"
    assert still_out == [("110001",)]
    # Nor are the stick's files bound to the officer "by the station's assignment records".
    assert blocks and all(b["status"] != "bound" for b in blocks), [b["status"] for b in blocks]
    # On the record: a volume claimed the recorder that is out with 110001.
    assert len(claimed) == 1 and "a volume claims recorder 3300001" in claimed[0]["reason"], claimed
    assert "110001" in claimed[0]["reason"]
