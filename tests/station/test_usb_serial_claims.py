"""Docked USB recorders are told apart by their attachment (USB port, i.e. bay), never by the USB serial
they claim: identical factory serials, no serial at all, or a hostile device copying another's serial.

Every recorder is a simulated one on the pyusb backend (`simulators.recorder`), so the real driver code
(`drivers.usb.recorder.find_recorders`, `RecorderDriver`) enumerates and talks to it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from drivers.serial.dock import BayLed
from drivers.usb.recorder import RecorderDriver, find_recorders
from edge.ingest.repository import IngestRepository
from edge.observe.terminal import bay_line
from edge.sources.usb.offload import OffloadOutcome
from edge.verify.station import verify_store
from simulators.recorder.backend import get_backend
from simulators.recorder.bus import RecorderBus, RecorderBusServer
from tests.station.harness import Station, simulated_station, spec

SHARED_USB_SERIAL = "EEZ01SHARED00001"


def acquired_by_session(station: Station) -> dict[str, set[str]]:
    """The SHA-256 of every acquired item, by the docking session that acquired it."""
    found: dict[str, set[str]] = {}
    for data in station.ledger("acquired"):
        found.setdefault(data["session"], set()).add(data["sha256"])
    return found


def evidence_of(files: dict[str, str]) -> set[str]:
    return {sha for name, sha in files.items() if not name.endswith("PARAM.INI")}


async def dock_at_once(station: Station, docked: list[tuple[str, int]]) -> None:
    """Plug every recorder before the station's next USB poll can tell them apart by time: both
    bays insert, then both recorders enumerate together (plugged from one worker thread)."""
    for _, bay in docked:
        station.dock.insert(bay, charge_percent=50)

    def plug_all() -> None:
        for serial, bay in docked:
            station.bus.plug(serial, f"1-1.{bay}")

    await asyncio.get_running_loop().run_in_executor(None, plug_all)


async def test_two_recorders_claiming_one_usb_serial_each_offload_from_their_own_bay(tmp_path: Path) -> None:
    first = spec(0, usb_serial=SHARED_USB_SERIAL, files=2)
    second = spec(1, usb_serial=SHARED_USB_SERIAL, files=3)
    loop = asyncio.get_running_loop()
    async with simulated_station(tmp_path, [first, second]) as station:
        files = {
            s.device_serial: await loop.run_in_executor(None, station.bus.volume_files, s.device_serial)
            for s in (first, second)
        }
        await dock_at_once(station, [(first.device_serial, 1), (second.device_serial, 2)])
        await station.wait_results(2, timeout_s=60)
        assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE] * 2, [
            r.errors for r in station.agent.results
        ]

        # Each docking is its own recorder at its own port: bay, port and device serial agree.
        sessions = {d["session"]: d for d in station.ledger("session_started")}
        assert len(sessions) == 2
        by_device = {d["identity"]["device_serial"]: d for d in sessions.values()}
        assert by_device[first.device_serial]["bay"] == 1
        assert by_device[first.device_serial]["identity"]["usb_port"] == "1-1.1"
        assert by_device[second.device_serial]["bay"] == 2
        assert by_device[second.device_serial]["identity"]["usb_port"] == "1-1.2"
        acquired = acquired_by_session(station)
        for recorder in (first, second):
            session = by_device[recorder.device_serial]["session"]
            assert acquired[session] == evidence_of(files[recorder.device_serial])
        # Each item's manifest names its own bay and port.
        assert station.agent.store is not None
        repository = IngestRepository(station.agent.store)
        repository_items = [repository.item(item) for r in station.agent.results for item in r.items]
        for record in repository_items:
            assert record is not None and record.manifest is not None
            source = record.manifest["source"]
            expected_bay = 1 if source["device_serial"] == first.device_serial else 2
            assert (source["bay"], source["usb_port"], source["usb_serial"]) == (
                expected_bay, f"1-1.{expected_bay}", SHARED_USB_SERIAL
            )
        # Both recorders erased (after-verify): neither docking cancelled or merged into the other.
        for recorder in (first, second):
            left = await loop.run_in_executor(None, station.bus.volume_files, recorder.device_serial)
            assert evidence_of(left) == set(), recorder.device_serial

        # The shared claim is on the record once, naming both ports and bays.
        (shared,) = [e for e in station.ledger("error") if e.get("stage") == "usb-identity"]
        assert shared["usb_serial"] == SHARED_USB_SERIAL
        assert shared["usb_ports"] == ["1-1.1", "1-1.2"] and shared["bays"] == [1, 2]
        assert "claimed by 2 devices" in shared["reason"]
        # And on both bays' tiles, each naming the other bay.
        bay1, bay2 = station.agent.status.bay("1"), station.agent.status.bay("2")
        assert bay1 is not None and bay2 is not None
        assert bay1["usb_serial_warning"] == {"problem": "shared", "bays": [2]}
        assert bay2["usb_serial_warning"] == {"problem": "shared", "bays": [1]}
        # And in words for the administrator (`edge status`).
        assert "USB serial also claimed in bay 2" in bay_line(bay1)

        # One leaves: the warning goes from both tiles, and the removal names its port and bay.
        await station.undock(second.device_serial, 2)
        (removed,) = station.usb_removals(SHARED_USB_SERIAL)
        assert (removed["usb_port"], removed["bay"]) == ("1-1.2", 2)
        assert station.agent.status.bay("1")["usb_serial_warning"] is None  # type: ignore[index]
    assert verify_store(tmp_path / "store").ok


async def test_a_device_copying_a_recorders_usb_serial_is_refused_and_the_recorder_still_offloads(
    tmp_path: Path,
) -> None:
    genuine = spec(0, usb_serial=SHARED_USB_SERIAL, files=2)
    # The copy answers with the genuine recorder's USB serial but is a recorder the allow-list does not
    # name (its product serial, read after login, is its own).
    copy = spec(1, usb_serial=SHARED_USB_SERIAL, files=2, seed=7)
    allow = {"allow": [{"device_serial": genuine.device_serial, "usb_serial": SHARED_USB_SERIAL}]}
    loop = asyncio.get_running_loop()
    async with simulated_station(tmp_path, [genuine, copy], recorders=allow) as station:
        copy_files = await loop.run_in_executor(None, station.bus.volume_files, copy.device_serial)
        # The copy sorts first (port 1-1.1): it must not keep the genuine one from its docking.
        await dock_at_once(station, [(copy.device_serial, 1), (genuine.device_serial, 2)])
        await station.wait_results(1, timeout_s=60)
        (result,) = station.agent.results
        assert result.outcome is OffloadOutcome.DONE, result.errors
        (refused,) = await station.wait_ledger("refused")
        assert refused["device_serial"] == copy.device_serial and refused["usb_port"] == "1-1.1"
        assert "allow-list" in refused["reason"]
        assert await station.led_shows(1, BayLed.DENIED, timeout_s=3), station.dock.led_history(1)
        assert await station.led_shows(2, BayLed.DONE)
        (session,) = station.ledger("session_started")
        assert session["identity"]["device_serial"] == genuine.device_serial and session["bay"] == 2
        # Nothing of the copy was read as evidence, nor erased from it.
        assert not {e["sha256"] for e in station.ledger("acquired")} & evidence_of(copy_files)
        assert await loop.run_in_executor(None, station.bus.volume_files, copy.device_serial) == copy_files


# A recorder's USB serial as the device presents it (None: no serial string at all) and how the station
# words the problem. The hostile one would put an escape sequence and a path into the ledger.
NO_USABLE_SERIAL = [
    (None, "missing (no serial string descriptor)"),
    ("", "empty"),
    ("\x1b[2J../../etc", "not an identifier ('\\x1b[2J../../etc')"),
]


@pytest.mark.parametrize(("presented", "problem"), NO_USABLE_SERIAL)
async def test_a_recorder_without_a_usable_usb_serial_is_refused_on_the_record_before_the_password(
    tmp_path: Path, presented: str | None, problem: str
) -> None:
    nameless = spec(0, usb_serial="", usb_serial_string=presented, files=2)
    async with simulated_station(tmp_path, [nameless]) as station:
        await station.dock_recorder(nameless.device_serial, 3)
        (refused,) = await station.wait_ledger("refused")
        assert refused["usb_serial"] == "" and refused["usb_port"] == "1-1.3" and refused["bay"] == 3
        assert refused["reason"].startswith(f"USB serial {problem}: ")
        assert "password was not sent" in refused["reason"]
        assert station.bus.passwords_received(nameless.device_serial) == []
        assert await station.led_shows(3, BayLed.DENIED)
        (connected,) = station.ledger("device_connected")
        assert connected["usb_serial_problem"] == problem
        # Nothing the device sent is in the record raw (an escape sequence would reach a terminal).
        entries = station.ledger("device_connected") + station.ledger("refused")
        recorded = [value for entry in entries for value in entry.values()]
        assert not [v for v in recorded if isinstance(v, str) and "\x1b" in v], recorded
        assert station.agent.status.bay("3")["usb_serial_warning"] == {"problem": "missing"}  # type: ignore[index]


async def test_two_recorders_without_a_usb_serial_offload_when_unknown_recorders_are_allowed(
    tmp_path: Path,
) -> None:
    """The control of the refusal above: with unknown recorders allowed, a recorder without a serial is
    served like any other, and two of them in two bays are two dockings."""
    first, second = spec(0, usb_serial="", files=2), spec(1, usb_serial="", files=2)
    recorders: dict[str, Any] = {"allow_unknown": True}
    loop = asyncio.get_running_loop()
    async with simulated_station(tmp_path, [first, second], recorders=recorders) as station:
        files = {
            s.device_serial: await loop.run_in_executor(None, station.bus.volume_files, s.device_serial)
            for s in (first, second)
        }
        await dock_at_once(station, [(first.device_serial, 4), (second.device_serial, 5)])
        await station.wait_results(2, timeout_s=60)
        assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE] * 2
        sessions = {d["identity"]["device_serial"]: d for d in station.ledger("session_started")}
        assert (sessions[first.device_serial]["bay"], sessions[second.device_serial]["bay"]) == (4, 5)
        acquired = acquired_by_session(station)
        for recorder in (first, second):
            assert acquired[sessions[recorder.device_serial]["session"]] == evidence_of(
                files[recorder.device_serial]
            )
        # No serial is no shared serial: nothing claims one.
        assert not [e for e in station.ledger("error") if e.get("stage") == "usb-identity"]


def test_the_driver_keeps_devices_without_a_usb_serial_and_tells_same_serial_devices_apart(
    tmp_path: Path,
) -> None:
    """The driver on its own: every device is found at its port, whatever serial it claims."""
    bus = RecorderBus(tmp_path / "state", tmp_path / "media")
    twins = [spec(0, usb_serial=SHARED_USB_SERIAL, files=0), spec(1, usb_serial=SHARED_USB_SERIAL, files=0)]
    nameless = [spec(2 + i, usb_serial="", usb_serial_string=presented, files=0)
                for i, (presented, _) in enumerate(NO_USABLE_SERIAL)]
    for s in [*twins, *nameless]:
        bus.add_recorder(s)
    server = RecorderBusServer(bus, tmp_path / "bus.sock")
    server.start()
    backend = get_backend(tmp_path / "bus.sock")
    try:
        for i, s in enumerate([*twins, *nameless]):
            bus.plug(s.device_serial, f"1-1.{i + 1}")
        handles = find_recorders(backend)
        assert [(h.location.port_path, h.usb_serial) for h in handles] == [
            ("1-1.1", SHARED_USB_SERIAL), ("1-1.2", SHARED_USB_SERIAL),
            ("1-1.3", ""), ("1-1.4", ""), ("1-1.5", ""),
        ]
        assert [h.serial_problem for h in handles] == [None, None, *(p for _, p in NO_USABLE_SERIAL)]
        # Each is opened at its own port, whatever it claims (the twins' serials tell them apart not).
        for handle in handles:
            with RecorderDriver(handle, backend) as driver:
                assert driver.id_code() == "EEZ01"
    finally:
        backend.close()
        server.stop()
        bus.close()
