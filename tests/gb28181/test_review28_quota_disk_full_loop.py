"""Review 28: since review 26 a write of the raw PS refused with ENOSPC or EDQUOT ends the transfer
`disk-full`, like the receiver's free-space guard, so it never counts toward the recording's give-up, and
`_tight_for` alone keeps it from being tried again, judging room by statvfs (`free_bytes`). A quota
(EDQUOT: a user or group quota on /var/lib/evidence-edge, a btrfs qgroup) is not in statvfs: the disk shows
room, every pass asks for the recording again, the write is refused at the same byte, and one more
identical partial copy (raw PS and MP4) is sealed, at every pass, for ever. Before review 26 such a write
ended `error`: incomplete, given up after MAX_INCOMPLETE_ATTEMPTS.

Real media receiver with its guard, RTP over a real TCP connection, real pipeline, ffmpeg and store; the
quota is the receiver's `_write_all` seam (write(2) takes what fits under it, then fails EDQUOT), the
disk's real free space is what statvfs says; passes 6 h apart on the downloads' clocks (the give-up needs
the stuck copies over 48 h: review 33). Control: without the quota the recording is downloaded
whole at the first pass and never asked for again."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
from edge.gb28181.media import EndReason
from edge.sources.gb28181.downloads import MAX_INCOMPLETE_ATTEMPTS, MAX_INTERRUPTED_ATTEMPTS
from tests.gb28181.disk_rig import HonestDevice, PassClock, new_spool, station_downloads
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_review28_tight_retry_cut_again import honest_device, stream

__all__ = ["stream"]  # the module fixture, shared

PASSES = MAX_INTERRUPTED_ATTEMPTS + 3


class SpoolQuota:
    """The service user's quota on the spool's file system: what the spool's files hold may not pass
    `limit`; a write takes what still fits, then fails EDQUOT, as write(2) does."""

    def __init__(self, spool: Path, limit: int) -> None:
        self.spool, self.limit = spool, limit
        self.real_write_all = media_module._write_all

    def __call__(self, fd: int, data: bytes | bytearray) -> None:
        held = sum(entry.stat(follow_symlinks=False).st_size for entry in os.scandir(self.spool))
        fits = min(len(data), max(0, self.limit - held))
        self.real_write_all(fd, bytes(data[:fits]))
        if fits < len(data):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))


def quota_passes(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch,
                 quota: int | None) -> tuple[Path, HonestDevice, PassClock]:
    """The rig of passes under a quota: the spool (its file system's quota `quota` behind the receiver's
    `_write_all`, when given), the review 28 device streaming `packets`, the station's clocks."""
    spool = new_spool(tmp_path)
    if quota is not None:
        monkeypatch.setattr(media_module, "_write_all", SpoolQuota(spool, quota))
    return spool, honest_device(packets), PassClock()


async def _passes(tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
                  quota: int | None) -> tuple[HonestDevice, int, list[tuple[int, int]]]:
    """PASSES passes over RECORDING: the device, the items sealed, and each raw PS manifest's (`bytes`
    received, `bytes_written`)."""
    _size, packets = stream
    spool, device, clock = quota_passes(tmp_path, packets, monkeypatch, quota)
    # passes 6 h apart: the stuck copies' give-up needs them over 48 h (review 33)
    async with station_downloads(tmp_path, spool, device.start_download, clock=clock) as downloads:
        for _ in range(PASSES):
            await downloads.download([RECORDING])
            clock.advance(6 * 3600.0)
        conn = downloads.pipeline.store.conn
        sealed = int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
        counts = [(int(received), int(written)) for received, written in conn.execute(
            "SELECT json_extract(manifest, '$.original.bytes'), "
            "json_extract(manifest, '$.original.bytes_written') FROM items "
            "WHERE json_extract(manifest, '$.original.role') = 'raw-ps'")]
    return device, sealed, counts


async def test_a_quota_that_refuses_every_try_at_the_same_byte_does_not_loop_for_ever(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    quota = size // 3
    device, sealed, counts = await _passes(tmp_path, stream, monkeypatch, quota=quota)
    assert device.ended and set(device.ended) == {EndReason.DISK_FULL}
    # each manifest tells what its raw PS holds (the quota), beside what was received
    assert counts and all(written == quota <= received for received, written in counts), counts
    assert len(device.received) < PASSES, (
        f"a quota refused every write past {quota} bytes of the spool (EDQUOT) while statvfs showed room: "
        f"the recording was downloaded at each of {len(device.received)} passes, each ended disk-full with "
        f"the same {quota} bytes written, {sealed} items (identical partial raw PS and their MP4s) sealed, "
        f"never given up (as `error`, before review 26, it was after {MAX_INCOMPLETE_ATTEMPTS})")


async def test_control_without_the_quota_it_is_downloaded_once(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    device, sealed, counts = await _passes(tmp_path, stream, monkeypatch, quota=None)
    assert device.ended == [EndReason.CLOSED] and device.received == [size] and sealed == 2
    assert counts == [(size, size)]
