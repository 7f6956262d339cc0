"""Before any recorder file is erased it is read again from the device, proven, and must give the
acquisition hash, whatever the wipe policy and with the shipped default `reread_original = false`.

* A recorder that returns one flipped bit once, without an I/O error (FUSE fault), has that one read
  hashed and sealed; the read before erasing sees the true bytes, so the file is not erased and an
  error entry names it (review finding 3). Control: the same volume without the fault is erased
  entirely, with no error.
* A read answered by pages another process keeps mapped is not proven to reach the device: such a
  file is not erased, a `wipe_deferred` entry says why, and no `verified` entry claims a read of the
  original (review finding 4). The recorder here is a real ext4 on a loop device, because the FUSE
  simulator invalidates even mapped pages at every open (real vfat keeps them). The misread case: the
  pages hold a misread the device no longer returns; the control: the pages hold the right bytes, and
  the result is the same (deferred, never "read again" on the ledger), while every untouched file is
  erased after a proven read. Once the mapping is gone, the next docking reads the device itself.
"""

from __future__ import annotations

import mmap
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config.station import StationConfig
from edge.durable.uncached import ReadMethod
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, VolumeOffload
from simulators.recorder.faultfs import VolumeFaults
from simulators.recorder.volume import mount_volume
from tests.mounting import ext4_on_loop

from .conftest import session_info, settle_on_disk, volume_hashes

FLIPPED = "*_0001.MP4"


def _entries(store: StationStore, type_: str) -> list[Any]:
    return [e for e in store.ledger.entries() if e.type == type_]


def _stored_hashes(store: StationStore) -> set[str]:
    return {row["sha256"] for row in store.conn.execute("SELECT sha256 FROM items")}


def _device_reads_claimed(store: StationStore, item: str) -> list[Any]:
    return [e for e in _entries(store, "verified") if e.item == item and e.data.get("source_reread")]


# -- finding 3: one silent misread -----------------------------------------------------------------


@pytest.mark.parametrize("misread", [True, False], ids=["misread", "control"])
async def test_a_single_silent_misread_is_caught_before_erasing_with_the_default_config(
    store: StationStore,
    backing: Path,
    config_factory: Callable[..., StationConfig],
    tmp_path: Path,
    misread: bool,
) -> None:
    truth = volume_hashes(backing)
    faults = VolumeFaults(bit_flip=(FLIPPED, 1000)) if misread else None
    vol = mount_volume(
        backing, tmp_path / "media" / "ZFY_3300001", faults=faults, unplug_marker=tmp_path / "UNPLUGGED"
    )
    try:
        config = config_factory(wipe={"policy": "after-verify"})
        assert config.offload.reread_original is False  # the shipped default
        result = await VolumeOffload(store, config, session_info(), vol.mount_point).run()
    finally:
        vol.unmount()
    errors = _entries(store, "error")
    if not misread:
        assert result.outcome is OffloadOutcome.DONE and errors == [], [e.data for e in errors]
        assert volume_hashes(backing) == {}, "the control: every original erased"
        assert _stored_hashes(store) == set(truth.values())
        return
    flipped = [name for name in truth if name.endswith("_0001.MP4")]
    assert len(flipped) == 1
    assert volume_hashes(backing) == {flipped[0]: truth[flipped[0]]}, "only the misread original stays"
    misread_items = _stored_hashes(store) - set(truth.values())
    assert len(misread_items) == 1, "the one read that was copied was the misread"
    wipe_errors = [e for e in errors if e.data.get("stage") == "wipe"]
    assert len(wipe_errors) == 1 and wipe_errors[0].data["original"] == flipped[0]
    assert "not the acquisition hash" in wipe_errors[0].data["reason"]
    assert not [e for e in _entries(store, "wiped") if e.data.get("original") == flipped[0]]


# -- finding 4: a read answered by pinned pages ------------------------------------------------------


@pytest.fixture
def ext4_recorder(tmp_path: Path, volume_template: Path) -> Iterator[tuple[Path, Path]]:
    """A recorder volume on a real ext4 on a loop device (keeps mapped pages, as vfat does)."""
    image = tmp_path / "card.img"
    with ext4_on_loop(image, tmp_path / "media" / "ZFY_3300001", 32) as mount_point:
        for entry in volume_template.iterdir():
            if entry.is_dir():
                shutil.copytree(entry, mount_point / entry.name)
            else:
                shutil.copy2(entry, mount_point / entry.name)
        shutil.rmtree(mount_point / "lost+found", ignore_errors=True)
        settle_on_disk(mount_point)
        yield mount_point, image


def _write_byte(image: Path, where: int, value: int) -> None:
    fd = os.open(image, os.O_RDWR)
    try:
        os.pwrite(fd, bytes([value]), where)
        os.fsync(fd)
    finally:
        os.close(fd)


def _where_on_card(image: Path, content: bytes, at: int) -> int:
    """The image offset of a byte of `content` at or after `at` whose 64-byte stretch is unique."""
    disk = image.read_bytes()
    for start in range(at, len(content) - 64, 997):
        marker = content[start : start + 64]
        where = disk.find(marker)
        if where >= 0 and disk.find(marker, where + 1) < 0:
            return where
    raise AssertionError("no stretch of the file is on the card exactly once")


@pytest.mark.parametrize("reread_original", [False, True])
@pytest.mark.parametrize("misread", [True, False], ids=["pinned-misread", "pinned-correct"])
async def test_a_read_answered_by_pinned_pages_defers_the_erasure_and_claims_no_device_read(
    store: StationStore,
    ext4_recorder: tuple[Path, Path],
    config_factory: Callable[..., StationConfig],
    reread_original: bool,
    misread: bool,
) -> None:
    mount_point, image = ext4_recorder
    truth = volume_hashes(mount_point)
    target = sorted(name for name in truth if name.endswith("_0001.MP4"))[0]
    path = mount_point / target
    content = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    where = _where_on_card(image, content, 40_000)
    with image.open("rb") as card:
        card.seek(where)
        good = card.read(1)[0]
    if misread:
        _write_byte(image, where, good ^ 0x01)  # the device returns a flipped byte to the first reader
    # Another process reads the file first and keeps it mapped: its pages stay in the cache.
    holder = path.open("rb")
    pinned = mmap.mmap(holder.fileno(), 0, prot=mmap.PROT_READ)
    try:
        assert (pinned[:] != content) is misread, "the pages hold what the first read saw"
        if misread:
            _write_byte(image, where, good)  # the device returns the right bytes again (transient)
        config = config_factory(wipe={"policy": "after-verify"}, offload={"reread_original": reread_original})
        result = await VolumeOffload(store, config, session_info(), mount_point).run()
        assert result.outcome is OffloadOutcome.DONE, result.errors
    finally:
        pinned.close()
        holder.close()
    if path.exists():  # what the card holds, not the pages the other process kept
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    by_original = {e.data["original"]: e.item for e in _entries(store, "acquired")}
    item = by_original[target]
    assert volume_hashes(mount_point) == {target: truth[target]}, "only the mapped original stays"
    assert _device_reads_claimed(store, item) == [], "no ledger entry claims a device read of it"
    deferred = [e for e in _entries(store, "wipe_deferred") if e.item == item]
    assert len(deferred) == 1 and "could not be proven" in deferred[0].data["reason"]
    assert _entries(store, "error") == []
    # Control: every untouched original was read again, proven, and erased.
    for name, other in by_original.items():
        if name == target:
            continue
        claims = _device_reads_claimed(store, other)
        assert claims and all(
            c.data["source_read"] == str(ReadMethod.DROPPED_AND_CHECKED) for c in claims
        ), name
    # The next docking, with nothing mapped, reads the device itself: the right bytes are erased
    # only once a stored item holds them.
    again = await VolumeOffload(store, config, session_info(), mount_point).run()
    assert truth[target] in _stored_hashes(store)
    if not misread:
        assert again.outcome is OffloadOutcome.DONE, again.errors
        assert volume_hashes(mount_point) == {}
        assert _device_reads_claimed(store, item)
