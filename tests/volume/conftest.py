"""Fixtures for recorder-volume tests: a private media cache, FUSE mounts torn down, mount events."""

from __future__ import annotations

import os
import select
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulators.recorder.faultfs import VolumeFaults
from simulators.recorder.volume import MountedVolume, is_mounted, mount_volume
from tests.prerequisites import requires


@pytest.fixture(scope="session", autouse=True)
def private_media_cache(media_cache: Path) -> Path:
    """Every test here uses the session's private media cache (tests/conftest.py)."""
    return media_cache


def fuse_usable() -> bool:
    return os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3") is not None


needs_fuse = requires(fuse_usable(), "needs /dev/fuse and fusermount3")


def wait_for_mounts(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Wait until `predicate()` holds, woken by mount-table changes (mountinfo signals POLLPRI)."""
    deadline = time.monotonic() + timeout_s
    with open("/proc/self/mountinfo", "rb") as fh:
        poller = select.poll()
        poller.register(fh.fileno(), select.POLLPRI | select.POLLERR)
        while not predicate():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return predicate()
            # A bounded wait also covers predicates that are not about the mount table.
            poller.poll(min(remaining_ms, 200))
            fh.seek(0)
            fh.read()
    return True


MountFactory = Callable[..., MountedVolume]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[MountFactory]:
    """mount(backing, **kwargs) -> MountedVolume at a fresh mount point; all unmounted at teardown."""
    volumes: list[MountedVolume] = []

    def _mount(backing: Path, *, faults: VolumeFaults | None = None,
               rate_limit_bytes_per_s: int | None = None, unplug_marker: Path | None = None,
               name: str = "ZFY_1234567") -> MountedVolume:
        mount_root = tmp_path / "media"
        mount_root.mkdir(exist_ok=True)
        volume = mount_volume(backing, mount_root / name, faults=faults,
                              rate_limit_bytes_per_s=rate_limit_bytes_per_s, unplug_marker=unplug_marker)
        volumes.append(volume)
        return volume

    yield _mount
    for volume in reversed(volumes):
        volume.unmount()
        assert not is_mounted(volume.mount_point)
