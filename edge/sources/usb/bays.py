"""Which bay a recorder volume is in, from what the kernel and the udev rule say, never the device.

A control-mode recorder is found on the USB bus, so its bay comes with its USB port path. A volume that
appears on its own (a mass-storage-only recorder, or one found already in mass-storage mode after a
restart) has only its mount. Two ways lead from the mount to the port, tried in this order:

1. sysfs: the mounted filesystem's device (`MAJOR:MINOR` in the mount table) is a block device whose
   sysfs path runs through the USB device it hangs off: `/sys/dev/block/8:17` →
   `/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1.3/1-1.3:1.0/host6/.../block/sdb/sdb1`, and the
   deepest `BUS-PORT[.PORT...]` component (`1-1.3`) is the port, spelled as `[[bays]] usb_port` is.
2. The mount directory: the udev rule (systemd/99-evidence-edge.rules) mounts each volume at
   `<mount_root>/<ID_PATH_TAG>[-partN]`, and udev's path_id spells the USB part of that tag
   `usb-0_<port chain>_<configuration>_<interface>` (`usb-0_1_3_1_0` for port chain 1.3). The tag
   names the host controller, not the bus number, so this gives the chain only: it decides when one
   configured bay has that chain, and says nothing when several do (bays on two controllers with the
   same chain need sysfs).

Neither is chosen by the recorder: the port is the kernel's topology. A volume found in neither way
has no bay (its LED cannot show), which is on the record with the docking.

The same two ways bind a control session's volume to its place (`volume_on_port`): a recorder switched
to mass-storage mode re-enumerates on the very port its control session found it on, so the volume it
expects must hang off that port. The serial in a volume's PARAM.INI is only a claim that any stick can
make; the port is not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from edge.config.station import BayConfig

SYSFS = Path("/sys")
_USB_DEVICE = re.compile(r"[0-9]{1,3}-[0-9]{1,3}(\.[0-9]{1,3}){0,6}")
_PATH_TAG_USB = re.compile(r"(?:^|-)usb-0_([0-9]{1,3}(?:_[0-9]{1,3}){2,8})(?:-|$)")
_DEVICE = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")


def usb_port_of_block_device(device: str, sysfs: Path = SYSFS) -> str | None:
    """The USB port path (`1-1.3`) of the USB device the block device `MAJOR:MINOR` hangs off, or None
    (not a block device in sysfs, as for FUSE or tmpfs; or not on USB)."""
    if not _DEVICE.fullmatch(device):
        return None
    try:
        real = os.path.realpath(sysfs / "dev" / "block" / device, strict=True)
    except OSError:
        return None
    for part in reversed(Path(real).parts):
        if _USB_DEVICE.fullmatch(part):
            return part
    return None


def port_chain_of_mount_dir(name: str) -> str | None:
    """The USB port chain (`1.3`) in a mount directory named after udev's ID_PATH_TAG, or None."""
    found = _PATH_TAG_USB.search(name)
    if found is None:
        return None
    numbers = found.group(1).split("_")
    return ".".join(numbers[:-2])  # the last two are the configuration and the interface


def bay_of_volume(
    device: str, mount_dir: Path, bays: Sequence[BayConfig], sysfs: Path = SYSFS
) -> tuple[int | None, str]:
    """The bay a volume is in, and how that was found (`sysfs`, `mount directory`, or why not)."""
    port = usb_port_of_block_device(device, sysfs)
    if port is not None:
        by_port = [b.number for b in bays if b.usb_port == port]
        if by_port:
            return by_port[0], "sysfs"
        return None, f"on USB port {port}, which no [[bays]] entry names"
    chain = port_chain_of_mount_dir(mount_dir.name)
    if chain is None:
        return None, "neither sysfs nor the mount directory name a USB port"
    by_chain = [b.number for b in bays if b.usb_port.split("-", 1)[1] == chain]
    if len(by_chain) == 1:
        return by_chain[0], "mount directory"
    if not by_chain:
        return None, f"mount directory names USB port chain {chain}, which no [[bays]] entry has"
    return None, f"mount directory names USB port chain {chain}, which several bays have (see sysfs)"


def volume_on_port(
    device: str, mount_dir: Path, usb_port: str, sysfs: Path = SYSFS
) -> tuple[bool, str]:
    """Whether the volume (`MAJOR:MINOR` mounted at `mount_dir`) is on USB port `usb_port` (`1-1.3`),
    and where it was found. sysfs decides when the volume is a block device on USB (always so for a
    real recorder); otherwise the mount directory's port chain must be the port's chain (the directory
    does not name the bus: bays on two controllers with one chain are told apart by sysfs only). A
    volume placed in neither way is on no port: it cannot be bound to a docking."""
    port = usb_port_of_block_device(device, sysfs)
    if port is not None:
        return port == usb_port, f"USB port {port} (sysfs)"
    chain = port_chain_of_mount_dir(mount_dir.name)
    if chain is None:
        return False, "no USB port (neither sysfs nor the mount directory name one)"
    expected_chain = usb_port.split("-", 1)[1] if "-" in usb_port else usb_port
    return chain == expected_chain, f"USB port chain {chain} (mount directory)"
