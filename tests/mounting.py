"""What tests of real mounts need from the machine (through tests/prerequisites.py: skipped on a
developer's machine that lacks it, a failure under CI).

Volumes are real mounts: bind mounts as root, FUSE otherwise (see simulators/recorder/volume.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simulators.recorder.volume import VolumeMountError, check_fuse_available
from tests.prerequisites import require


def fuse_problem() -> str | None:
    try:
        check_fuse_available()
    except VolumeMountError as exc:
        return str(exc)
    return None


def require_fuse() -> None:
    problem = fuse_problem()
    require(problem is None, problem or "")


def require_bind_mounts() -> None:
    require(os.geteuid() == 0, "bind mounts need root")


def require_volume_mounts() -> None:
    """What the recorder simulator mounts with by default: a bind mount as root, else FUSE."""
    if os.geteuid() != 0:
        require_fuse()


@contextmanager
def ext4_on_loop(image: Path, mount_point: Path, size_mib: int) -> Iterator[Path]:
    """A fresh ext4 file system (no journal) in the file ``image`` of ``size_mib`` MiB, mounted at
    ``mount_point`` (made if missing) through a loop device; unmounted when the block ends. A real file
    system keeps a file's pages in the page cache and lets a test change the bytes on the 'disk' (the
    image) behind it. Needs root and mkfs.ext4, mount, umount, losetup."""
    for tool in ("mkfs.ext4", "mount", "umount", "losetup"):
        require(shutil.which(tool) is not None and os.geteuid() == 0, f"needs root and {tool}")
    with image.open("wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image)], check=True)
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
