"""mount_volume: rename mounts, and FUSE mounts with injected faults, through the real kernel."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulators.recorder import volume as volume_mod
from simulators.recorder.faultfs import GROW_BYTES, VolumeFaults
from simulators.recorder.volume import VolumeError, VolumeMountError, is_mounted, mount_volume
from tests.prerequisites import require
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


# -- rename mounts -----------------------------------------------------------------------------------------


def test_rename_mount_and_unmount(backing: Path, tmp_path: Path) -> None:
    before = snapshot(backing)
    mount_point = tmp_path / "media" / "ZFY_1234567"
    vol = mount_volume(backing, mount_point)
    assert not vol.uses_fuse and vol.alive and not backing.exists()
    assert snapshot(mount_point) == before
    (mount_point / PHOTO).unlink()  # the station erases after verifying
    vol.unmount()
    vol.unmount()  # idempotent
    assert not vol.alive and not mount_point.exists()
    del before[PHOTO]
    assert snapshot(backing) == before


def test_rename_onto_empty_dir_but_not_full_one(backing: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    mount_volume(backing, empty).unmount()
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").touch()
    with pytest.raises(VolumeError, match="absent or an empty directory"):
        mount_volume(backing, full)
    (tmp_path / "file").touch()
    with pytest.raises(VolumeError, match="absent or an empty directory"):
        mount_volume(backing, tmp_path / "file")


def test_backing_must_be_a_real_directory(backing: Path, tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="existing directory"):
        mount_volume(tmp_path / "missing", tmp_path / "m")
    (tmp_path / "link").symlink_to(backing)
    with pytest.raises(VolumeError, match="existing directory"):
        mount_volume(tmp_path / "link", tmp_path / "m")


@pytest.fixture
def other_filesystem_dir(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    require(
        shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev,
        "needs a writable /dev/shm on another filesystem than the temp dir",
    )
    path = Path(tempfile.mkdtemp(dir=shm))
    yield path
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()


def test_rename_across_filesystems_is_a_clear_error(other_filesystem_dir: Path, tmp_path: Path) -> None:
    backing = other_filesystem_dir / "vol"
    backing.mkdir()
    with pytest.raises(VolumeError, match="one filesystem"):
        mount_volume(backing, tmp_path / "m")
    assert backing.is_dir()


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
    assert not vol.mount_point.exists()
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
def test_fuse_rate_limit_slows_reads(backing: Path, mount: MountFactory) -> None:
    rate = 4 * MIB
    mp = mount(backing, rate_limit_bytes_per_s=rate).mount_point
    started = time.monotonic()
    data = (mp / BIG).read_bytes()
    elapsed = time.monotonic() - started
    assert len(data) == 3 * MIB
    burst = max(64 * 1024, rate // 20)
    expected_s = (len(data) - burst) / rate
    assert elapsed >= 0.5 * expected_s, f"{len(data)} bytes in {elapsed:.2f} s at a {rate} B/s limit"


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
    assert not is_mounted(vol.mount_point) and not vol.mount_point.exists()


@needs_fuse
def test_volume_unmounts_itself_when_its_owner_dies(backing: Path, tmp_path: Path) -> None:
    mount_point = tmp_path / "m"
    script = (
        "import sys, pathlib\n"
        "from simulators.recorder.volume import mount_volume, VolumeFaults\n"
        f"mount_volume(pathlib.Path({str(backing)!r}), pathlib.Path({str(mount_point)!r}),"
        " faults=VolumeFaults(grow='nothing'))\n"
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
                subprocess.run(["fusermount3", "-uz", str(mount_point)], check=False)


@needs_fuse
def test_unmount_while_station_holds_a_file_open(backing: Path, tmp_path: Path) -> None:
    vol = mount_volume(backing, tmp_path / "m", rate_limit_bytes_per_s=10**10)
    with open(vol.mount_point / BIG, "rb") as held:
        assert held.read(10) == (backing / BIG).read_bytes()[:10]
        started = time.monotonic()
        vol.unmount()  # `fusermount3 -u` says busy; the volume is detached lazily instead
        assert time.monotonic() - started < volume_mod.STOP_TIMEOUT_S
        assert not is_mounted(vol.mount_point) and not vol.mount_point.exists()
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
    assert not (tmp_path / "m").exists()


def test_bad_rate_limit(backing: Path, tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="rate limit"):
        mount_volume(backing, tmp_path / "m", rate_limit_bytes_per_s=0)
