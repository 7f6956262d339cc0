"""A raw PS write refused for want of space ends the transfer `disk-full` at once, whatever the disk shows
after it, with the free space read right after the refusal (review 30) and what fitted kept as a prefix of
the stream. Review 30 tried a refusal with room showing once more; review 33 removed that (a retry could hide
bytes an NFS client lost at writeback, and its pause overflowed fast UDP downloads): a refusal the disk takes
back at once (a neighbour refused too) ends the copy all the same, and the recording is had at a later pass.

Real ffmpeg-made H.264 muxed into PS, sent as RTP over a real TCP connection; the disk is the receiver's
`_write_all` seam (write(2) takes what fits, then fails ENOSPC) and its `_free_bytes_of` / `_free_bytes_in`
seams (statvfs of the file and of its directory)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
from drivers.gb28181.ps import Codec
from edge.gb28181.media import FLUSH_BYTES, EndReason, MediaOutcome, MediaTransport, receiver_keeping_free
from tests.gb28181.media_sender import HAVE_FFMPEG, make_source, ps_packs, rtp_packets, send_tcp
from tests.prerequisites import require

SSRC = 1100000431
PORTS = (37000, 37999)
ROOMY = 1 << 40  # what statvfs shows while the disk has room


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[bytes]]:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    packs = ps_packs(make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=10, bitrate="4M")) * 10
    ps = b"".join(p for p, _ in packs)
    assert len(ps) > 8 * FLUSH_BYTES, "the stream must outlast many writes"
    return ps, rtp_packets(packs, ssrc=SSRC)


class RefusingDisk:
    """Writes go through until `room` bytes were written; the write that passes it takes what fits and is
    refused ENOSPC. `freed`: the room comes back at once (the neighbour that filled it was refused too and
    removed); else every later write is refused as well. `shows_full`: statvfs shows the disk full once it
    refused (a disk really full), else room (the neighbour gone, or a quota statvfs does not see)."""

    def __init__(self, room: int, *, freed: bool, shows_full: bool) -> None:
        self.room, self.freed, self.shows_full = room, freed, shows_full
        self.refusals = 0
        self.real_write_all = media_module._write_all

    def write_all(self, fd: int, data: bytes | bytearray) -> None:
        fits = min(len(data), max(0, self.room))
        self.real_write_all(fd, bytes(data[:fits]))
        self.room -= fits
        if fits < len(data):
            self.refusals += 1
            if self.freed:
                self.room = 1 << 40
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def free_bytes_of(self, _fd: int) -> int:
        return 0 if self.shows_full and self.refusals else ROOMY


async def _receive(tmp_path: Path, packets: list[bytes], disk: RefusingDisk,
                   monkeypatch: pytest.MonkeyPatch) -> tuple[MediaOutcome, bytes]:
    monkeypatch.setattr(media_module, "_write_all", disk.write_all)
    monkeypatch.setattr(media_module, "_free_bytes_of", disk.free_bytes_of)
    monkeypatch.setattr(media_module, "_free_bytes_in", lambda _directory: disk.free_bytes_of(-1))
    receiver = await receiver_keeping_free(1)(
        MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
        raw_path=tmp_path / "rec.ps", idle_timeout_s=60.0, max_bytes=1 << 30, expected_peer_host=None,
        max_media_span_s=None, time_limit_s=None, progress_window_s=None, min_progress_s=None,
        max_buffered_bytes=2 * FLUSH_BYTES)
    await send_tcp(packets, receiver.local_port)
    outcome = await receiver.wait_closed()
    return outcome, (tmp_path / "rec.ps").read_bytes()


@pytest.mark.parametrize(("freed", "shows_full", "free_shown"), [
    (True, False, ROOMY),  # a neighbour refused by the same full disk gives its room back at once
    (False, False, ROOMY),  # a quota statvfs does not see: refuses every write
    (False, True, 0),  # a disk really full
])
async def test_a_refused_write_ends_the_copy_disk_full_at_once_with_what_fitted(
        tmp_path: Path, stream: tuple[bytes, list[bytes]], monkeypatch: pytest.MonkeyPatch, freed: bool,
        shows_full: bool, free_shown: int) -> None:
    ps, packets = stream
    disk = RefusingDisk(3 * FLUSH_BYTES + 1000, freed=freed, shows_full=shows_full)  # refused mid-write
    outcome, raw = await _receive(tmp_path, packets, disk, monkeypatch)
    assert disk.refusals == 1, "the fault as modelled: one write refused ENOSPC, never tried again"
    assert outcome.ended is EndReason.DISK_FULL, (outcome.ended, outcome.detail)
    assert (outcome.write_refused, outcome.write_refused_free_bytes) == ("ENOSPC", free_shown)
    assert len(raw) == outcome.bytes_written == 3 * FLUSH_BYTES + 1000 and ps.startswith(raw), \
        "what fitted is kept, a prefix of the stream"
    assert outcome.bytes > len(raw), "the copy says it holds less than came"


async def test_control_a_disk_with_room_for_it_all_takes_the_stream_whole(
        tmp_path: Path, stream: tuple[bytes, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    ps, packets = stream
    disk = RefusingDisk(2 * len(ps), freed=False, shows_full=True)
    outcome, raw = await _receive(tmp_path, packets, disk, monkeypatch)
    assert disk.refusals == 0 and outcome.ended is EndReason.CLOSED, (outcome.ended, outcome.detail)
    assert raw == ps and outcome.bytes_written == outcome.bytes == len(ps)
    assert (outcome.write_refused, outcome.write_refused_free_bytes) == (None, None)
