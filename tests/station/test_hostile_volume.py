"""A recorder volume is hostile input: every entry that is not a plain file is refused and recorded,
odd but real files are still acquired, and nothing outside the volume is ever read or erased."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.enumerate import list_volume, name_problem
from edge.sources.usb.offload import OffloadOutcome, VolumeOffload
from edge.verify.station import verify_store
from tests.prerequisites import prerequisite_met, require

from .conftest import session_info, sha256_file


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"..", "not a file name"),
        (b".", "not a file name"),
        (b"", "not a file name"),
        (b"../../etc/passwd", "contains '/'"),
        (b"/etc/shadow", "contains '/'"),
        (b"a\x00b", "NUL"),
        (b"x" * 300, "300 bytes long"),
    ],
)
def test_names_that_are_not_one_component_are_refused(raw: bytes, problem: str) -> None:
    found = name_problem(raw)
    assert found is not None and problem in found


@pytest.mark.parametrize("raw", [b"a..b.MP4", b"..hidden.MP4", "录像.MP4".encode(), b"\xb2\xe2\xca\xd4.MP4"])
def test_unusual_but_valid_names_are_accepted(raw: bytes) -> None:
    assert name_problem(raw) is None


def _hostile_volume(volume: Path, outside: Path) -> None:
    outside.mkdir()
    (outside / "secret.MP4").write_bytes(b"not on the recorder")
    media = volume / "DCIM" / "100MEDIA"
    os.symlink(outside / "secret.MP4", media / "link_out.MP4")
    os.symlink(outside, volume / "linkdir")
    os.symlink("loop_b", media / "loop_a.MP4")
    os.symlink("loop_a.MP4", media / "loop_b")
    os.mkfifo(media / "pipe.MP4")
    (media / "empty.MP4").write_bytes(b"")
    original = next(media.glob("*_0001.MP4")).read_bytes()
    (media / "truncated.MP4").write_bytes(original[: len(original) // 2])
    (media / os.fsdecode(b"\xb2\xe2\xca\xd4_gbk.MP4")).write_bytes(b"gbk name on FAT")
    if prerequisite_met(os.geteuid() == 0, "a character device node on the volume needs root"):
        os.mknod(media / "null.MP4", stat.S_IFCHR | 0o600, os.makedev(1, 3))


async def test_hostile_entries_are_refused_and_real_files_still_acquired(
    store: StationStore, volume: Path, tmp_path: Path, config_factory: Callable[..., StationConfig]
) -> None:
    outside = tmp_path / "outside"
    _hostile_volume(volume, outside)
    result = await VolumeOffload(store, config_factory(), session_info(), volume).run()

    refused = {e.data["original"]: e.data["reason"] for e in store.ledger.entries() if e.type == "refused"}
    assert "symbolic link" in refused["DCIM/100MEDIA/link_out.MP4"]
    assert "symbolic link" in refused["linkdir"]
    assert "symbolic link" in refused["DCIM/100MEDIA/loop_a.MP4"]
    assert "FIFO" in refused["DCIM/100MEDIA/pipe.MP4"]
    if os.geteuid() == 0:  # the node was made (or, under CI, the test failed already)
        assert "character device" in refused["DCIM/100MEDIA/null.MP4"]
    assert (outside / "secret.MP4").read_bytes() == b"not on the recorder", "outside untouched"

    manifests = {}
    for row in store.conn.execute("SELECT manifest, sealed_in_file, path FROM items"):
        import json

        m = json.loads(row["manifest"])
        manifests[m["original"]["path"]] = (m, row["sealed_in_file"], row["path"])
    empty, _, _ = manifests["DCIM/100MEDIA/empty.MP4"]
    assert empty["size"] == 0 and "error" in empty["media"]
    truncated, embedded, _ = manifests["DCIM/100MEDIA/truncated.MP4"]
    assert embedded == 0, "a truncated MP4 is kept whole, manifest in the sidecar"
    assert "error" in truncated["media"] or truncated["media"].get("streams") is not None
    gbk, _, path = manifests["DCIM/100MEDIA/测试_gbk.MP4"]
    assert gbk["original"]["path_bytes_hex"].endswith(b"\xb2\xe2\xca\xd4_gbk.MP4".hex())
    assert (store.layout.root / path).read_bytes().startswith(b"gbk name on FAT")
    assert result.outcome in (OffloadOutcome.PARTIAL, OffloadOutcome.DONE)
    assert verify_store(store.layout.root).ok
    stored = {p.name for p in store.layout.items.rglob("*") if p.is_file()}
    assert all(name.split(".")[0].count("-") == 4 for name in stored), "stored names are item UUIDs"


def test_listing_never_leaves_the_volume(volume: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _hostile_volume(volume, outside)
    listing = list_volume(volume, max_files=1000, max_depth=8)
    assert all(b"secret" not in b"/".join(f.parts) for f in listing.files)
    assert all(f.parts[0] != b"linkdir" for f in listing.files)


def test_file_count_and_depth_limits_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    deep = root / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "x.MP4").write_bytes(b"x")
    for i in range(5):
        (root / f"f{i}.MP4").write_bytes(b"y")
    listing = list_volume(root, max_files=3, max_depth=3)
    reasons = [r.reason for r in listing.rejected]
    assert len(listing.files) == 3
    assert sum("more than 3 files" in r for r in reasons) >= 2
    assert any("deeper than 3" in r for r in reasons)


async def test_volume_gone_before_listing_is_device_gone(
    store: StationStore, tmp_path: Path, config_factory: Callable[..., StationConfig]
) -> None:
    result = await VolumeOffload(store, config_factory(), session_info(), tmp_path / "missing").run()
    assert result.outcome is OffloadOutcome.DEVICE_GONE
    assert any(e.type == "error" for e in store.ledger.entries())


@pytest.mark.parametrize("precheck", [True, False], ids=["free-space-check", "write-fails-ENOSPC"])
async def test_real_enospc_stops_cleanly(
    volume: Path,
    tmp_path: Path,
    config_factory: Callable[..., StationConfig],
    monkeypatch: pytest.MonkeyPatch,
    precheck: bool,
) -> None:
    """The station disk really fills up (a 1 MiB tmpfs) in the middle of an offload: either the
    free-space check sees it coming, or (check blinded) a write fails with ENOSPC."""
    if not precheck:
        monkeypatch.setattr("edge.ingest.pipeline.free_bytes", lambda path: 1 << 50)
    require(os.geteuid() == 0, "mounting a small tmpfs needs root")
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        before = {p: sha256_file(p) for p in volume.rglob("*") if p.is_file()}
        config = config_factory(
            station={"id": "TEST-STATION", "store_dir": str(small / "store"), "clock": "untrusted"}
        )
        store = StationStore(small / "store", "TEST-STATION")
        try:
            result = await VolumeOffload(store, config, session_info(), volume).run()
            assert result.outcome is OffloadOutcome.STORE_FULL
            assert {p: sha256_file(p) for p in volume.rglob("*") if p.is_file()} == before
            reasons = [e.data.get("reason", "") for e in store.ledger.entries() if e.type == "error"]
            assert any("disk" in r for r in reasons), reasons
            assert not list(store.layout.tmp.iterdir())
        finally:
            store.close()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_unlistable_directory_is_reported_and_the_rest_listed(
    volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    real_scandir = os.scandir
    photo = os.stat(volume / "PHOTO") if (volume / "PHOTO").exists() else os.stat(volume / "AUDIO")

    def failing_scandir(target: Any) -> Any:
        if isinstance(target, int) and os.fstat(target).st_ino == photo.st_ino:
            raise OSError(errno.EIO, "Input/output error")
        return real_scandir(target)

    monkeypatch.setattr("edge.sources.usb.enumerate.os.scandir", failing_scandir)
    listing = list_volume(volume, max_files=1000, max_depth=8)
    assert any("cannot list directory" in r.reason for r in listing.rejected)
    assert any(f.parts[0] == b"DCIM" for f in listing.files), "other directories are still listed"


def test_the_ledger_reserve_is_held_released_and_held_again(tmp_path: Path) -> None:
    from edge.ingest.store import RESERVE_BYTES

    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        assert store.layout.reserve.stat().st_size == RESERVE_BYTES
        store.release_reserve()
        assert not store.layout.reserve.exists()
        store.hold_reserve()
        assert store.layout.reserve.stat().st_size == RESERVE_BYTES
        assert verify_store(store.layout.root).ok  # not an unaccounted object
    finally:
        store.close()


async def test_a_copy_whose_acquisition_cannot_be_recorded_leaves_no_temp_copy(
    volume: Path, store: StationStore, config_factory: Callable[..., StationConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The disk fills up under the commit that records a finished copy (SQLite's own "database or disk
    is full", as another bay's copy can cause): the run stops as store full and the unrecorded temp copy
    is removed, not left in tmp/ for ever as nobody's; the originals stay on the recorder."""
    from edge.ingest.repository import IngestRepository

    real_acquired = IngestRepository.acquired
    failed: list[str] = []

    def acquired_on_a_full_disk(self: IngestRepository, item: str, *args: Any, **kwargs: Any) -> Any:
        if failed:
            return real_acquired(self, item, *args, **kwargs)
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        self.conn.execute(f"PRAGMA max_page_count = {pages}")  # a real SQLITE_FULL, for this one
        try:
            failed.append(item)
            padded = {**kwargs["facts"], "pad": "x" * 65536}  # more than the pages the database may have
            return real_acquired(self, item, *args, **{**kwargs, "facts": padded})
        finally:
            self.conn.execute("PRAGMA max_page_count = 1073741823")

    monkeypatch.setattr(IngestRepository, "acquired", acquired_on_a_full_disk)
    before = {p: sha256_file(p) for p in volume.rglob("*") if p.is_file()}
    result = await VolumeOffload(store, config_factory(), session_info(), volume).run()
    assert failed, "the acquisition was recorded through the patched call"
    assert result.outcome is OffloadOutcome.STORE_FULL
    assert not [p for p in store.layout.tmp.iterdir() if p.name == f"{failed[0]}.part"]
    assert {p: sha256_file(p) for p in volume.rglob("*") if p.is_file()} == before
