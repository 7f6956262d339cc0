"""Review 28: a recording the receiver's free-space guard cut short (`disk-full`) is tried again by
`GbDownloads._tight_for` once the spool's disk has the store's reserve plus ROOM_PER_RECEIVED_BYTE (3)
times the recording's size free. But the guard (edge.gb28181.media `_flushed`) measures the disk *after*
the raw PS's own bytes are written there: it stops once the free space falls below the reserve plus 3 x
what came, so a transfer starting with F bytes free stops at about (F - reserve) / 4. A retry that
`_tight_for` allows with room for 3 x the recording (and less than 4 x) is certain to be cut short again,
at about three quarters of the recording: one more partial copy (raw PS and MP4) sealed into the tight
store, never counted toward a give-up; with the disk at that level (the store's offload freeing what each
copy took), at every pass, for ever. The device here is honest: its FileSize is the stream's size.

Real media receiver with its guard (`receiver_keeping_free`), RTP over a real TCP connection, real
pipeline, ffmpeg and store. The spool's disk is one model behind both seams that read it (the receiver's
`_write_and_measure` after its real write, the downloads' `free_bytes`): its free space is a level set
per pass less what the spool's files hold now. Control: with room for 4 x the recording, the retry
receives it whole."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
import edge.sources.gb28181.downloads as downloads_module
from drivers.gb28181.ps import Codec
from edge.gb28181.media import (
    FLUSH_BYTES,
    ROOM_PER_RECEIVED_BYTE,
    EndReason,
    MediaTransport,
    receiver_keeping_free,
)
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef, Transfer
from edge.sources.gb28181.recordings import INTERRUPTED_DISK_FULL
from tests.gb28181.media_sender import HAVE_FFMPEG, make_source, ps_packs, rtp_packets, send_tcp
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_source_downloads import CASE, DEVICE
from tests.prerequisites import require

SSRC = 1100000428
PORTS = (34000, 34999)
RESERVE = 1 << 20  # the store's [offload] min_free_bytes, which the receiver's guard keeps too
RETRY_PASSES = 3


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[bytes]]:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    packs = ps_packs(make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=100, bitrate="4M"))
    size = sum(len(p) for p, _ in packs)
    assert size > 16 * FLUSH_BYTES, "the stream must outlast many of the guard's looks at the disk"
    return size, rtp_packets(packs, ssrc=SSRC)


class SpoolDisk:
    """The spool's disk: `level` bytes free with the spool empty, less what the spool's files hold."""

    def __init__(self, spool: Path, level: int) -> None:
        self.spool, self.level = spool, level

    def free(self) -> int:
        held = sum(entry.stat(follow_symlinks=False).st_size for entry in os.scandir(self.spool))
        return self.level - held


class HonestDevice:
    """Streams the whole recording over TCP into the receiver the session opened (with the guard); the
    transfer's facts as the scheduler makes them for a transfer the guard ended (`_interruption`)."""

    def __init__(self, packets: list[bytes]) -> None:
        self.packets = packets
        self.received: list[int] = []
        self.ended: list[EndReason] = []

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        receiver = await receiver_keeping_free(RESERVE)(
            MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC, raw_path=raw_path,
            idle_timeout_s=30.0, max_bytes=1 << 30, expected_peer_host=None, max_media_span_s=None,
            time_limit_s=None, progress_window_s=None, min_progress_s=None)
        with contextlib.suppress(ConnectionError):  # the receiver closes the connection when it stops
            await send_tcp(self.packets, receiver.local_port)
        outcome = await receiver.wait_closed()
        self.received.append(outcome.bytes)
        self.ended.append(outcome.ended)
        facts: dict[str, object] = {"call_id": f"{len(self.received)}@station", "ssrc_offered": SSRC}
        if outcome.ended is EndReason.DISK_FULL:
            facts.update(complete=False, interrupted=INTERRUPTED_DISK_FULL,
                         incomplete="the station's disk ran low during the download (the store's reserve)")
        else:
            facts.update(complete=True)
        return Transfer(outcome, facts)


async def _retries(tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
                   retry_level: int) -> HonestDevice:
    """One pass on a disk with room for half the recording (the guard cuts it), then RETRY_PASSES passes
    with the disk at `retry_level`. Returns the device (what each try received and how it ended)."""
    size, packets = stream
    spool = tmp_path / "spool"
    spool.mkdir()
    disk = SpoolDisk(spool, RESERVE + 2 * size)
    real_write_all = media_module._write_all

    def write_and_measure(fd: int, data: bytes | bytearray) -> int:
        real_write_all(fd, data)
        return disk.free()

    monkeypatch.setattr(media_module, "_write_and_measure", write_and_measure)
    monkeypatch.setattr(downloads_module, "free_bytes", lambda _path: disk.free())
    recording = replace(RECORDING, file_size_bytes=size)  # honest: the stream's size
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE))
        device = HonestDevice(packets)
        downloads = GbDownloads(pipeline, source, device.start_download)
        await downloads.download([recording])
        assert device.ended == [EndReason.DISK_FULL] and device.received[0] < size
        disk.level = retry_level
        for _ in range(RETRY_PASSES):
            await downloads.download([recording])
        return device
    finally:
        store.close()


async def test_a_retry_the_disk_cannot_hold_is_not_made(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    level = RESERVE + ROOM_PER_RECEIVED_BYTE * size + 1  # what _tight_for asks for: 3 x the listed size
    device = await _retries(tmp_path, stream, monkeypatch, level)
    retries = device.received[1:]
    assert retries == [], (
        f"with {level} bytes free (the reserve {RESERVE} plus {ROOM_PER_RECEIVED_BYTE} x the recording's "
        f"honest FileSize {size}: less than the raw PS itself plus the guard's {ROOM_PER_RECEIVED_BYTE} x), "
        f"the recording was tried again {len(retries)} time(s) in {RETRY_PASSES} passes; each was cut short "
        f"by the guard again ({[e.value for e in device.ended[1:]]}) at {retries} bytes of {size}: one more "
        "partial copy (raw PS and MP4) sealed at each pass, never given up")


async def test_control_with_room_for_the_raw_ps_too_the_retry_receives_it_whole(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    level = RESERVE + (ROOM_PER_RECEIVED_BYTE + 1) * size + 2 * FLUSH_BYTES
    device = await _retries(tmp_path, stream, monkeypatch, level)
    assert device.ended[1:] == [EndReason.CLOSED] and device.received[1] == size, device.ended
