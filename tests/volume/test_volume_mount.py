"""mount_volume: bind mounts, and FUSE mounts with injected faults, through the real kernel, over
bay directories that exist before the docking and stay after it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from simulators.recorder import volume as volume_mod
from simulators.recorder.faultfs import GROW_BYTES, VolumeFaults
from simulators.recorder.volume import (
    MountKind,
    VolumeError,
    VolumeMountError,
    is_mounted,
    mount_at,
    mount_volume,
)
from tests.mounting import require_bind_mounts, require_volume_mounts
from tests.volume.conftest import MountFactory, needs_fuse, wait_for_mounts

MIB = 1024 * 1024
BIG = "DCIM/100MEDIA/123456_1234567_20240603080000_0001.MP4"
SMALL = "DCIM/100MEDIA/123456_1234567_20240603081000_0002_IMP.MP4"
PHOTO = "PHOTO/123456_1234567_20240603082000_0003.JPG"


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    """A volume with seeded pseudo-random content (media bytes are not needed to test the mount)."""
    root = tmp_path / "backing" / "ZFY_1234567"
    rng = random.Random(5)
    for rel, size in ((BIG, 3 * MIB), (SMALL, 200_000), (PHOTO, 50_000)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rng.randbytes(size))
    (root / "PARAM.INI").write_bytes(b"[ZFY]\r\nDevNo=1234567\r\nPolNo=123456\r\n")
    os.utime(root / BIG, (1717372800, 1717372800))
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_until_error(path: Path, chunk: int = 65536) -> tuple[bytes, OSError | None]:
    got = bytearray()
    try:
        with open(path, "rb", buffering=0) as fh:
            while data := fh.read(chunk):
                got += data
    except OSError as exc:
        return bytes(got), exc
    return bytes(got), None


# -- bind mounts -------------------------------------------------------------------------------------------


@pytest.fixture
def bay(tmp_path: Path) -> Path:
    """A bay's mount directory as a station that has docked before has it: there, empty, unmounted."""
    directory = tmp_path / "media" / "platform-dummy_hcd_0-usb-0_1_1_1_0-scsi-0_0_0_0-part1"
    directory.mkdir(parents=True)
    return directory


def test_bind_mount_over_an_existing_directory_that_stays(backing: Path, bay: Path) -> None:
    require_bind_mounts()
    before = snapshot(backing)
    vol = mount_volume(backing, bay)
    assert vol.kind is MountKind.BIND and not vol.uses_fuse and vol.alive
    entry = mount_at(bay)
    assert entry is not None and entry.identity == vol.identity
    # The options the udev rule gives recorder volumes.
    assert {"nosuid", "nodev", "noexec"} <= set(entry.mount_options.split(","))
    assert snapshot(bay) == before
    (bay / PHOTO).unlink()  # the station erases after verifying
    vol.unmount()
    vol.unmount()  # idempotent
    assert not vol.alive and not is_mounted(bay)
    assert bay.is_dir() and list(bay.iterdir()) == []  # the directory stays, empty
    del before[PHOTO]
    assert snapshot(backing) == before  # erasures reached the device


def test_the_same_directory_is_mounted_again_at_the_next_docking(backing: Path, bay: Path) -> None:
    require_bind_mounts()
    mount_volume(backing, bay).unmount()
    again = mount_volume(backing, bay)
    try:
        assert again.alive and (bay / "PARAM.INI").is_file()
    finally:
        again.unmount()
    assert bay.is_dir() and not is_mounted(bay)


def test_a_bind_unmount_while_a_file_is_open_is_lazy(backing: Path, bay: Path) -> None:
    require_bind_mounts()
    vol = mount_volume(backing, bay)
    with open(bay / BIG, "rb") as held:
        vol.unmount()  # busy: detached at once, as the kernel does for a disk that went away
        assert not is_mounted(bay) and list(bay.iterdir()) == []
        # A kernel mount serves descriptors already open until they close (a FUSE volume does not:
        # its process is gone, see test_unmount_while_station_holds_a_file_open).
        assert held.read(10) == (backing / BIG).read_bytes()[:10]


def test_faults_need_fuse_not_a_bind_mount(backing: Path, bay: Path) -> None:
    with pytest.raises(VolumeError, match="need a FUSE mount"):
        mount_volume(backing, bay, kind=MountKind.BIND, faults=VolumeFaults(grow="*"))
    assert not is_mounted(bay)


def test_a_killed_simulator_leaves_no_bind_mount_behind(backing: Path, bay: Path) -> None:
    """A bind mount belongs to the kernel and would outlive its maker; the reaper takes it down."""
    require_bind_mounts()
    mount_call = f"mount_volume(pathlib.Path({str(backing)!r}), pathlib.Path({str(bay)!r}))"
    kill_the_mounting_process(bay, mount_call, cleanup=["umount", "-l", str(bay)])
    assert bay.is_dir() and (backing / BIG).is_file()


def test_mount_onto_empty_dir_but_not_full_one(backing: Path, tmp_path: Path) -> None:
    require_volume_mounts()
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").touch()
    with pytest.raises(VolumeError, match="absent or an empty directory"):
        mount_volume(backing, full)
    (tmp_path / "file").touch()
    with pytest.raises(VolumeError, match="absent or an empty directory"):
        mount_volume(backing, tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path / "empty", target_is_directory=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="absent or an empty directory"):
        mount_volume(backing, tmp_path / "link")
    assert not any(is_mounted(p) for p in (full, tmp_path / "file", tmp_path / "empty"))


def test_backing_must_be_a_real_directory(backing: Path, tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="existing directory"):
        mount_volume(tmp_path / "missing", tmp_path / "m")
    (tmp_path / "link").symlink_to(backing)
    with pytest.raises(VolumeError, match="existing directory"):
        mount_volume(tmp_path / "link", tmp_path / "m")


# -- FUSE mounts -----------------------------------------------------------------------------------------


@needs_fuse
def test_fuse_passthrough(backing: Path, mount: MountFactory) -> None:
    before = snapshot(backing)
    vol = mount(backing, rate_limit_bytes_per_s=10**10)  # a rate limit alone selects FUSE
    assert vol.uses_fuse and vol.alive and is_mounted(vol.mount_point)
    mp = vol.mount_point
    assert snapshot(mp) == before
    assert sorted(os.listdir(mp)) == ["DCIM", "PARAM.INI", "PHOTO"]
    st = os.stat(mp / BIG)
    assert st.st_size == 3 * MIB and st.st_mtime == 1717372800
    assert os.statvfs(mp).f_bsize > 0
    assert backing.is_dir()  # FUSE mounts leave the backing folder in place


@needs_fuse
def test_fuse_refuses_changes_but_allows_unlink(backing: Path, mount: MountFactory) -> None:
    mp = mount(backing, rate_limit_bytes_per_s=10**10).mount_point
    def open_for(path: Path, flags: int) -> None:
        os.close(os.open(path, flags, 0o644))

    attempts: list[Callable[[], object]] = [
        lambda: open_for(mp / PHOTO, os.O_RDWR),
        lambda: open_for(mp / "NEW.TXT", os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(mp / "NEWDIR"),
        lambda: os.rename(mp / PHOTO, mp / "moved.jpg"),
        lambda: os.truncate(mp / PHOTO, 0),
        lambda: os.chmod(mp / PHOTO, 0o777),
        lambda: os.symlink("/etc/passwd", mp / "link"),
        lambda: os.rmdir(mp / "PHOTO"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS
    os.unlink(mp / PHOTO)
    assert not (backing / PHOTO).exists()
    assert not (mp / PHOTO).exists()
    assert (backing / SMALL).exists()


@needs_fuse
def test_fuse_read_error_at_offset(backing: Path, mount: MountFactory) -> None:
    mp = mount(backing, faults=VolumeFaults(read_error=("*_0001.MP4", MIB))).mount_point
    got, error = read_until_error(mp / BIG)
    assert error is not None and error.errno == errno.EIO
    # Readahead may fail a whole request, but the kernel retries page by page: every byte before the
    # bad one (page-aligned here) still arrives, and nothing at or after it.
    assert got == (backing / BIG).read_bytes()[:MIB]
    assert (mp / SMALL).read_bytes() == (backing / SMALL).read_bytes()  # other files are fine


@needs_fuse
def test_fuse_bit_flip_is_transient(backing: Path, mount: MountFactory) -> None:
    offset = 1_500_001
    mp = mount(backing, faults=VolumeFaults(bit_flip=("*_0001.MP4", offset))).mount_point
    truth = (backing / BIG).read_bytes()
    first = (mp / BIG).read_bytes()
    diff = [i for i in range(len(truth)) if first[i] != truth[i]]
    assert diff == [offset]
    assert (mp / BIG).read_bytes() == truth  # a new open drops the page cache: the re-read is right


@needs_fuse
def test_fuse_unplug_after_bytes(backing: Path, mount: MountFactory, tmp_path: Path) -> None:
    marker = tmp_path / "state" / "UNPLUGGED"
    vol = mount(backing, faults=VolumeFaults(unplug_after_bytes=MIB), unplug_marker=marker)
    got, error = read_until_error(vol.mount_point / BIG)
    assert error is not None and error.errno in (errno.EIO, errno.ENODEV)
    assert len(got) <= MIB and got == (backing / BIG).read_bytes()[:len(got)]
    assert json.loads(marker.read_text())["reason"] == "unplug_after_bytes"
    assert wait_for_mounts(lambda: not is_mounted(vol.mount_point))
    assert not vol.alive
    with pytest.raises(OSError):
        (vol.mount_point / SMALL).read_bytes()
    vol.unmount()
    assert vol.mount_point.is_dir() and not is_mounted(vol.mount_point)  # the bay directory stays
    assert (backing / BIG).exists()  # a pulled cable loses nothing on the device


@needs_fuse
def test_fuse_grow(backing: Path, mount: MountFactory) -> None:
    mp = mount(backing, faults=VolumeFaults(grow="*_IMP.MP4")).mount_point
    size_before = os.stat(mp / SMALL).st_size
    with open(mp / SMALL, "rb") as fh:
        fh.read(4096)
        assert os.fstat(fh.fileno()).st_size == size_before + GROW_BYTES
        fh.seek(0)
        assert len(fh.read()) == size_before + GROW_BYTES
    assert (backing / SMALL).stat().st_size == size_before + GROW_BYTES


@needs_fuse
def test_fuse_vanish(backing: Path, mount: MountFactory) -> None:
    mp = mount(backing, faults=VolumeFaults(vanish="*.JPG")).mount_point
    with open(mp / PHOTO, "rb", buffering=0) as fh:
        assert len(fh.read(1000)) == 1000
        assert not (mp / PHOTO).exists()
        assert os.listdir(mp / "PHOTO") == []
        fh.seek(40_000)
        with pytest.raises(OSError):
            fh.read(1000)


@needs_fuse
def test_fuse_rate_limited_volume_delivers_every_byte(backing: Path, mount: MountFactory) -> None:
    # The pacing itself is checked on a clock the test owns (test_volume_faultfs: the filesystem's reads
    # and the limit reaching the FUSE process); through the kernel, paced reads from several threads
    # (readahead) still deliver the file exactly.
    mp = mount(backing, rate_limit_bytes_per_s=16 * MIB).mount_point
    assert (mp / BIG).read_bytes() == (backing / BIG).read_bytes()


@needs_fuse
def test_unmount_after_fuse_process_killed(backing: Path, tmp_path: Path) -> None:
    vol = mount_volume(backing, tmp_path / "m", faults=VolumeFaults(grow="nothing"))
    process = vol._process
    assert process is not None
    process.kill()
    process.wait(timeout=10)
    assert not vol.alive
    assert is_mounted(vol.mount_point)  # a dead FUSE mount stays in the table ...
    with pytest.raises(OSError) as info:
        os.listdir(vol.mount_point)
    assert info.value.errno == errno.ENOTCONN  # ... and answers "transport endpoint is not connected"
    vol.unmount()
    assert not is_mounted(vol.mount_point) and vol.mount_point.is_dir()


@needs_fuse
def test_volume_unmounts_itself_when_its_owner_dies(backing: Path, tmp_path: Path) -> None:
    mount_point = tmp_path / "m"
    mount_call = (f"mount_volume(pathlib.Path({str(backing)!r}), pathlib.Path({str(mount_point)!r}), "
                  "faults=VolumeFaults(grow='nothing'))")
    kill_the_mounting_process(mount_point, mount_call, cleanup=["fusermount3", "-uz", str(mount_point)])


@needs_fuse
def test_unmount_while_station_holds_a_file_open(backing: Path, tmp_path: Path) -> None:
    vol = mount_volume(backing, tmp_path / "m", rate_limit_bytes_per_s=10**10)
    with open(vol.mount_point / BIG, "rb") as held:
        assert held.read(10) == (backing / BIG).read_bytes()[:10]
        vol.unmount()  # `fusermount3 -u` says busy; the volume is detached lazily instead
        # ... and when unmount() returns the device is stopped, although the file is still held: it does not
        # wait for the station to let go (a detached FUSE process would serve the open file on and on).
        assert vol._process is not None and vol._process.poll() is not None
        assert not is_mounted(vol.mount_point) and vol.mount_point.is_dir()
        with pytest.raises(OSError):
            held.seek(2 * MIB)
            held.read(10)  # the device is gone under the open file
    assert vol._process is not None and vol._process.poll() is not None


@needs_fuse
def test_mount_onto_a_live_mount_refused(backing: Path, mount: MountFactory) -> None:
    vol = mount(backing, rate_limit_bytes_per_s=10**10)
    with pytest.raises(VolumeError, match="already a mount point"):
        mount_volume(backing, vol.mount_point, rate_limit_bytes_per_s=10**10)
    assert vol.alive


def test_missing_fuse_device_is_named(backing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(volume_mod, "FUSE_DEVICE", tmp_path / "no-fuse")
    with pytest.raises(VolumeMountError, match="no-fuse, which does not exist"):
        mount_volume(backing, tmp_path / "m", faults=VolumeFaults(vanish="*"))
    assert not (tmp_path / "m").exists() and backing.is_dir()


@needs_fuse
def test_missing_fusermount_is_named(backing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(volume_mod, "FUSERMOUNT", "fusermount3-not-installed")
    with pytest.raises(VolumeMountError, match="fusermount3-not-installed on PATH"):
        mount_volume(backing, tmp_path / "m", rate_limit_bytes_per_s=1000)


@needs_fuse
def test_fuse_process_dying_at_start_is_reported(backing: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_command(*args: object, **kwargs: object) -> list[str]:
        code = "import sys; print('fuse: device not found', file=sys.stderr); sys.exit(3)"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(volume_mod, "fuse_command", failing_command)
    with pytest.raises(VolumeMountError, match=r"exited \(3\) before mounting(.|\n)*fuse: device not found"):
        mount_volume(backing, tmp_path / "m", rate_limit_bytes_per_s=1000)
    assert not is_mounted(tmp_path / "m")


def test_bad_rate_limit(backing: Path, tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="rate limit"):
        mount_volume(backing, tmp_path / "m", rate_limit_bytes_per_s=0)


def kill_the_mounting_process(mount_point: Path, mount_call: str, *, cleanup: list[str]) -> None:
    """Mount a volume in a child process (`mount_call`, Python), SIGKILL the child once it is mounted, and
    see the mount leave the table; `cleanup` takes down whatever the test leaves behind."""
    script = (
        "import sys, pathlib\n"
        "from simulators.recorder.volume import mount_volume, VolumeFaults\n"
        f"{mount_call}\n"
        "print('mounted', flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          cwd=Path(__file__).resolve().parents[2]) as owner:
        try:
            assert owner.stdout is not None and owner.stdout.readline() == b"mounted\n"
            assert is_mounted(mount_point)
            owner.send_signal(signal.SIGKILL)
            owner.wait(timeout=10)
            assert wait_for_mounts(lambda: not is_mounted(mount_point))
        finally:
            if owner.poll() is None:
                owner.kill()
            if is_mounted(mount_point):
                subprocess.run(cleanup, check=False)


def blocked_in_fuse(thread: threading.Thread, timeout_s: float = 10.0) -> bool:
    """Wait until `thread` sleeps in the kernel's FUSE request code (its wchan), or has ended."""
    wchan = Path(f"/proc/self/task/{thread.native_id}/wchan")
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if wchan.read_text().startswith("fuse_"):
                return True
        time.sleep(0.01)
    return False


@needs_fuse
def test_a_mount_can_be_in_the_table_before_its_content_is_readable(backing: Path, bay: Path) -> None:
    """The kernel puts a FUSE mount in the table before the filesystem answered FUSE_INIT; until then
    every access waits. With the answer held back for a minute, a listing started after the mount
    appeared can only end when the filesystem dies, and then without content."""
    vol = mount_volume(backing, bay, faults=VolumeFaults(ready_delay_ms=60_000))
    try:
        assert is_mounted(bay) and vol.identity is not None
        outcome: list[object] = []

        def listing() -> None:
            try:
                outcome.append(sorted(os.listdir(bay)))
            except OSError as exc:
                outcome.append(exc.errno)

        lister = threading.Thread(target=listing)
        lister.start()
        assert blocked_in_fuse(lister), "the listing never reached the filesystem"
        process = vol._process
        assert process is not None
        process.kill()  # the driver dies before it ever answered
        lister.join(timeout=30)
        assert not lister.is_alive() and outcome == [errno.ENOTCONN]
    finally:
        vol.unmount()
    assert not is_mounted(bay) and bay.is_dir()
