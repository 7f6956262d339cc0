"""A volume that appears on its own still shows on its bay: its bay is found from the kernel's
topology (sysfs) or from the per-bay mount directory the udev rule uses, never from the device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drivers.serial.dock import BayLed
from edge.config.station import BayConfig
from edge.sources.usb.bays import bay_of_volume, port_chain_of_mount_dir, usb_port_of_block_device
from edge.sources.usb.offload import OffloadOutcome
from simulators.recorder.bus import bay_directory_name

from .harness import simulated_station, spec

BAYS = [BayConfig(number=i + 1, usb_port=f"1-1.{i + 1}") for i in range(4)]
KERNEL_PATH = (
    "devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1.3/1-1.3:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1"
)


def fake_sysfs(root: Path, device: str, target: str) -> Path:
    """The two things of sysfs that are read: /sys/dev/block/MAJ:MIN, a symlink into /sys/devices."""
    (root / target).mkdir(parents=True)
    (root / "dev" / "block").mkdir(parents=True, exist_ok=True)
    os.symlink(Path("../..") / target, root / "dev" / "block" / device)
    return root


def test_sysfs_gives_the_usb_port_of_a_block_device(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, "8:17", KERNEL_PATH)
    assert usb_port_of_block_device("8:17", sysfs) == "1-1.3"
    assert bay_of_volume("8:17", Path("/media/evidence-edge/anything"), BAYS, sysfs) == (3, "sysfs")
    assert usb_port_of_block_device("8:18", sysfs) is None  # no such block device
    assert usb_port_of_block_device("../../etc", sysfs) is None  # not MAJOR:MINOR


def test_a_block_device_not_on_usb_has_no_port(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, "259:1", "devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/nvme0n1p1")
    assert usb_port_of_block_device("259:1", sysfs) is None


@pytest.mark.parametrize(
    ("name", "chain"),
    [
        (bay_directory_name("1-1.3"), "1.3"),
        ("pci-0000_00_14_0-usb-0_1_3_1_0-scsi-0_0_0_0-part1", "1.3"),
        ("pci-0000_00_14_0-usb-0_2_1_0-scsi-0_0_0_0", "2"),
        ("pci-0000_00_14_0-ata-1-part1", None),
        ("usb-0_1", None),
        ("ZFY_3300001", None),
    ],
)
def test_the_mount_directory_names_the_port_chain(name: str, chain: str | None) -> None:
    assert port_chain_of_mount_dir(name) == chain


def test_the_mount_directory_decides_only_when_one_bay_has_its_chain(tmp_path: Path) -> None:
    anonymous = "0:77"  # a FUSE or bind mount: no block device in sysfs
    name = Path(bay_directory_name("1-1.2"))
    assert bay_of_volume(anonymous, name, BAYS, tmp_path) == (2, "mount directory")
    two_controllers = [*BAYS, BayConfig(number=9, usb_port="2-1.2")]
    bay, why = bay_of_volume(anonymous, name, two_controllers, tmp_path)
    assert bay is None and "several bays" in why
    assert bay_of_volume(anonymous, Path(bay_directory_name("1-1.7")), BAYS, tmp_path)[0] is None


async def test_a_mass_storage_only_recorder_shows_progress_and_done_on_its_bay(tmp_path: Path) -> None:
    recorder = spec(0, files=2, msc_only=True)
    async with simulated_station(tmp_path, [recorder]) as station:
        await station.dock_recorder(recorder.device_serial, 3)
        await station.wait_results(1)
        result = station.agent.results[0]
        assert result.outcome is OffloadOutcome.DONE, result.errors
        assert await station.led_shows(3, BayLed.DONE, timeout_s=10)
        assert BayLed.COPYING in station.dock.led_history(3)
        (session,) = station.ledger("session_started")
        assert session["bay"] == 3
        assert station.agent.views[recorder.device_serial].bay == 3
