"""A device's USB serial is read once per enumeration, as the kernel reads it (review 6, noted).

A hostile device answering another serial at every request made the station see a new attachment at every
poll: a removal, a `device_connected` and a refusal per poll, with no back-off. Read once while the
device stays enumerated, its first answer stands for the whole attachment; a re-plug enumerates it anew.
The same bounds what a slow device costs: one transfer timeout per attachment, not one per poll.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.usb.recorder import UsbSerialsRead, find_recorders
from simulators.recorder.device import UsbSerialFault
from tests.station.harness import plugged_pair, simulated_station, spec


def test_the_driver_reads_a_devices_serial_once_per_enumeration(tmp_path: Path) -> None:
    with plugged_pair(tmp_path, UsbSerialFault.CHANGES) as pair:
        bus, backend, good, hostile = pair.bus, pair.backend, pair.good, pair.faulty

        def serials(read: UsbSerialsRead | None) -> list[str]:
            return [h.usb_serial for h in find_recorders(backend, serials=read)]

        # The control: asked at every call, the hostile device answers another serial each time.
        first, second = serials(None), serials(None)
        assert first[0] == second[0] == good.usb_serial and first[1] != second[1]
        read = UsbSerialsRead()
        once = serials(read)
        assert serials(read) == serials(read) == once
        # Plugged again, it is another enumeration: read anew (and kept from then on).
        bus.unplug(hostile.device_serial)
        assert serials(read) == [good.usb_serial]
        bus.plug(hostile.device_serial, "1-1.2")
        again = serials(read)
        assert again[1] != once[1] and serials(read) == again
        assert bus.usb_serial_requests(hostile.device_serial) == 4  # 2 unremembered, once per plug-in


def test_a_device_that_never_answers_its_serial_request_costs_one_timeout_per_enumeration(
    tmp_path: Path,
) -> None:
    """A slow device is kept, its serial unreadable (timed out), and asked once while it stays
    enumerated: the USB poll does not wait out its timeout again at every poll."""
    with plugged_pair(tmp_path, UsbSerialFault.SLOW) as pair:
        bus, backend, good, slow = pair.bus, pair.backend, pair.good, pair.faulty
        read = UsbSerialsRead()
        for _ in range(3):
            handles = find_recorders(backend, serials=read)
            assert [(h.usb_serial, h.serial_problem) for h in handles] == [
                (good.usb_serial, None), ("", "unreadable (USB error ETIMEDOUT)")
            ]
        assert bus.usb_serial_requests(slow.device_serial) == 1


async def test_a_device_answering_a_new_serial_at_every_read_is_one_docking(tmp_path: Path) -> None:
    hostile = spec(0, usb_serial_fault=UsbSerialFault.CHANGES, files=1)
    loop = asyncio.get_running_loop()
    async with simulated_station(tmp_path, [hostile]) as station:
        await station.dock_recorder(hostile.device_serial, 2)
        (refused,) = await station.wait_ledger("refused")
        assert refused["usb_port"] == "1-1.2" and "password was not sent" in refused["reason"]
        # Twenty more polls of the bus: still one docking, never removed, refused once.
        polls = station.bus.enumerations + 20
        assert await loop.run_in_executor(None, station.bus.wait_for_enumerations, polls, 30)
        connected = [d for d in station.ledger("device_connected") if d.get("usb_port") == "1-1.2"]
        assert len(connected) == 1, connected
        assert [d for d in station.ledger("device_removed") if d.get("usb_port") == "1-1.2"] == []
        assert len(station.ledger("refused")) == 1
        assert station.bus.passwords_received(hostile.device_serial) == []
