"""A control session's volume is bound to the USB port the recorder docked on, not to the serial its
PARAM.INI claims: a stick in another bay that claims the docked recorder's serial is refused and on the
record with its bay, and nothing on it is read as evidence; the genuine volume in the right bay is taken."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from drivers.usb.protocol import RecorderMode
from edge.sources.usb.bays import volume_on_port
from edge.sources.usb.offload import OffloadOutcome
from edge.verify.station import verify_store
from simulators.recorder.bus import bay_directory_name

from .harness import eventually, simulated_station, spec
from .test_volume_bays import KERNEL_PATH, fake_sysfs


def test_sysfs_decides_the_port_of_a_block_device_whatever_its_mount_directory(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, "8:17", KERNEL_PATH)  # the disk hangs off port 1-1.3
    on_bay_1_dir = Path(bay_directory_name("1-1.1"))
    assert volume_on_port("8:17", on_bay_1_dir, "1-1.3", sysfs) == (True, "USB port 1-1.3 (sysfs)")
    # A mount directory naming the expected port does not help a disk sysfs places elsewhere.
    assert volume_on_port("8:17", on_bay_1_dir, "1-1.1", sysfs)[0] is False
    # No block device in sysfs (FUSE, bind): the udev-tag mount directory decides.
    assert volume_on_port("0:77", on_bay_1_dir, "1-1.1", sysfs)[0] is True
    assert volume_on_port("0:77", Path(bay_directory_name("1-1.2")), "1-1.1", sysfs)[0] is False
    # Placed in neither way: bound to no docking.
    assert volume_on_port("0:77", Path("ZFY_3300001"), "1-1.1", sysfs) == (
        False, "no USB port (neither sysfs nor the mount directory name one)"
    )


async def test_a_spoofed_stick_in_another_bay_cannot_take_a_control_sessions_volume(tmp_path: Path) -> None:
    genuine = spec(0, files=2)
    # The attacker's stick: mass-storage only, its PARAM.INI and file names claim the genuine
    # recorder's serial; its own files are different recordings.
    stick = spec(1, files=2, msc_only=True, seed=99, claims_device_serial=genuine.device_serial)
    loop = asyncio.get_running_loop()
    async with simulated_station(tmp_path, [genuine, stick]) as station:
        genuine_files = await loop.run_in_executor(None, station.bus.volume_files, genuine.device_serial)
        stick_files = await loop.run_in_executor(None, station.bus.volume_files, stick.device_serial)
        assert "PARAM.INI" in stick_files and set(genuine_files.values()) != set(stick_files.values())
        # The recorder acknowledges the switch to mass-storage mode but its volume comes later (as
        # real hardware does): the control session waits for it, and the stick goes in meanwhile.
        station.bus.hold_volume_mount(genuine.device_serial)
        await station.dock_recorder(genuine.device_serial, 1)
        await eventually(
            lambda: station.bus.recorder_state(genuine.device_serial).mode is RecorderMode.MASS_STORAGE
            and station.agent.claims.busy(genuine.device_serial)
        )
        await loop.run_in_executor(None, station.bus.plug, stick.device_serial, "1-1.2")

        (refused,) = await station.wait_ledger(
            "refused", where=lambda d: d.get("device_serial") == genuine.device_serial
        )
        assert refused["bay"] == 2 and refused["expected_bay"] == 1
        assert refused["volume"] == bay_directory_name("1-1.2")
        assert "bay 2" in refused["reason"] and "USB port 1-1.1" in refused["reason"]
        assert station.agent.results == []  # the control session still waits for its own volume

        # The control: the genuine volume, on the port the recorder docked on, is taken.
        await loop.run_in_executor(None, station.bus.release_volume_mount, genuine.device_serial)
        await station.wait_results(1, timeout_s=30)
        result = station.agent.results[0]
        assert result.outcome is OffloadOutcome.DONE, result.errors
        acquired = {e["sha256"] for e in station.ledger("acquired")}
        evidence = {h for name, h in genuine_files.items() if not name.endswith("PARAM.INI")}
        assert acquired == evidence
        assert not acquired & set(stick_files.values()), "nothing on the stick was read as evidence"
        (session,) = station.ledger("session_started")
        assert session["bay"] == 1
        # The stick was left alone: every file still on it.
        assert await loop.run_in_executor(None, station.bus.volume_files, stick.device_serial) == stick_files
    assert verify_store(tmp_path / "store").ok
    assert os.path.isdir(tmp_path / "media" / bay_directory_name("1-1.2"))
