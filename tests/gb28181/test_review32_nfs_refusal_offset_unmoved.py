"""Review 32: review 31 stopped `_write_retrying_refusal` from retrying a write refused ENOSPC/EDQUOT "that
took every byte it was given", judged by the file offset (`lseek(fd, 0, SEEK_CUR) - start >= len(data)`).
Its test models Linux's NFS client with the offset moved past the call's bytes. The kernel does not move
it: `ksys_write`/`new_sync_write` store the new position only when the call returns a count
(`if (ret > 0 && ppos) *ppos = kiocb.ki_pos`), and `nfs_file_write` returns the error (`result = error`
after `nfs_wb_all` and `file_check_and_advance_wb_err`). So the call's bytes are in the page cache (the
file's size grew past them), the offset is where the call began, and the check reads "nothing taken":
the refusal is tried again, the second write (the error consumed) succeeds over the same range, and the
bytes the server dropped are a hole in a copy the scheduler judges complete. The check review 31 wanted is
the file's size, not its offset.

First, the receiver's write call itself (`_write_retrying_refusal`; `_write_refusal_measured` since review
33), with the write modelled as the kernel returns it; then the whole path of review 31 (real ffmpeg-made
PS over a real TCP connection, drained and closed after MediaStatus 121, judged by the scheduler's
`completeness`). Controls: a write not refused is taken whole; no refusal at
all: complete and whole. (Review 33 removed the retry itself: a refused write is never tried again.)"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
from edge.gb28181.media import FLUSH_BYTES, MediaOutcome, RefusedWrite
from tests.gb28181.disk_rig import measured, receive_after_121
from tests.gb28181.test_review31_nfs_refusal_swallowed import DROPPED, PORTS, SSRC, packets

SMALL_FLUSH = 8 * 1024
__all__ = ["packets"]  # the module fixture of review 31: the same real PS

_WRITE_ALL = media_module._write_all  # the real one, before any test patches it
CHUNK = b"\x00\x00\x01\xba" * (FLUSH_BYTES // 8)  # half a flush's worth


def _needs_room(path: Path) -> None:
    stats = os.statvfs(path)
    assert stats.f_bavail * stats.f_frsize >= 4 * FLUSH_BYTES, "the test's disk must show room"


def _nfs_write(dropped: int, calls: list[str]) -> Callable[[int, bytes | bytearray], None]:
    """A write answered as Linux's NFS client answers it once a writeback since the call began was refused
    ENOSPC: the bytes go into the page cache at the offset (the size grows), the bytes of earlier calls
    the server dropped (up to `dropped` from the file's start) read as zeros, the call returns -ENOSPC,
    so the offset does not move. The next call succeeds (the error was consumed). `calls[0]` records the
    bytes dropped."""

    def write(fd: int, data: bytes | bytearray) -> None:
        if not calls:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
            lost = min(dropped, offset)
            calls.append(f"refused, {lost} earlier bytes dropped")
            os.pwrite(fd, data, offset)  # taken into the page cache; the offset is left where it was
            os.pwrite(fd, bytes(lost), 0)  # the writeback the server refused: not on the server
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        calls.append("taken")
        _WRITE_ALL(fd, data)

    return write


def test_an_nfs_refusal_with_the_offset_unmoved_is_not_retried_into_success(tmp_path: Path) -> None:
    _needs_room(tmp_path)
    calls: list[str] = []
    fd = os.open(tmp_path / "raw.ps", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        media_module._write_all(fd, CHUNK)  # an earlier flush, written back (so the server said)
        try:
            media_module._write_refusal_measured(_nfs_write(len(CHUNK), calls), fd, CHUNK, tmp_path)
        except RefusedWrite as refusal:
            assert refusal.refused.errno == errno.ENOSPC
        else:
            stored = (tmp_path / "raw.ps").read_bytes()
            pytest.fail(
                f"the NFS client refused the write ENOSPC after taking its {len(CHUNK)} bytes (the file "
                f"grew to {os.fstat(fd).st_size}, the offset stayed at {len(CHUNK)}: write(2) moves it only "
                f"when it returns a count); `_write_retrying_refusal` read the unmoved offset as nothing "
                f"taken, tried again ({calls}) and returned success, the refusal gone: the file's first "
                f"{len(CHUNK)} bytes are zeros ({stored[:len(CHUNK)] == bytes(len(CHUNK))}), yet nothing "
                f"says so")
    finally:
        os.close(fd)


def test_control_a_write_not_refused_is_taken_whole(tmp_path: Path) -> None:
    # Review 33: a refused write is never tried again (a local refusal that took nothing included), so the
    # control is a write the disk takes: it goes through once, the file whole.
    _needs_room(tmp_path)
    calls: list[str] = []

    def local_write(fd: int, data: bytes | bytearray) -> None:
        calls.append("taken")
        media_module._write_all(fd, data)

    fd = os.open(tmp_path / "raw.ps", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        media_module._write_all(fd, CHUNK)
        media_module._write_refusal_measured(local_write, fd, CHUNK, tmp_path)
    finally:
        os.close(fd)
    assert calls == ["taken"]
    assert (tmp_path / "raw.ps").read_bytes() == CHUNK + CHUNK


async def _after_121(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch, *,
                     writeback_refused: bool) -> tuple[MediaOutcome, bytes, dict[str, object]]:
    """Review 31's transfer, a write answered as the kernel answers an NFS writeback loss (offset unmoved)."""
    real_write_all = media_module._write_all
    calls: list[str] = []
    nfs = _nfs_write(DROPPED, calls)

    def write(fd: int, data: bytes | bytearray) -> None:
        # The first write once a flush's worth is in the file meets the refused writeback; all others
        # are taken.
        if writeback_refused and (calls or os.lseek(fd, 0, os.SEEK_CUR) >= SMALL_FLUSH):
            nfs(fd, data)
        else:
            real_write_all(fd, data)

    monkeypatch.setattr(media_module, "_write_and_measure", measured(write))
    monkeypatch.setattr(media_module, "_write_all", write)
    # Flushes while the stream comes (the 3 s recording is less than a real flush): bytes written back
    # before the last write, which the server can drop.
    monkeypatch.setattr(media_module, "FLUSH_BYTES", SMALL_FLUSH)
    raw = tmp_path / "download.ps"
    outcome, verdict = await receive_after_121(raw, packets, ssrc=SSRC, ports=PORTS,
                                               call_id="review32@station")
    assert bool(calls) == writeback_refused, calls  # the fault as modelled was met (or not)
    assert not calls or not calls[0].startswith("refused, 0 "), calls  # earlier bytes were dropped
    return outcome, raw.read_bytes(), verdict


async def test_an_nfs_writeback_loss_as_the_kernel_returns_it_is_not_sealed_complete(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, stored, verdict = await _after_121(tmp_path, packets, monkeypatch, writeback_refused=True)
    assert stored[:SMALL_FLUSH] == bytes(SMALL_FLUSH) and len(stored) == outcome.bytes, (
        len(stored), outcome.bytes)
    assert verdict["complete"] is False, (
        f"the NFS client answered a raw PS write ENOSPC for bytes a writeback lost (the file's "
        f"first bytes are a hole) and, as write(2) does on an error, left the offset unmoved; "
        f"review 31's offset check read that as nothing taken, the retry succeeded: ended "
        f"{outcome.ended.value!r}, write_refused {outcome.write_refused!r}, verdict {verdict}: sealed "
        f"`complete` with a hole, never downloaded again")
    assert outcome.write_refused == "ENOSPC", outcome.write_refused


async def test_control_with_no_writeback_refused_it_is_complete_and_whole(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, stored, verdict = await _after_121(tmp_path, packets, monkeypatch, writeback_refused=False)
    assert len(stored) == outcome.bytes == outcome.bytes_written and stored[:DROPPED] != bytes(DROPPED)
    assert verdict["complete"] is True and outcome.write_refused is None, (outcome.ended, verdict)
