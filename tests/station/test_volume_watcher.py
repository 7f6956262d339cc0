"""The mount-table watcher against real mounts: a volume is a mount under the mount root, not a new
directory; a re-mount in the same bay is a new volume; a missed notification is made up by the rescan;
a symlink posing as a volume is refused at once."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from drivers.usb.mountinfo import parse_mountinfo
from edge.sources.usb.volumes import (
    VolumeEvent,
    VolumeEventKind,
    VolumeWatcher,
    display_name,
    volume_mounts,
    wait_until_readable,
)
from simulators.recorder.faultfs import VolumeFaults
from simulators.recorder.volume import MountedVolume, mount_at, mount_volume
from tests.mounting import require_fuse, require_volume_mounts

EVENT_TIMEOUT_S = 10.0
NEVER_S = 3600.0  # a rescan interval no test outlives: only a notification can report in time


@pytest.fixture
def backing(volume_template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "recorder"
    shutil.copytree(volume_template, root)
    return root


@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    return root


@pytest.fixture
def volumes() -> Iterator[list[MountedVolume]]:
    mounted: list[MountedVolume] = []
    yield mounted
    for volume in reversed(mounted):
        volume.unmount()


@pytest.fixture
async def start_watcher() -> AsyncIterator[list[VolumeWatcher]]:
    started: list[VolumeWatcher] = []
    yield started
    for watcher in started:
        watcher.stop()


def watching(started: list[VolumeWatcher], root: Path, **options: object) -> VolumeWatcher:
    watcher = VolumeWatcher(root, **options)  # type: ignore[arg-type]
    watcher.start()
    started.append(watcher)
    return watcher


async def next_event(watcher: VolumeWatcher) -> VolumeEvent:
    return await asyncio.wait_for(watcher.queue.get(), EVENT_TIMEOUT_S)


def mount(volumes: list[MountedVolume], backing: Path, at: Path, **options: object) -> MountedVolume:
    volume = mount_volume(backing, at, **options)  # type: ignore[arg-type]
    volumes.append(volume)
    return volume


async def test_a_mount_over_a_directory_that_was_already_there_is_a_volume_every_time(
    backing: Path, media: Path, volumes: list[MountedVolume], start_watcher: list[VolumeWatcher]
) -> None:
    """The field case: the bay's directory stays from the docking before, so no directory is ever
    created again; each mount over it is a docking, each unmount the recorder leaving."""
    require_volume_mounts()
    bay = media / "platform-dummy_hcd_0-usb-0_1_1_1_0-scsi-0_0_0_0-part1"
    bay.mkdir()
    watcher = watching(start_watcher, media, rescan_interval_s=NEVER_S)
    assert watcher.queue.empty(), "an empty directory is not a volume"
    seen: list[int] = []
    for docking in range(3):
        volume = mount(volumes, backing, bay)
        event = await next_event(watcher)
        assert event.kind is VolumeEventKind.MOUNTED and event.path == bay, docking
        entry = mount_at(bay)
        assert event.mount is not None and entry is not None and event.mount.mount_id == entry.mount_id
        assert event.mount.device == entry.device and event.mount.fs_type == entry.fs_type
        seen.append(event.mount.mount_id)
        volume.unmount()
        gone = await next_event(watcher)
        assert gone.kind is VolumeEventKind.UNMOUNTED and gone.mount == event.mount
        assert bay.is_dir() and watcher.current(bay) is None
    assert len(seen) == 3


async def test_volumes_already_mounted_when_watching_starts_come_first(
    backing: Path, media: Path, volumes: list[MountedVolume], start_watcher: list[VolumeWatcher]
) -> None:
    require_volume_mounts()
    mount(volumes, backing, media / "bay1")
    watcher = watching(start_watcher, media, rescan_interval_s=NEVER_S)
    event = watcher.queue.get_nowait()  # put there by start() itself
    assert (event.kind, event.path) == (VolumeEventKind.MOUNTED, media / "bay1")
    assert watcher.current(media / "bay1") == event.mount


class NoMountNotifications:
    """`select.poll()` without the mount table's notifications (the descriptor registered for
    POLLPRI is left out), whose timeout passes only when the test calls `tick()`."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._tick_r, self._tick_w = os.pipe()
        self._poll.register(self._tick_r, select.POLLIN)
        self.suppressed: list[int] = []
        self.timeouts: list[float | None] = []

    def register(self, fd: int, eventmask: int = select.POLLIN, /) -> None:
        if eventmask & select.POLLPRI:
            self.suppressed.append(fd)
        else:
            self._poll.register(fd, eventmask)

    def poll(self, timeout: float | None = None, /) -> list[tuple[int, int]]:
        self.timeouts.append(timeout)
        ready = self._poll.poll()  # the stop pipe, a change in the mount root, or a tick
        if any(fd == self._tick_r for fd, _ in ready):
            os.read(self._tick_r, 1)
        return [(fd, mask) for fd, mask in ready if fd != self._tick_r]

    def tick(self) -> None:
        os.write(self._tick_w, b"t")

    def close(self) -> None:
        os.close(self._tick_r)
        os.close(self._tick_w)


async def test_the_rescan_finds_a_mount_whose_notification_never_came(
    backing: Path, media: Path, volumes: list[MountedVolume], start_watcher: list[VolumeWatcher]
) -> None:
    require_volume_mounts()
    (media / "bay1").mkdir()
    poller = NoMountNotifications()
    try:
        watcher = watching(start_watcher, media, rescan_interval_s=30, poller_factory=lambda: poller)
        scans = watcher.scans
        mount(volumes, backing, media / "bay1")
        assert len(poller.suppressed) == 1  # the mount table's descriptor: its news never arrives
        # Nothing can have woken the watcher: no notification, no change in the root, no tick.
        assert watcher.queue.empty() and watcher.scans == scans
        poller.tick()  # the rescan interval passes
        event = await next_event(watcher)
        assert (event.kind, event.path) == (VolumeEventKind.MOUNTED, media / "bay1")
        assert poller.timeouts and set(poller.timeouts) == {30_000}
    finally:
        start_watcher.pop().stop()
        poller.close()


async def test_a_symlink_posing_as_a_volume_is_refused_at_once_and_a_real_mount_there_is_not(
    backing: Path, media: Path, volumes: list[MountedVolume], start_watcher: list[VolumeWatcher]
) -> None:
    require_volume_mounts()
    watcher = watching(start_watcher, media, rescan_interval_s=NEVER_S)
    fake = media / "bay1"
    fake.symlink_to(backing, target_is_directory=True)
    refused = await next_event(watcher)
    assert (refused.kind, refused.path, refused.mount) == (VolumeEventKind.REFUSED, fake, None)
    assert "symlink" in refused.reason
    # Other changes in the root rescan it; the same symlink is not refused twice ...
    (media / "bay2").mkdir()
    mount(volumes, backing, media / "bay2")
    assert (await next_event(watcher)).kind is VolumeEventKind.MOUNTED
    # ... a new one is.
    fake.unlink()
    fake.symlink_to(media / "bay2", target_is_directory=True)
    again = await next_event(watcher)
    assert (again.kind, again.path) == (VolumeEventKind.REFUSED, fake)
    # The control: a real mount in the very same place is a volume.
    fake.unlink()
    fake.mkdir()
    other = backing.parent / "recorder2"
    shutil.copytree(backing, other)
    mount(volumes, other, fake)
    accepted = await next_event(watcher)
    assert (accepted.kind, accepted.path) == (VolumeEventKind.MOUNTED, fake)


async def test_only_mounts_directly_under_the_root_are_volumes(
    backing: Path, media: Path, tmp_path: Path, volumes: list[MountedVolume],
    start_watcher: list[VolumeWatcher],
) -> None:
    require_volume_mounts()
    watcher = watching(start_watcher, media, rescan_interval_s=NEVER_S)
    (tmp_path / "elsewhere").mkdir()
    mount(volumes, backing, tmp_path / "elsewhere")  # not under the root
    (media / "bay1").mkdir()
    mount(volumes, backing, media / "bay1")
    first = await next_event(watcher)
    assert (first.kind, first.path) == (VolumeEventKind.MOUNTED, media / "bay1")
    inner = volumes[-1].mount_point / "INNER"
    inner.mkdir()
    other = backing.parent / "recorder2"
    other.mkdir()
    mount(volumes, other, inner)  # inside a volume
    (media / "bay2").mkdir()
    mount(volumes, backing, media / "bay2")
    # Events come in order: had the other two counted, they would have come first.
    second = await next_event(watcher)
    assert (second.kind, second.path) == (VolumeEventKind.MOUNTED, media / "bay2")


async def test_names_the_kernel_escapes_arrive_intact(
    backing: Path, media: Path, volumes: list[MountedVolume], start_watcher: list[VolumeWatcher]
) -> None:
    require_volume_mounts()
    name = os.fsdecode(b"bay 1\t\\040\xff\xe2\x80\xae")  # space, tab, a fake escape, not UTF-8, bidi
    bay = media / name
    bay.mkdir()
    watcher = watching(start_watcher, media, rescan_interval_s=NEVER_S)
    mount(volumes, backing, bay)
    event = await next_event(watcher)
    assert event.path == bay and os.fsencode(event.path) == os.fsencode(bay)
    assert display_name(event.path) == "bay 1\\t\\\\040\\xff\\u202e"
    assert event.mount is not None and "\n" not in str(event.mount.as_record())


async def test_a_mount_root_reached_through_a_symlink(
    backing: Path, media: Path, tmp_path: Path, volumes: list[MountedVolume],
    start_watcher: list[VolumeWatcher],
) -> None:
    """/media may itself be a symlink on some systems; the table spells mount points without it."""
    require_volume_mounts()
    (tmp_path / "link").symlink_to(media, target_is_directory=True)
    watcher = watching(start_watcher, tmp_path / "link", rescan_interval_s=NEVER_S)
    (media / "bay1").mkdir()
    mount(volumes, backing, media / "bay1")
    event = await next_event(watcher)
    assert (event.kind, event.path) == (VolumeEventKind.MOUNTED, media / "bay1")


def test_the_visible_mount_of_each_bay_from_a_table() -> None:
    table = parse_mountinfo(
        b"28 1 254:1 / / rw - ext4 /dev/vda1 rw\n"
        b"40 28 254:1 / /media/ee rw - ext4 /dev/vda1 rw\n"  # the root itself: not a volume
        b"41 28 8:17 / /media/ee/bay1 rw - vfat /dev/sdb1 rw\n"
        b"42 41 8:33 / /media/ee/bay1 rw - vfat /dev/sdc1 rw\n"  # stacked: the one on top counts
        b"43 41 0:60 / /media/ee/bay1/DCIM rw - tmpfs tmpfs rw\n"  # inside a volume
        b"44 28 8:49 / /media/eex/bay2 rw - vfat /dev/sdd1 rw\n"  # a sibling with a common prefix
        b"45 40 0:80 / /media/ee/bay3 rw - autofs systemd-1 rw,fd=50\n"  # an automount point, unused
        b"46 40 0:81 / /media/ee/bay4 rw - autofs systemd-1 rw,fd=51\n"
        b"47 46 8:65 / /media/ee/bay4 rw - vfat /dev/sde1 rw\n"  # ... and one with a disk on it
    )
    found = volume_mounts(table, Path("/media/ee"))
    assert sorted(found) == [Path("/media/ee/bay1"), Path("/media/ee/bay4")]
    assert found[Path("/media/ee/bay4")].fs_type == "vfat"
    assert (found[Path("/media/ee/bay1")].mount_id, found[Path("/media/ee/bay1")].device) == (42, "8:33")


async def test_wait_until_readable_waits_for_a_filesystem_that_answers_late(
    backing: Path, media: Path, volumes: list[MountedVolume]
) -> None:
    require_fuse()
    bay = media / "bay1"
    mount(volumes, backing, bay, faults=VolumeFaults(ready_delay_ms=1500))
    assert mount_at(bay) is not None  # in the table already
    assert await wait_until_readable(bay, 20)
    # Gone before it became readable: not waited for.
    assert not await wait_until_readable(bay, 20, still_mounted=lambda: False)
