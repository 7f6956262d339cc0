"""The verification re-read reads the stored copy ahead of its hashing, in a second thread.

Whatever the interleaving, it must hash the stored bytes in order, find a difference from the source
at its true offset, hand a read error to its caller in place of the chunk that failed, stop early
without leaving a thread or a buffer behind, and keep the memory it holds bounded.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.ingest.buffers import BUFFERS, BufferPool
from edge.ingest.copy import SourceReadError, reread_and_compare
from edge.ingest.source import FileReader
from simulators.recorder.faultfs import VolumeFaults
from simulators.recorder.volume import check_fuse_available, mount_volume
from tests.prerequisites import require

CHUNK = 4096
SIZE = 9 * CHUNK + 1234  # chunks enough for the reader to run ahead, and an unaligned tail


def _write(path: Path, content: bytes) -> None:
    with path.open("wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def _reader(path: Path) -> FileReader:
    info = path.stat()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return FileReader(fd, size=info.st_size, mtime_ns=info.st_mtime_ns, what=path.name, drop_cache=True)


def _verify_readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "verify-reader"]


@pytest.fixture
def content() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def fuse_volume(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(backing directory, where a faulty mount of it will be), unmounted afterwards."""
    try:
        check_fuse_available()
    except Exception as exc:
        require(False, f"FUSE unavailable: {exc}")
    backing = tmp_path / "backing"
    backing.mkdir()
    yield backing, tmp_path / "mnt"


def test_stored_copy_hashes_in_order_and_matches_its_source(tmp_path: Path, content: bytes) -> None:
    stored, original = tmp_path / "stored.part", tmp_path / "original.MP4"
    _write(stored, content)
    _write(original, content)
    source = _reader(original)
    try:
        reread = reread_and_compare(stored, source, size=SIZE, chunk_bytes=CHUNK, what="item")
    finally:
        source.close()
    assert reread.stored_sha256 == hashlib.sha256(content).hexdigest()
    assert (reread.stored_size, reread.source_differs_at) == (SIZE, None)
    assert not _verify_readers()


@pytest.mark.parametrize("where", [0, 5 * CHUNK + 17, SIZE - 1])
def test_a_byte_that_differs_is_found_at_its_offset(tmp_path: Path, content: bytes, where: int) -> None:
    stored, original = tmp_path / "stored.part", tmp_path / "original.MP4"
    changed = bytearray(content)
    changed[where] ^= 0x40
    _write(stored, bytes(changed))  # the disk holds a different byte: a bad write
    _write(original, content)
    source = _reader(original)
    try:
        reread = reread_and_compare(stored, source, size=SIZE, chunk_bytes=CHUNK, what="item")
    finally:
        source.close()
    assert reread.stored_sha256 == hashlib.sha256(changed).hexdigest() != hashlib.sha256(content).hexdigest()
    assert reread.source_differs_at == where


def test_a_source_longer_than_the_copy_is_a_difference(tmp_path: Path, content: bytes) -> None:
    stored, original = tmp_path / "stored.part", tmp_path / "original.MP4"
    _write(stored, content)
    _write(original, content + b"more")
    source = _reader(original)
    try:
        reread = reread_and_compare(stored, source, size=SIZE, chunk_bytes=CHUNK, what="item")
    finally:
        source.close()
    assert reread.stored_sha256 == hashlib.sha256(content).hexdigest()
    assert reread.source_differs_at == SIZE


def test_a_stored_copy_shorter_than_its_size_gives_what_the_disk_holds(
    tmp_path: Path, content: bytes
) -> None:
    stored = tmp_path / "stored.part"
    _write(stored, content[: 4 * CHUNK])
    reread = reread_and_compare(stored, None, size=SIZE, chunk_bytes=CHUNK, what="item")
    assert reread.stored_size == 4 * CHUNK
    assert reread.stored_sha256 == hashlib.sha256(content[: 4 * CHUNK]).hexdigest()
    assert not _verify_readers()


def test_a_read_error_of_the_stored_copy_reaches_the_caller_and_leaves_nothing_running(
    fuse_volume: tuple[Path, Path], content: bytes
) -> None:
    backing, mount_point = fuse_volume
    _write(backing / "stored.part", content)
    volume = mount_volume(backing, mount_point, faults=VolumeFaults(read_error=("stored.part", 6 * CHUNK)))
    try:
        idle_before = BUFFERS.idle_bytes
        with pytest.raises(OSError) as raised:
            reread_and_compare(mount_point / "stored.part", None, size=SIZE, chunk_bytes=CHUNK, what="item")
        assert raised.value.errno == 5  # EIO, from the reading thread, raised here
        assert not _verify_readers(), "the read-ahead thread ended"
        assert BUFFERS.idle_bytes >= idle_before, "its buffers went back to the pool"
        # Control: the same file without the fault reads whole.
        reread = reread_and_compare(backing / "stored.part", None, size=SIZE, chunk_bytes=CHUNK, what="item")
        assert reread.stored_sha256 == hashlib.sha256(content).hexdigest()
    finally:
        volume.unmount()


def test_a_source_read_error_stops_the_read_ahead_and_reaches_the_caller(
    fuse_volume: tuple[Path, Path], tmp_path: Path, content: bytes
) -> None:
    backing, mount_point = fuse_volume
    _write(backing / "original.MP4", content)
    stored = tmp_path / "stored.part"
    _write(stored, content)
    volume = mount_volume(backing, mount_point, faults=VolumeFaults(read_error=("original.MP4", 2 * CHUNK)))
    try:
        source = _reader(mount_point / "original.MP4")
        try:
            with pytest.raises(SourceReadError, match="read failed"):
                reread_and_compare(stored, source, size=SIZE, chunk_bytes=CHUNK, what="item")
        finally:
            source.close()
        assert not _verify_readers(), "the consumer stopped early and the read-ahead thread ended"
    finally:
        volume.unmount()


def test_the_pool_reuses_buffers_and_keeps_a_bounded_number_idle() -> None:
    pool = BufferPool(max_idle_bytes=3 * CHUNK)
    first = pool.aligned(CHUNK)
    pool.give(first)
    assert pool.aligned(CHUNK) is first, "reused, not mapped again"
    held = [pool.aligned(CHUNK) for _ in range(5)] + [first]
    for buffer in held:
        pool.give(buffer)
    assert pool.idle_bytes == 3 * CHUNK, "only max_idle_bytes are kept"
    plain = pool.plain(100)
    assert isinstance(plain, bytearray) and len(plain) == 100
    assert len(pool.aligned(100)) == CHUNK, "aligned buffers are whole pages"
