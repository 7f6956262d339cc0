"""Issue 13 leftovers: an upload store's write handle refuses to write or commit once one of its calls
failed (edge/central/tus_store.py ``UploadWriteBase._failing_for_good``), in both stores, whoever calls it.

The HTTP layer already stops a request at its first failed call (revs13c, ``tus._WriteBehind``); these
tests call the stores themselves. Failures come from the real interfaces: the local store's disk filling
mid-``pwritev`` (what fits is written, then ENOSPC, as write(2) does) and an ``fsync`` failing (EIO); the
shared store's part refused by a real Ceph RGW (the staging bucket is gone for that one PUT). Each has its
control: the same calls without the failure commit.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge.central.postgres.tus_shared_store import SharedTusStore
from edge.central.service import start_central
from edge.central.tus_contract import UploadStoreUnavailableError
from edge.central.tus_store import TusUploadStore, UploadWriteFailedError
from tests.central.receivers import PART_MB, ReceiverSite
from tests.central.receivers import site as site
from tests.central.test_tus_shared_store import _staged_keys

STATION = "station-a"
PART = PART_MB << 20
NO_ROOM = rf"OSError: \[Errno {errno.ENOSPC}\]"


def _refused(upload: str) -> str:
    """The start of a write's refusal after a failed call (a pattern), up to the failure's type."""
    return rf"upload {upload}: write refused: an earlier call of this write failed \("


def _same_file(fd: int, path: Path) -> bool:
    found, wanted = os.fstat(fd), path.stat()
    return (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino)


class FillingDisk:
    """``os.pwritev`` on the disk of ``path``, which fills after ``room`` more bytes of that file: the call
    that crosses it writes what still fits and returns the short count, the next raises ENOSPC (write(2)'s
    way). Other files are written as usual."""

    def __init__(self, path: Path, room: int) -> None:
        self.path, self.room = path, room
        self.real = os.pwritev

    def __call__(self, fd: int, buffers: Sequence[Any], offset: int, /) -> int:
        if not _same_file(fd, self.path):
            return self.real(fd, buffers, offset)
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fitting: list[memoryview] = []
        left = self.room
        for buffer in buffers:
            view = memoryview(buffer)[:left]
            fitting.append(view)
            left -= len(view)
            if left == 0:
                break
        written = self.real(fd, fitting, offset)
        self.room -= written
        return written


class FailingFsync:
    """``os.fsync`` that fails once with EIO for ``path`` (the kernel could not write its pages back)."""

    def __init__(self, path: Path) -> None:
        self.path, self.failures_left = path, 1
        self.real: Callable[[int], None] = os.fsync

    def __call__(self, fd: int, /) -> None:
        if self.failures_left and _same_file(fd, self.path):
            self.failures_left -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.real(fd)


def _local_store(tmp_path: Path, **kwargs: Any) -> TusUploadStore:
    return TusUploadStore(tmp_path / "uploads", max_size_bytes=1 << 20, expire_after_s=3600.0, **kwargs)


@pytest.mark.parametrize("disk_fills", [True, False], ids=["disk-fills", "control"])
def test_local_write_after_a_failed_write_is_refused_and_the_offset_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk_fills: bool
) -> None:
    store = _local_store(tmp_path)
    data = os.urandom(4000)
    upload = store.create(STATION, len(data)).upload_id
    with store.begin_write(upload, offset=0) as write:
        write.write(data[:1000])
        write.finish()
    content = store.root / f"{upload}.part"
    disk = FillingDisk(content, 1500 if disk_fills else 1 << 30)
    monkeypatch.setattr(os, "pwritev", disk)
    with store.begin_write(upload, offset=1000) as write:
        write.write(data[1000:2000])
        if not disk_fills:
            write.write(data[2000:3000])
            write.write(data[3000:])
            done = write.keep()
            assert done.complete and done.sha256 == hashlib.sha256(data).hexdigest()
            return
        with pytest.raises(OSError, match="No space left"):
            write.write(data[2000:3000])  # 500 bytes of it reached the file, then ENOSPC
        assert content.stat().st_size == 2500
        disk.room = 1 << 30  # room again: without the refusal the next block would land at offset 2000
        with pytest.raises(UploadWriteFailedError, match=_refused(upload) + rf"{NO_ROOM}.*offset 1000"):
            write.write(data[3000:])
        for end in (write.keep, write.finish):
            with pytest.raises(UploadWriteFailedError, match=rf"refused: .*{NO_ROOM}"):
                end()
        assert write.discard().offset == 1000
    assert store.get(upload).offset == 1000  # type: ignore[union-attr]
    assert json.loads((store.root / f"{upload}.info.json").read_bytes())["offset"] == 1000
    assert content.stat().st_size == 1000, "what the failed call wrote is truncated away at discard"
    # The upload goes on from its committed offset, its hash intact.
    with store.begin_write(upload, offset=1000) as write:
        write.write(data[1000:])
        assert write.finish().sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fsync_fails", [True, False], ids=["fsync-fails", "control"])
def test_local_commit_after_a_failed_fsync_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync_fails: bool
) -> None:
    """The commit inside a write (every ``commit_every_bytes``) fails its fsync: a later keep must not
    fsync again and commit bytes whose write-back failed (the second fsync would report success)."""
    store = _local_store(tmp_path, commit_every_bytes=1000)
    data = os.urandom(3000)
    upload = store.create(STATION, len(data)).upload_id
    content = store.root / f"{upload}.part"
    if fsync_fails:
        monkeypatch.setattr(os, "fsync", FailingFsync(content))
    with store.begin_write(upload, offset=0) as write:
        write.write(data[:500])
        if not fsync_fails:
            write.write(data[500:1500])
            assert write.keep().offset == 1500
            return
        with pytest.raises(OSError, match="Input/output error"):
            write.write(data[500:1500])  # its commit at 1500 bytes fails the fsync
        with pytest.raises(UploadWriteFailedError, match=rf"upload {upload}: keep refused: .*{errno.EIO}"):
            write.keep()
        with pytest.raises(UploadWriteFailedError, match=r"write refused"):
            write.write(data[1500:])
    assert store.get(upload).offset == 0  # type: ignore[union-attr]
    assert content.stat().st_size == 0



def _parts_through_a_refused_put(store: SharedTusStore, data: bytes, *, refused: bool) -> str:
    """Three parts written on one handle; with ``refused`` the second part's PUT goes to a bucket that is
    not there (the real RGW answers NoSuchBucket), then the bucket is back for the third."""
    upload = store.create(STATION, len(data)).upload_id
    with store.begin_write(upload, offset=0) as write:
        write.write(data[:PART])  # part 1, stored and committed (no Upload-Checksum)
        assert write.info.offset == PART
        if not refused:
            write.write(data[PART:])
            done = write.keep()
            assert done.complete and done.sha256 == hashlib.sha256(data).hexdigest()
            return upload
        staging_bucket = store.staging.bucket
        store.staging.bucket = f"{staging_bucket}-gone"
        try:
            with pytest.raises(UploadStoreUnavailableError, match=f"store part 2 of upload {upload}"):
                write.write(data[PART:2 * PART])
        finally:
            store.staging.bucket = staging_bucket
        with pytest.raises(UploadWriteFailedError,
                           match=_refused(upload) + rf"UploadStoreUnavailableError: .*at offset {PART}"):
            write.write(data[2 * PART:])
        for end in (write.keep, write.finish):
            with pytest.raises(UploadWriteFailedError, match=r"refused: .*UploadStoreUnavailableError"):
                end()
    return upload


@pytest.mark.parametrize("refused", [True, False], ids=["part-refused", "control"])
async def test_shared_write_after_a_refused_part_is_refused_and_the_offset_stays(
    site: ReceiverSite, refused: bool
) -> None:
    running = await start_central(site.config("a", uploads="max_size_mb = 64\nstation_quota_mb = 64\n"))
    try:
        store = running.parts.uploads
        assert isinstance(store, SharedTusStore)
        data = os.urandom(3 * PART)
        upload = await asyncio.to_thread(_parts_through_a_refused_put, store, data, refused=refused)
        info = await asyncio.to_thread(store.get, upload)
    finally:
        await running.stop()
    assert info is not None
    if refused:
        assert info.offset == PART and info.sha256 is None
        assert _staged_keys(site, upload) == [f"uploads/{upload}/00001"], "nothing stored after the failure"
    else:
        assert info.offset == 3 * PART and info.sha256 == hashlib.sha256(data).hexdigest()
        assert len(_staged_keys(site, upload)) == 3
