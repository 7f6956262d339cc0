"""Review 31: review 30 made a raw PS write refused for want of space while the disk shows room be tried
once more from where it stopped (`_write_retrying_refusal`: the offset the fd reached, `lseek`), and only a
refusal that stands is recorded. That holds for a local disk, where write(2) refused ENOSPC/EDQUOT took
nothing in that call. It does not hold for an NFS spool, which the README and `_sync_and_close_measured`
name as a station's: Linux's `nfs_file_write` takes the call's bytes into the page cache (the offset moves
past them), then, when a writeback since the call began failed ENOSPC/EDQUOT/EFBIG, writes back all it
holds (`nfs_wb_all`) and returns that error (bytes the server refused and the client dropped, written by
this call or before it), after `file_check_and_advance_wb_err` has consumed it: a later fsync of the file
reports success. The refusal says bytes the offset has passed are lost.

The retry reads the moved offset as "the refused write took all of it", writes nothing more, and returns
success: the refusal vanishes (no `write_refused`, no `disk-full`), the closing fsync succeeds, and the
scheduler's `completeness` judges the copy complete (the file's size is all that came), to be sealed
`complete` and never downloaded again, with a hole where the server dropped the bytes. Before review 30
the same refusal ended the transfer `disk-full`: incomplete, downloaded again.

Real ffmpeg-made H.264 muxed into PS, RTP over a real TCP connection into a real receiver, drained and
closed as the session does after MediaStatus 121; the NFS client is the receiver's `_write_all` seam: the
write `_finish` makes takes its bytes, the range the server dropped (the file's start) reads as zeros,
and the call raises ENOSPC as `nfs_file_write` returns it. The verdict is the scheduler's own
`completeness`. Control: the same transfer with no writeback refused is complete and whole."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
from edge.gb28181.media import MediaOutcome
from tests.gb28181.disk_rig import measured, receive_after_121, short_recording

SSRC = 1100000311
PORTS = (38000, 38999)
DROPPED = 32 * 1024  # the range a writeback lost on the server (the file's start)


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return short_recording(tmp_path_factory.mktemp("src"), SSRC)


async def _after_121(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch, *,
                     writeback_refused: bool) -> tuple[MediaOutcome, bytes, dict[str, object]]:
    """The device sends the recording and keeps its connection (it says 121 over SIP); the session drains
    the receiver and closes it. `writeback_refused`: the last write is answered as an NFS client answers
    once an earlier writeback was refused ENOSPC. Returns the outcome, the raw PS, and the verdict."""
    real_write_all = media_module._write_all
    refusals: list[int] = []

    def nfs_write_all(fd: int, data: bytes | bytearray) -> None:
        real_write_all(fd, data)  # this call's bytes: into the page cache, the offset past them
        if writeback_refused and not refusals:
            refusals.append(len(data))
            end = os.lseek(fd, 0, os.SEEK_CUR)
            assert end >= DROPPED, end
            os.pwrite(fd, bytes(DROPPED), 0)  # refused at writeback: the server holds nothing there
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # nfs_file_write's return

    # the flushes while the stream comes: taken
    monkeypatch.setattr(media_module, "_write_and_measure", measured(real_write_all))
    monkeypatch.setattr(media_module, "_write_all", nfs_write_all)
    raw = tmp_path / "download.ps"
    outcome, verdict = await receive_after_121(raw, packets, ssrc=SSRC, ports=PORTS,
                                               call_id="review31@station")
    assert bool(refusals) == writeback_refused, refusals  # the fault as modelled was met (or not)
    return outcome, raw.read_bytes(), verdict


async def test_a_write_refused_after_an_nfs_writeback_loss_is_not_sealed_complete(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, stored, verdict = await _after_121(tmp_path, packets, monkeypatch, writeback_refused=True)
    # the fault as modelled: bytes written are not in the file (a hole of zeros at its start)
    assert stored[:DROPPED] == bytes(DROPPED) and len(stored) == outcome.bytes, (len(stored), outcome.bytes)
    assert verdict["complete"] is False, (
        f"the spool's NFS client answered a raw PS write ENOSPC for bytes a writeback lost (the "
        f"file's first {DROPPED} bytes are a hole), yet `_write_retrying_refusal` read the offset the call "
        f"had moved as all of it taken and returned success: the receiver ended {outcome.ended.value!r} "
        f"with write_refused {outcome.write_refused!r}, and the scheduler judged the copy complete "
        f"({verdict}): sealed `complete` with a hole, never downloaded again")
    assert outcome.write_refused == "ENOSPC", outcome.write_refused  # the refusal is on the manifest


async def test_control_with_no_writeback_refused_it_is_complete_and_whole(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, stored, verdict = await _after_121(tmp_path, packets, monkeypatch, writeback_refused=False)
    assert len(stored) == outcome.bytes == outcome.bytes_written and stored[:DROPPED] != bytes(DROPPED)
    assert verdict["complete"] is True and outcome.write_refused is None, (outcome.ended, verdict)
