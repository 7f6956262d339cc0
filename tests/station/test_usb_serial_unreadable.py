"""A recorder that names a serial string but cannot give it is still a recorder in a bay (review 6).

The commonest cheap-device fault: the device descriptor names a serial string (iSerialNumber != 0) and
the device STALLs the string request (libusb LIBUSB_ERROR_PIPE, pyusb USBError EPIPE), or has no LANGID
table, so pyusb raises ValueError before asking. Such a device used to be skipped by `find_recorders`
("identity unreadable") at every poll: never docked, never refused, nothing on the record, nothing on its
bay. It is kept with no usable serial, like one that names none, and follows that path: refused on the
record before the password unless unknown recorders are allowed, with the bay's serial warning.

The faults are the simulator's own (`RecorderSpec.usb_serial_fault`); the real driver code reads them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.serial.dock import BayLed
from drivers.usb.recorder import RecorderDriver, find_recorders
from edge.sources.usb.offload import OffloadOutcome
from simulators.recorder.device import UsbSerialFault
from tests.station.harness import plugged_pair, simulated_station, spec

# What pyusb/libusb report for each fault, as the problem the handle and the record carry.
FAULTS = [
    (UsbSerialFault.STALL, "unreadable (USB error EPIPE)"),
    (UsbSerialFault.NO_LANGIDS, "unreadable (no LANGID table)"),
]


@pytest.mark.parametrize(("fault", "problem"), FAULTS)
def test_the_driver_keeps_a_device_whose_serial_cannot_be_read(
    tmp_path: Path, fault: UsbSerialFault, problem: str
) -> None:
    with plugged_pair(tmp_path, fault) as pair:
        good, backend = pair.good, pair.backend
        handles = find_recorders(backend)
        found = [(h.location.port_path, h.usb_serial) for h in handles]
        # The control: the good recorder, with its serial; the faulty one at its port, with none.
        assert found == [("1-1.1", good.usb_serial), ("1-1.2", "")], found
        assert handles[0].serial_problem is None
        assert handles[1].serial_problem == problem
        # It can be opened at its port all the same (served there when unknown recorders are allowed).
        with RecorderDriver(handles[1], backend) as driver:
            assert driver.id_code() == "EEZ01"


@pytest.mark.parametrize(("fault", "problem"), FAULTS)
async def test_a_recorder_whose_serial_cannot_be_read_is_refused_on_the_record_before_the_password(
    tmp_path: Path, fault: UsbSerialFault, problem: str
) -> None:
    faulty = spec(0, usb_serial_fault=fault, files=2)
    async with simulated_station(tmp_path, [faulty]) as station:
        await station.dock_recorder(faulty.device_serial, 3)
        (refused,) = await station.wait_ledger("refused")
        assert refused["usb_serial"] == "" and refused["usb_port"] == "1-1.3" and refused["bay"] == 3
        assert refused["reason"].startswith(f"USB serial {problem}: ")
        assert "password was not sent" in refused["reason"]
        assert station.bus.passwords_received(faulty.device_serial) == []
        assert await station.led_shows(3, BayLed.DENIED)
        (connected,) = station.ledger("device_connected")
        assert connected["usb_serial_problem"] == problem
        assert station.agent.status.bay("3")["usb_serial_warning"] == {"problem": "missing"}  # type: ignore[index]


async def test_a_recorder_whose_serial_stalls_offloads_when_unknown_recorders_are_allowed(
    tmp_path: Path,
) -> None:
    """The control of the refusal: served by its port like a recorder that names no serial (its
    allow-list entry pins no USB serial: one pinning the serial it cannot give refuses it after login)."""
    faulty = spec(0, usb_serial="", usb_serial_fault=UsbSerialFault.STALL, files=2)
    loop = asyncio.get_running_loop()
    async with simulated_station(tmp_path, [faulty], recorders={"allow_unknown": True}) as station:
        files = await loop.run_in_executor(None, station.bus.volume_files, faulty.device_serial)
        await station.dock_recorder(faulty.device_serial, 2)
        await station.wait_results(1, timeout_s=60)
        assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE]
        (started,) = station.ledger("session_started")
        assert started["bay"] == 2 and started["identity"]["usb_serial"] == ""
        acquired = {d["sha256"] for d in station.ledger("acquired")}
        assert acquired == {sha for name, sha in files.items() if not name.endswith("PARAM.INI")}
