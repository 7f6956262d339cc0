"""Durability and privacy of what the stores write (issue 7, 1.10).

* Every directory created on the way to a stored item is made durable in its parent (fsync of the
  parent after the mkdir), for the station store and the central store.
* The verification re-read of a stored copy comes from the disk for certain: proven on a real ext4
  file system on a loop device whose bytes are changed behind the page cache while another process
  keeps the file's pages mapped (so advice cannot drop them); a buffered read (the control) still
  sees the old bytes.
* Store files are 0600 and directories 0700 whatever the umask of whoever runs the program.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.central.embedded import EmbeddedCentral
from edge.config.station import StationConfig
from edge.durable import files as durable_files
from edge.durable.uncached import CacheBypassError, ReadMethod, UncachedFile, resident_pages
from edge.ingest.copy import reread_and_compare
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, VolumeOffload
from tests.mounting import ext4_on_loop
from tests.prerequisites import require
from tests.station.harness import simulated_station, spec

from .conftest import session_info

CHUNK = 1 << 20


class _FsyncRecorder:
    """Wraps os.mkdir and os.fsync: the order in which directories are made and files fsynced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, object]] = []
        self.lock = threading.Lock()
        real_mkdir, real_fsync = os.mkdir, os.fsync

        def mkdir(path: object, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
            real_mkdir(path, mode, dir_fd=dir_fd)  # type: ignore[arg-type]
            if dir_fd is None:
                with self.lock:
                    self.events.append(("mkdir", os.path.abspath(os.fsdecode(path))))  # type: ignore[arg-type]

        def fsync(fd: int) -> None:
            real_fsync(fd)
            info = os.fstat(fd)
            with self.lock:
                self.events.append(("fsync", (info.st_dev, info.st_ino)))

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "fsync", fsync)

    def undurable(self, created: list[Path]) -> list[str]:
        """Directories in `created` whose parent was not fsynced after the directory was made."""
        problems = []
        for directory in created:
            made = [
                i for i, (kind, what) in enumerate(self.events) if kind == "mkdir" and what == str(directory)
            ]
            if not made:
                problems.append(f"{directory}: not made through os.mkdir")
                continue
            parent = os.stat(directory.parent)
            synced = [
                i for i, (kind, what) in enumerate(self.events)
                if kind == "fsync" and what == (parent.st_dev, parent.st_ino) and i > made[0]
            ]
            if not synced:
                problems.append(f"{directory}: its parent was never fsynced after it was made")
        return problems


def _directories(root: Path) -> list[Path]:
    return sorted([root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())])


async def test_every_directory_made_for_a_stored_item_is_durable_in_its_parent(
    tmp_path: Path,
    volume: Path,
    config_factory: Callable[..., StationConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = _FsyncRecorder(monkeypatch)
    fresh = tmp_path / "new" / "parents"
    store = StationStore(fresh / "store", "TEST-STATION")
    try:
        config = config_factory(station={"id": "TEST-STATION", "store_dir": str(fresh / "store")},
                                wipe={"policy": "never"})
        result = await VolumeOffload(store, config, session_info(), volume).run()
    finally:
        store.close()
    assert result.outcome is OffloadOutcome.DONE, result.errors
    created = _directories(tmp_path / "new")
    day_dirs = [d for d in created if d.parent.parent.parent.name == "items"]
    assert day_dirs, "the offload made items/YYYY/MM/DD/"
    assert recorder.undurable(created) == []


def test_the_fsync_recorder_sees_a_directory_made_without_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: mkdir(parents=True) alone is caught, make_dirs_durable is not."""
    recorder = _FsyncRecorder(monkeypatch)
    (tmp_path / "plain" / "a").mkdir(parents=True)
    assert len(recorder.undurable([tmp_path / "plain", tmp_path / "plain" / "a"])) == 2
    made = durable_files.make_dirs_durable(tmp_path / "durable" / "a" / "b")
    assert made == [tmp_path / "durable", tmp_path / "durable" / "a", tmp_path / "durable" / "a" / "b"]
    assert recorder.undurable(made) == []
    assert all(stat.S_IMODE(d.stat().st_mode) == 0o700 for d in made)


# -- the re-read comes from the disk ------------------------------------------------------------------


def _need(tool: str) -> None:
    require(shutil.which(tool) is not None and os.geteuid() == 0, f"needs root and {tool}")


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A real ext4 file system on a loop device: (mount point, backing image file)."""
    with ext4_on_loop(tmp_path / "disk.img", tmp_path / "mnt", 64) as mount_point:
        yield mount_point, tmp_path / "disk.img"


def _corrupt_behind_the_cache(image: Path, marker: bytes, replacement: bytes) -> None:
    """Change the bytes on the 'disk' (the loop device's backing file), not through the mounted file."""
    data = image.read_bytes()
    at = data.find(marker)
    assert at >= 0 and data.find(marker, at + 1) < 0, "the marker is on the disk exactly once"
    fd = os.open(image, os.O_WRONLY)
    try:
        os.pwrite(fd, replacement, at)
        os.fsync(fd)
    finally:
        os.close(fd)


def _stored_copy(mount_point: Path) -> tuple[Path, bytes, bytes]:
    marker = os.urandom(32)
    content = bytearray(os.urandom(3 * CHUNK + 12345))
    content[CHUNK + 100: CHUNK + 132] = marker
    path = mount_point / "item.mp4"
    with path.open("wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    return path, bytes(content), marker


def test_verification_reread_comes_from_the_disk_even_when_pages_stay_cached(
    ext4: tuple[Path, Path],
) -> None:
    mount_point, image = ext4
    path, content, marker = _stored_copy(mount_point)
    with path.open("rb") as holder:
        # Another process keeps the file mapped and touched (a player, a backup tool): advice cannot
        # drop mapped pages, so only a read that really bypasses the cache sees the disk.
        mapping = mmap.mmap(holder.fileno(), 0, prot=mmap.PROT_READ)
        try:
            assert mapping[:] == content
            _corrupt_behind_the_cache(image, marker, b"\0" * len(marker))
            os.posix_fadvise(holder.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            assert resident_pages(holder.fileno(), len(content)) > 0
            # Control: a buffered read still answers from the cache with the bytes once written.
            assert path.read_bytes() == content
            reread = reread_and_compare(path, None, size=len(content), chunk_bytes=CHUNK, what="item")
        finally:
            mapping.close()
    assert reread.stored_size == len(content)
    assert reread.stored_sha256 != hashlib.sha256(content).hexdigest(), "the disk's bytes were read"
    on_disk = content.replace(marker, b"\0" * len(marker))
    assert reread.stored_sha256 == hashlib.sha256(on_disk).hexdigest()
    assert reread.stored_read == ReadMethod.O_DIRECT


def test_without_o_direct_the_reread_proves_no_page_is_cached_or_refuses(ext4: tuple[Path, Path]) -> None:
    mount_point, image = ext4
    path, content, marker = _stored_copy(mount_point)
    assert path.read_bytes() == content  # cached
    _corrupt_behind_the_cache(image, marker, b"\1" * len(marker))
    with UncachedFile(path, prefer_direct=False) as disk:  # as on a file system refusing O_DIRECT
        assert disk.method == ReadMethod.DROPPED_AND_CHECKED
        assert resident_pages(disk.fd, len(content)) == 0
        buffer = mmap.mmap(-1, len(content) + 4096)
        got = disk.read_at(buffer, 0, len(content))
        assert buffer[:got] == content.replace(marker, b"\1" * len(marker))
    with path.open("rb") as holder:
        mapping = mmap.mmap(holder.fileno(), 0, prot=mmap.PROT_READ)
        try:
            assert mapping[: len(content)] == content.replace(marker, b"\1" * len(marker))
            with pytest.raises(CacheBypassError, match="stay in the page cache"):
                UncachedFile(path, prefer_direct=False)
        finally:
            mapping.close()


def test_a_memory_file_system_says_so(tmp_path: Path) -> None:
    _need("mount")
    target = tmp_path / "ram"
    target.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(target)], check=True)
    try:
        (target / "x").write_bytes(b"evidence")
        with UncachedFile(target / "x") as disk:  # ramfs refuses O_DIRECT; its cache is its storage
            assert disk.method == ReadMethod.MEMORY_FS
    finally:
        subprocess.run(["umount", str(target)], check=True)


# -- privacy ---------------------------------------------------------------------------------------------


def _not_private(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode) and mode != 0o700:
            found.append(f"{path.relative_to(root.parent)}: directory {mode:04o}")
        elif not stat.S_ISDIR(info.st_mode) and mode & 0o077:
            found.append(f"{path.relative_to(root.parent)}: file {mode:04o}")
    return found


async def test_stores_are_private_and_durable_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A station offloads and uploads to a central in this process, run with umask 022: every path under
    both stores is private, and every directory made in them was fsynced in its parent."""
    recorder = _FsyncRecorder(monkeypatch)
    old = os.umask(0o022)
    try:
        central = await EmbeddedCentral.start(tmp_path, "TEST-STATION", tmp_path / "store")
        specs = [spec(0)]
        try:
            async with simulated_station(
                tmp_path,
                specs,
                uplink={**central.uplink_config(), "backoff_base_s": 0.05, "backoff_max_s": 0.3},
                wipe={"policy": "after-receipt", "receipt_wait_s": 60},
            ) as station:
                await station.dock_recorder(specs[0].device_serial, 1)
                await station.wait_results(1)
                assert station.agent.results[0].outcome is OffloadOutcome.DONE
        finally:
            await central.stop()
        assert len(list((tmp_path / "store" / "items").rglob("*.receipt.json"))) == 3
        assert _not_private(tmp_path / "store") == []
        assert _not_private(central.store_dir) == []
        assert recorder.undurable(_directories(tmp_path / "store")) == []
        assert recorder.undurable(_directories(central.store_dir)) == []
    finally:
        os.umask(old)


def test_the_privacy_check_sees_a_readable_file(tmp_path: Path) -> None:
    """Control for the check above."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    (root / "f").write_bytes(b"")
    (root / "f").chmod(0o644)
    assert _not_private(root) == ["root/f: file 0644"]
