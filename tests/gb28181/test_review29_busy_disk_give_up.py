"""Review 29: since review 28 a `disk-full` copy that got no further than an earlier disk-full copy of the
same recording counts toward MAX_INTERRUPTED_ATTEMPTS (`stuck_disk_full`), to end a quota's loop. But the
receiver's own free-space guard (edge.gb28181.media `_flushed`, statvfs) ends `disk-full` too, and how far
its cut gets depends on what *else* the disk takes while the retry runs: the station's scheduler runs two
devices' downloads at once (`concurrency` 2), and a body camera docking offloads gigabytes into the store
on the same disk. `_tight_for` lets a retry start once statvfs shows room for the whole recording; if a
neighbour's bytes land during the retry, the guard cuts it short of the furthest try so far (a high-water
mark: one early try on a roomier disk sets it), and after MAX_INTERRUPTED_ATTEMPTS such passes the recording
is given up for good ("the station's disk refusing it again no further than before (a quota ...)"),
never downloaded again even once the disk is roomy. The device is honest; no quota exists; the recording
could be had at any pass the neighbour was idle.

Real media receiver with its guard (`receiver_keeping_free`), RTP over a real TCP connection, real
pipeline, ffmpeg and store. The disk is one model behind both seams that read it (the receiver's
`_write_and_measure` after its real write, the downloads' `free_bytes`): a level, less what the spool's
files hold, less what a neighbour holds while a retry runs (gone, offloaded, by the next pass). Control:
the same passes without the neighbour, the first retry receives the recording whole."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
import edge.sources.gb28181.downloads as downloads_module
from drivers.gb28181.ps import Codec
from edge.gb28181.media import FLUSH_BYTES, EndReason, MediaTransport, receiver_keeping_free
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef, Transfer
from edge.sources.gb28181.downloads import MAX_INTERRUPTED_ATTEMPTS, ROOM_PER_BYTE_DOWNLOADED
from edge.sources.gb28181.recordings import INTERRUPTED_DISK_FULL
from tests.gb28181.media_sender import HAVE_FFMPEG, make_source, ps_packs, rtp_packets, send_tcp
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_source_downloads import CASE, DEVICE
from tests.prerequisites import require

SSRC = 1100000429
PORTS = (34000, 34999)
RESERVE = 1 << 20  # the store's [offload] min_free_bytes, which the receiver's guard keeps too
BUSY_PASSES = MAX_INTERRUPTED_ATTEMPTS  # retries while a neighbour fills the disk (the first cut is free)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[bytes]]:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    packs = ps_packs(make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=100, bitrate="4M"))
    size = sum(len(p) for p, _ in packs)
    assert size > 16 * FLUSH_BYTES, "the stream must outlast many of the guard's looks at the disk"
    return size, rtp_packets(packs, ssrc=SSRC)


class BusyDisk:
    """The spool's disk: `level` bytes free with the spool empty, less what the spool's files hold, less
    what a neighbour (another device's download, a docked camera's offload) holds now."""

    def __init__(self, spool: Path, level: int) -> None:
        self.spool, self.level, self.neighbour = spool, level, 0

    def free(self) -> int:
        held = sum(entry.stat(follow_symlinks=False).st_size for entry in os.scandir(self.spool))
        return self.level - held - self.neighbour


class HonestDevice:
    """Streams the whole recording over TCP into the receiver (with the guard); while it does, the
    neighbour holds `busy` bytes of the disk. The facts as the scheduler makes them (`_interruption`)."""

    def __init__(self, packets: list[bytes], disk: BusyDisk) -> None:
        self.packets, self.disk = packets, disk
        self.busy = 0
        self.received: list[int] = []
        self.ended: list[EndReason] = []

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        receiver = await receiver_keeping_free(RESERVE)(
            MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC, raw_path=raw_path,
            idle_timeout_s=60.0, max_bytes=1 << 30, expected_peer_host=None, max_media_span_s=None,
            time_limit_s=None, progress_window_s=None, min_progress_s=None,
            # TCP reading pauses past this (the least allowed): the guard's cut lands within a few flushes of
            # its look on a loaded machine, so how far each try got is the disk's doing, not the scheduler's
            max_buffered_bytes=2 * FLUSH_BYTES)
        self.disk.neighbour = self.busy  # a camera docks as the retry begins (after `_tight_for` looked)
        try:
            with contextlib.suppress(ConnectionError):  # the receiver closes the connection when it stops
                await send_tcp(self.packets, receiver.local_port)
            outcome = await receiver.wait_closed()
        finally:
            self.disk.neighbour = 0  # sealed and offloaded before the next pass
        self.received.append(outcome.bytes)
        self.ended.append(outcome.ended)
        facts: dict[str, object] = {"call_id": f"{len(self.received)}@station", "ssrc_offered": SSRC}
        if outcome.ended is EndReason.DISK_FULL:
            facts.update(complete=False, interrupted=INTERRUPTED_DISK_FULL,
                         incomplete="the station's disk ran low during the download (the store's reserve)")
        else:
            facts.update(complete=True)
        return Transfer(outcome, facts)


async def _passes(tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
                  neighbour: int) -> tuple[HonestDevice, list[RecordingRef]]:
    """One pass on a disk with room for half the recording (the guard cuts it); BUSY_PASSES passes with
    room for the whole recording as `_tight_for` reckons it, a neighbour holding `neighbour` bytes while
    each runs; then one pass with the same room and no neighbour. Returns the device and what the last
    pass gave up."""
    size, packets = stream
    spool = tmp_path / "spool"
    spool.mkdir()
    disk = BusyDisk(spool, RESERVE + 2 * size)
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
        device = HonestDevice(packets, disk)
        downloads = GbDownloads(pipeline, source, device.start_download)
        await downloads.download([recording])
        assert device.ended == [EndReason.DISK_FULL] and device.received[0] < size
        disk.level = RESERVE + ROOM_PER_BYTE_DOWNLOADED * size + 2 * FLUSH_BYTES  # `_tight_for`'s room
        device.busy = neighbour
        for _ in range(BUSY_PASSES):
            await downloads.download([recording])
        device.busy = 0
        last = await downloads.download([recording])
        return device, last.given_up
    finally:
        store.close()


async def test_a_busy_disk_does_not_give_up_a_recording_that_could_be_had(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    device, given_up = await _passes(tmp_path, stream, monkeypatch, neighbour=7 * size // 2)
    first, busy = device.received[0], device.received[1:1 + BUSY_PASSES]
    # the fault as modelled: every busy retry was cut by the guard, short of the first cut
    assert device.ended[1:1 + BUSY_PASSES] == [EndReason.DISK_FULL] * BUSY_PASSES, device.ended
    assert busy and max(busy) < first, (first, busy)
    assert given_up == [] and device.received[-1] == size, (
        f"an honest device's recording of {size} bytes was cut by the station's own free-space guard at "
        f"{first} bytes, then at {busy} while a neighbour (another device's download, a docked camera) "
        f"took the disk during each retry: after {BUSY_PASSES} such passes it was given up for good "
        f"({len(given_up)} given up at the last pass, with the disk roomy and idle; tries: "
        f"{device.received}), as if a quota refused it: no quota exists, the recording could be had")


async def test_control_without_the_neighbour_the_first_retry_receives_it_whole(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    device, given_up = await _passes(tmp_path, stream, monkeypatch, neighbour=0)
    assert device.ended[1] is EndReason.CLOSED and device.received[1] == size, device.ended
    assert given_up == [], given_up
