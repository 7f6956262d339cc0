"""One read of each original, from the device; the stored copy re-read from the disk (invariants 1, 2).

* The pass that copies and hashes a recorder file first drops the file's cached pages and proves with
  mincore(2) that none stayed, so the acquisition hash is of bytes read from the device; the
  `acquired` entry says how. Such an original is not read a second time for verification (unless
  `reread_original` is configured), but it is read again, proven, before it is erased (the one read
  may have been a silent misread: tests/station/test_read_before_erasing.py).
* When pages of the original stay cached (another process maps it), the read is not proven to reach
  the device: the ledger says so, and its erasure is deferred (no read of it is recorded as a device
  read).
* The stored copy is still re-read from the disk: a bit flipped on the disk behind the page cache
  (the cache still holds the bytes that were written, pinned by a mapping) is caught before the
  recorder's file is erased, and the file is copied again; the control, without the flip, records no
  error.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config.station import StationConfig
from edge.durable.uncached import ReadMethod
from edge.ingest import pipeline as pipeline_module
from edge.ingest.copy import ReRead
from edge.ingest.source import FileReader
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, VolumeOffload
from edge.verify.station import verify_store
from tests.mounting import ext4_on_loop

from .conftest import make_config, session_info, settle_on_disk, volume_hashes


def _entries(store: StationStore, type_: str) -> list[Any]:
    return [e for e in store.ledger.entries() if e.type == type_]


async def _offload(store: StationStore, config: StationConfig, root: Path) -> Any:
    return await VolumeOffload(store, config, session_info(), root).run()


def _reader(path: Path) -> FileReader:
    info = path.stat()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return FileReader(fd, size=info.st_size, mtime_ns=info.st_mtime_ns, what=path.name, drop_cache=True)


# -- the reader's proof ------------------------------------------------------------------------------


def test_a_reader_proves_its_reads_reach_the_disk_only_when_no_page_stays_cached(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(256 << 10))
    # Dirty pages (written, not yet on the disk) cannot be dropped: nothing is proven.
    reader = _reader(path)
    try:
        assert reader.cache_bypass is None
    finally:
        reader.close()
    settle_on_disk(tmp_path)
    assert path.read_bytes()  # cached, clean: dropped before the read
    reader = _reader(path)
    try:
        assert reader.cache_bypass == ReadMethod.DROPPED_AND_CHECKED
    finally:
        reader.close()
    with path.open("rb") as holder:
        # Another process maps the file: its pages stay whatever the advice says.
        mapping = mmap.mmap(holder.fileno(), 0, prot=mmap.PROT_READ)
        try:
            assert mapping[:16]
            reader = _reader(path)
            try:
                assert reader.cache_bypass is None
            finally:
                reader.close()
        finally:
            mapping.close()
    # Without `drop_cache` a reader proves nothing.
    fd = os.open(path, os.O_RDONLY)
    plain = FileReader(fd, size=path.stat().st_size, mtime_ns=path.stat().st_mtime_ns, what="x")
    try:
        assert plain.cache_bypass is None
    finally:
        plain.close()


# -- one read of the original -------------------------------------------------------------------------


def _before_erasing(store: StationStore) -> list[Any]:
    return [e for e in _entries(store, "verified") if e.data.get("purpose") == "before erasing"]


async def test_an_original_is_copied_in_one_read_and_read_again_only_before_erasing(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    truth = volume_hashes(volume)
    result = await _offload(store, config_factory(), volume)
    assert result.outcome is OffloadOutcome.DONE, result.errors
    acquired = _entries(store, "acquired")
    assert len(acquired) == len(truth)
    assert {e.data["source_read"] for e in acquired} == {str(ReadMethod.DROPPED_AND_CHECKED)}
    verified = [v for v in _entries(store, "verified") if v.data.get("purpose") is None]
    assert len(verified) == len(truth), "one verification per item, of the stored copy only"
    assert all(v.data["stored_reread"] and not v.data["source_reread"] for v in verified)
    assert all(v.data["stored_read"] == ReadMethod.O_DIRECT for v in verified)
    again = _before_erasing(store)
    assert sorted(e.item for e in again) == sorted(e.item for e in acquired), "each read again to erase it"
    assert {e.data["source_read"] for e in again} == {str(ReadMethod.DROPPED_AND_CHECKED)}
    assert volume_hashes(volume) == {}, "every original erased"
    wiped = _entries(store, "wiped")
    assert all(w.data["verified_before_erasing"]["source_reread"] for w in wiped)
    assert verify_store(store.layout.root).ok


async def test_an_original_whose_pages_stay_cached_is_not_erased_on_an_unproven_read(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    truth = volume_hashes(volume)
    pinned_name = sorted(truth)[0]
    with (volume / pinned_name).open("rb") as holder:
        mapping = mmap.mmap(holder.fileno(), 0, prot=mmap.PROT_READ)
        try:
            assert mapping[:]  # every page cached and mapped: no advice drops them
            result = await _offload(store, config_factory(), volume)
        finally:
            mapping.close()
    assert result.outcome is OffloadOutcome.DONE, result.errors
    by_original = {e.data["original"]: e for e in _entries(store, "acquired")}
    assert by_original[pinned_name].data["source_read"] is None, "the ledger says the read was not proven"
    assert {by_original[name].data["source_read"] for name in truth if name != pinned_name} == {
        str(ReadMethod.DROPPED_AND_CHECKED)
    }
    pinned_item = by_original[pinned_name].item
    again = _before_erasing(store)
    assert pinned_item not in {e.item for e in again}, "no read of it is recorded as a device read"
    assert all(e.data["source_reread"] is True for e in again)
    deferred = [e for e in _entries(store, "wipe_deferred") if e.item == pinned_item]
    assert len(deferred) == 1 and "could not be proven" in deferred[0].data["reason"]
    assert volume_hashes(volume) == {pinned_name: truth[pinned_name]}, "only the mapped original stays"


async def test_reread_original_reads_every_original_again_while_verifying(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    truth = volume_hashes(volume)
    result = await _offload(store, config_factory(offload={"reread_original": True}), volume)
    assert result.outcome is OffloadOutcome.DONE, result.errors
    verified = _entries(store, "verified")
    assert len(verified) == len(truth) and all(v.data["source_reread"] for v in verified)
    assert _before_erasing(store) == []


# -- the stored copy is still re-read from the disk ------------------------------------------------------


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A real ext4 file system on a loop device for the station store: (mount point, backing image)."""
    with ext4_on_loop(tmp_path / "disk.img", tmp_path / "mnt", 64) as mount_point:
        yield mount_point, tmp_path / "disk.img"


class _CorruptBehindTheCache:
    """Wraps the pipeline's verification read: before the first one, pins the stored copy's pages in
    the cache with a mapping (as a player or backup tool would) and, when `flip`, changes one byte of
    the copy on the 'disk' (the loop device's backing image), so only a read that really goes to the
    disk sees it."""

    def __init__(self, image: Path, *, flip: bool) -> None:
        self.image = image
        self.flip = flip
        self.calls = 0
        self.cache_still_good: bool | None = None
        self.real = pipeline_module.reread_stored_and_source

    def __call__(self, stored: Path, *args: Any, **kwargs: Any) -> ReRead:
        self.calls += 1
        if self.calls > 1:
            return self.real(stored, *args, **kwargs)
        with stored.open("rb") as holder:
            mapping = mmap.mmap(holder.fileno(), 0, prot=mmap.PROT_READ)
            try:
                written = mapping[:]
                if self.flip:
                    self._flip_on_disk(written)
                # Control: a buffered read still answers with the bytes once written.
                self.cache_still_good = stored.read_bytes() == written
                return self.real(stored, *args, **kwargs)
            finally:
                mapping.close()

    def _flip_on_disk(self, written: bytes) -> None:
        disk = self.image.read_bytes()
        for offset in range(len(written) // 2, len(written) - 64, 997):
            marker = written[offset : offset + 64]
            at = disk.find(marker)
            if at >= 0 and disk.find(marker, at + 1) < 0:  # on the disk once: this copy's block
                fd = os.open(self.image, os.O_WRONLY)
                try:
                    os.pwrite(fd, bytes([marker[0] ^ 0x01]), at)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                return
        raise AssertionError("no stretch of the stored copy is on the disk exactly once")


async def _offload_to_ext4(
    tmp_path: Path, volume: Path, ext4: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, *, flip: bool
) -> tuple[StationStore, _CorruptBehindTheCache, Any]:
    mount_point, image = ext4
    corrupt = _CorruptBehindTheCache(image, flip=flip)
    monkeypatch.setattr(pipeline_module, "reread_stored_and_source", corrupt)
    store = StationStore(mount_point / "store", "TEST-STATION")
    config = make_config(tmp_path, station={"store_dir": str(mount_point / "store")})
    result = await _offload(store, config, volume)
    return store, corrupt, result


async def test_a_bit_flipped_on_the_disk_behind_the_cache_is_caught_before_erasing(
    tmp_path: Path, volume: Path, ext4: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = volume_hashes(volume)
    store, corrupt, result = await _offload_to_ext4(tmp_path, volume, ext4, monkeypatch, flip=True)
    try:
        assert corrupt.cache_still_good is True, "the page cache still held the bytes that were written"
        assert result.outcome is OffloadOutcome.PARTIAL  # recovered, and the event is on the record
        mismatches = [
            e for e in _entries(store, "error")
            if e.data.get("stage") == "verify" and "stored copy re-read from disk gives" in e.data["reason"]
        ]
        assert len(mismatches) == 1
        item = mismatches[0].item
        wiped = [e for e in _entries(store, "wiped") if e.item == item]
        assert len(wiped) == 1 and wiped[0].seq > mismatches[0].seq, "erased only after a good copy verified"
        stored = {r["sha256"] for r in store.conn.execute("SELECT sha256 FROM items")}
        assert stored == set(truth.values()), "only the recorder's true bytes are sealed"
        assert volume_hashes(volume) == {}
        assert verify_store(store.layout.root).ok
    finally:
        store.close()


async def test_control_without_the_flip_nothing_is_copied_again(
    tmp_path: Path, volume: Path, ext4: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = volume_hashes(volume)
    store, corrupt, result = await _offload_to_ext4(tmp_path, volume, ext4, monkeypatch, flip=False)
    try:
        assert corrupt.calls == len(truth) and corrupt.cache_still_good is True
        assert result.outcome is OffloadOutcome.DONE, result.errors
        assert _entries(store, "error") == []
        assert len(_entries(store, "acquired")) == len(truth)
        assert volume_hashes(volume) == {}
    finally:
        store.close()
