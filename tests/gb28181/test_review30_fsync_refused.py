"""Review 30: review 26 made a raw PS write the disk refused for want of space (ENOSPC, EDQUOT) end the
transfer `disk-full`, no fault of the recording, and review 29 did the same for the write in flight as the
session ends. But where the disk refuses the bytes at writeback, the refusal comes from the `fsync` in
`_sync_and_close` (NFS or CIFS spools, a thin-provisioned or btrfs volume, a quota enforced at writeback:
Linux reports the mapping's ENOSPC there), and `MediaReceiver._finish` makes every failure there `error`
("making the raw PS durable failed"), with no `write_refused`. The scheduler's `_interruption` reads no
interruption, the copy counts as the recording's own incomplete try toward MAX_INCOMPLETE_ATTEMPTS (3),
and three such refusals by the station's disk give the recording up for good.

Real ffmpeg-made H.264 in PS, RTP over a real TCP connection the device closes after its last packet, a
real receiver; the disk's refusal is the receiver's `_sync_and_close` seam (the fd is closed, the fsync
refused ENOSPC). The classification is the scheduler's own `_interruption`. Control: the same ENOSPC met
by the receiver's last write is `disk-full`, an interruption, with `write_refused` ENOSPC."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
from drivers.gb28181.ps import Codec
from edge.gb28181.media import EndReason, MediaOutcome, MediaTransport, receiver_keeping_free
from edge.sources.gb28181.recordings import INTERRUPTED_DISK_FULL
from tests.gb28181.media_sender import HAVE_FFMPEG, make_source, ps_packs, rtp_packets, send_tcp
from tests.gb28181.test_review29_in_flight_write_refused import _interruption
from tests.prerequisites import require

SSRC = 1100000301
PORTS = (36000, 36999)


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    packs = ps_packs(make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=20, bitrate="4M"))
    return rtp_packets(packs, ssrc=SSRC)


def _refused() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def _transfer(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch,
                    at_fsync: bool) -> MediaOutcome:
    """The device streams the recording and closes its TCP connection; the disk refuses the raw PS for want
    of space: at its fsync (`at_fsync`), else at the last write `_finish` makes."""
    real_write_all = media_module._write_all

    def taken(fd: int, data: bytes | bytearray) -> int:
        real_write_all(fd, data)
        stats = os.fstatvfs(fd)
        return stats.f_bavail * stats.f_frsize

    def fsync_refused(fd: int, _directory: Path, *, sync: bool) -> None:
        os.close(fd)
        if sync:
            raise _refused()

    def last_write_refused(fd: int, data: bytes | bytearray) -> None:
        real_write_all(fd, bytes(data[:len(data) // 2]))
        raise _refused()

    monkeypatch.setattr(media_module, "_write_and_measure", taken)
    if at_fsync:
        monkeypatch.setattr(media_module, "_sync_and_close", fsync_refused)
    else:
        monkeypatch.setattr(media_module, "_write_all", last_write_refused)
        # Nothing is flushed while the stream comes (the whole stream stays buffered), so the refused write
        # is always the last one `_finish` makes, whatever the machine's load does to the flushes' timing.
        monkeypatch.setattr(media_module, "FLUSH_BYTES", 32 << 20)
    receiver = await receiver_keeping_free(1)(
        MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
        raw_path=tmp_path / "download.ps", idle_timeout_s=60.0, max_bytes=1 << 30, expected_peer_host=None,
        max_media_span_s=None, time_limit_s=None, progress_window_s=None, min_progress_s=None,
        max_buffered_bytes=64 << 20)
    await send_tcp(packets, receiver.local_port)  # then the device closes its connection
    return await receiver.wait_closed()


async def test_a_raw_ps_refused_at_fsync_for_want_of_space_is_disk_full(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await _transfer(tmp_path, packets, monkeypatch, at_fsync=True)
    interrupted = _interruption(outcome)
    assert outcome.ended is EndReason.DISK_FULL and interrupted == INTERRUPTED_DISK_FULL, (
        f"the station's disk refused the raw PS at its fsync for want of space (ENOSPC), yet the receiver "
        f"ended {outcome.ended.value!r} ({outcome.detail!r}, write_refused {outcome.write_refused!r}) and "
        f"the scheduler's `_interruption` says {interrupted!r}: the copy counts as the recording's own "
        "incomplete try, and three such refusals by the station's disk give the recording up for good")
    # recorded as a refused write is: the errno, and the free space read right after the refusal
    assert outcome.write_refused == "ENOSPC" and outcome.write_refused_free_bytes is not None, outcome


async def test_control_the_same_refusal_by_the_last_write_is_disk_full(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await _transfer(tmp_path, packets, monkeypatch, at_fsync=False)
    assert outcome.ended is EndReason.DISK_FULL and _interruption(outcome) == INTERRUPTED_DISK_FULL, outcome
    assert outcome.write_refused == "ENOSPC", outcome
