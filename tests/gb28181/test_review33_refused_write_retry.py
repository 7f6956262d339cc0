"""Review 33: the once-retry of a raw PS write refused for want of space with room showing (review 30) keeps
producing holes, and the two checks reviews 31 and 32 put before it (the offset moved past the call's bytes;
the file longer than the offset) both read client-side state a network file system may not keep.

1. An NFS writeback loss with the file's size as the server has it. When Linux's NFS client fails a
   writeback ENOSPC it removes the failed requests; `nfs_getattr` (what fstat(2) calls) first flushes a
   regular file's writes, then, with no write outstanding, `nfs_update_inode` takes the server's size. So
   the refused call (offset unmoved, write(2) moves it only on a count) is followed by an fstat showing the
   file ending where the offset is: exactly what a local disk shows after a write(2) that took nothing. The
   retry writes, succeeds (the error was consumed by the refused call, `file_check_and_advance_wb_err`), the
   closing fsync succeeds, and the copy is sealed `complete` with the bytes the server dropped as a hole.
   Nothing the station can read after the refusal tells "this call took nothing" from "bytes taken before
   were lost": a write refused for want of space must end the copy.

2. The retry sleeps `REFUSED_RETRY_PAUSE_S` in the worker while the stream keeps coming. Over UDP the
   receiver cannot slow the device: once its write buffer (`max_buffered_bytes`) fills during the pause the
   session ends `error` ("the disk is too slow"), which the scheduler does not take for the disk's doing: the
   copy is an incomplete attempt of the recording, and three of those give it up for good (downloads
   `MAX_INCOMPLETE_ATTEMPTS`), though the disk had room a moment later. The kernel's socket buffer is not
   what overflows (the event loop goes on reading): the receiver's own buffer is. Here it is the smallest the
   receiver allows (2 x FLUSH_BYTES) and the device sends at about 4 MB/s; at the default 8 MiB the same
   happens at 16 MiB/s (134 Mbit/s: a LAN camera at its fastest download speed).

Real ffmpeg-made H.264 muxed into PS, RTP over real TCP and UDP sockets into a real receiver; the file
system's answers are the receiver's `_write_all` / `_write_and_measure` seams; the verdict is the scheduler's
own `completeness`. Controls: the same transfers with no refusal are complete and whole (1), and end without
`error` (2)."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
from drivers.gb28181.ps import Codec
from edge.gb28181.media import FLUSH_BYTES, EndReason, MediaOutcome, MediaTransport, receiver_keeping_free
from tests.gb28181.disk_rig import measured, receive_after_121
from tests.gb28181.media_sender import HAVE_FFMPEG, make_source, ps_packs, rtp_packets, send_udp
from tests.gb28181.test_review31_nfs_refusal_swallowed import DROPPED, PORTS, SSRC, packets
from tests.prerequisites import require

__all__ = ["packets"]  # review 31's module fixture: its 3 s recording
SMALL_FLUSH = 8 * 1024  # flushes while the 3 s recording comes: bytes written back before the refusal
UDP_PORTS = (39000, 39999)
UDP_SSRC = 1100000433


async def _nfs_after_121(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch, *,
                         writeback_refused: bool) -> tuple[MediaOutcome, bytes, int, dict[str, object]]:
    """The 3 s recording over TCP, drained and closed as after MediaStatus 121. `writeback_refused`: the
    first write once a flush's worth is in the file is answered as the NFS client answers it after a
    writeback of the file's first bytes (up to `DROPPED`) was refused ENOSPC: those bytes are not on the
    server (zeros), this call's bytes are dropped with the failed requests, fstat shows the server's size
    (the file ends at the offset, which the refused call did not move), the call fails ENOSPC; later calls
    are taken."""
    real_write_all = media_module._write_all
    refusals: list[int] = []

    def nfs_write_all(fd: int, data: bytes | bytearray) -> None:
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        if writeback_refused and not refusals and offset >= SMALL_FLUSH:
            refusals.append(min(DROPPED, offset))
            os.pwrite(fd, bytes(refusals[0]), 0)  # the server never got these
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(fd, data)

    monkeypatch.setattr(media_module, "_write_all", nfs_write_all)
    monkeypatch.setattr(media_module, "_write_and_measure", measured(nfs_write_all))
    monkeypatch.setattr(media_module, "FLUSH_BYTES", SMALL_FLUSH)
    raw = tmp_path / "download.ps"
    outcome, verdict = await receive_after_121(raw, packets, ssrc=SSRC, ports=PORTS,
                                               call_id="review33@station")
    assert bool(refusals) == writeback_refused, refusals  # the fault as modelled was met (or not)
    stats = os.statvfs(tmp_path)
    assert stats.f_bavail * stats.f_frsize >= 4 * FLUSH_BYTES, "the test's disk must show room"
    lost = refusals[0] if refusals else 0
    return outcome, raw.read_bytes(), lost, verdict


async def test_an_nfs_writeback_loss_with_the_servers_size_is_not_sealed_complete(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, stored, lost, verdict = await _nfs_after_121(tmp_path, packets, monkeypatch,
                                                          writeback_refused=True)
    assert lost >= SMALL_FLUSH and stored[:lost] == bytes(lost), "the fault as modelled: a hole at the start"
    assert verdict["complete"] is False, (
        f"the NFS client refused a raw PS write ENOSPC for a writeback that lost the file's first {lost} "
        f"bytes (zeros in the raw PS); fstat showed the server's size, the file ending at the unmoved "
        f"offset, which reads as a local write that took nothing, so the write was tried again and "
        f"succeeded: ended {outcome.ended.value!r}, write_refused {outcome.write_refused!r}, bytes_written "
        f"{outcome.bytes_written} of {outcome.bytes}: sealed complete with a hole, never downloaded again")
    assert outcome.ended is EndReason.DISK_FULL and outcome.write_refused == "ENOSPC", outcome.detail


async def test_control_with_no_writeback_refused_the_nfs_copy_is_complete_and_whole(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, stored, _lost, verdict = await _nfs_after_121(tmp_path, packets, monkeypatch,
                                                           writeback_refused=False)
    assert len(stored) == outcome.bytes == outcome.bytes_written
    assert stored[:SMALL_FLUSH] != bytes(SMALL_FLUSH)
    assert verdict["complete"] is True and outcome.write_refused is None, (outcome.ended, verdict)


@pytest.fixture(scope="module")
def udp_stream(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    # The recording over again (its PTS restart each time, which the receiver only counts): a long stream.
    packs = ps_packs(make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=20, bitrate="4M")) * 8
    assert sum(len(p) for p, _ in packs) > 24 * FLUSH_BYTES, "the stream must go on well past the refusal"
    return rtp_packets(packs, ssrc=UDP_SSRC)


async def _udp_with_a_neighbour(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch, *,
                                neighbour: bool) -> MediaOutcome:
    """A fast UDP download; `neighbour`: one write, three flushes in, is refused ENOSPC by a disk a
    neighbour filled and gave back at once (its own copy refused too), statvfs showing room."""
    real_write_all = media_module._write_all
    refusals: list[int] = []

    def write_all(fd: int, data: bytes | bytearray) -> None:
        if neighbour and not refusals and os.lseek(fd, 0, os.SEEK_CUR) >= 3 * FLUSH_BYTES:
            refusals.append(len(data))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write(2) took nothing
        real_write_all(fd, data)

    monkeypatch.setattr(media_module, "_write_all", write_all)
    monkeypatch.setattr(media_module, "_write_and_measure", measured(write_all))
    receiver = await receiver_keeping_free(1)(
        MediaTransport.UDP, bind_host="127.0.0.1", port_range=UDP_PORTS, ssrc=UDP_SSRC,
        raw_path=tmp_path / "rec.ps", idle_timeout_s=30.0, max_bytes=1 << 30, expected_peer_host=None,
        max_media_span_s=None, time_limit_s=None, progress_window_s=None, min_progress_s=None,
        max_buffered_bytes=2 * FLUSH_BYTES)
    # About 4 MB/s (16 packets of 1400 bytes every 5 ms): 2 MB while a write waits half a second.
    sending = asyncio.ensure_future(send_udp(packets, receiver.local_port, pace_every=16, pace_s=0.005))
    try:
        await asyncio.wait({sending, asyncio.ensure_future(receiver.wait_closed())},
                           return_when=asyncio.FIRST_COMPLETED)
        await sending
        outcome = await receiver.close()
    finally:
        sending.cancel()
    assert bool(refusals) == neighbour, refusals  # the fault as modelled was met (or not)
    return outcome


async def test_a_refused_write_in_a_fast_udp_download_ends_it_disk_full_not_error(
        tmp_path: Path, udp_stream: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await _udp_with_a_neighbour(tmp_path, udp_stream, monkeypatch, neighbour=True)
    assert outcome.ended is not EndReason.ERROR, (
        f"a UDP download's raw PS write was refused ENOSPC by a disk a neighbour filled; the receiver "
        f"paused its worker to try it again while the device went on sending, its write buffer of "
        f"{2 * FLUSH_BYTES} bytes overflowed and the session ended {outcome.ended.value!r} "
        f"({outcome.detail}): an incomplete attempt of the recording, not the disk's doing, three of which "
        f"give the recording up for good")
    assert outcome.ended is EndReason.DISK_FULL and outcome.write_refused == "ENOSPC", outcome.detail


async def test_control_a_fast_udp_download_with_no_refusal_does_not_end_error(
        tmp_path: Path, udp_stream: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await _udp_with_a_neighbour(tmp_path, udp_stream, monkeypatch, neighbour=False)
    assert outcome.ended is EndReason.CLOSED, (outcome.ended, outcome.detail)
    assert outcome.bytes_written == outcome.bytes and outcome.write_refused is None
