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
pipeline, ffmpeg and store (tests/gb28181/disk_rig.py). The disk is one model behind the seams that read
it: a level, less what the spool's files hold, less what a neighbour holds while a retry runs (gone,
offloaded, by the next pass). Control: the same passes without the neighbour, the first retry receives
the recording whole."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge.gb28181.media import FLUSH_BYTES, EndReason
from edge.sources.gb28181 import RecordingRef
from edge.sources.gb28181.downloads import MAX_INTERRUPTED_ATTEMPTS, ROOM_PER_BYTE_DOWNLOADED
from tests.gb28181.disk_rig import RESERVE, HonestDevice, ModelDisk, long_stream, new_spool, station_downloads
from tests.gb28181.test_review24_disk_full_give_up import RECORDING

SSRC = 1100000429
PORTS = (34000, 34999)
BUSY_PASSES = MAX_INTERRUPTED_ATTEMPTS  # retries while a neighbour fills the disk (the first cut is free)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[bytes]]:
    return long_stream(tmp_path_factory.mktemp("src"), SSRC)


class BusyDevice(HonestDevice):
    """The honest device; while it streams, the neighbour holds `busy` bytes of the disk."""

    def __init__(self, packets: list[bytes], disk: ModelDisk) -> None:
        super().__init__(packets, ssrc=SSRC, ports=PORTS, max_buffered_bytes=2 * FLUSH_BYTES)
        self.disk, self.busy = disk, 0

    def session_started(self) -> None:
        self.disk.neighbour = self.busy  # a camera docks as the retry begins (after `_tight_for` looked)

    def session_ended(self) -> None:
        self.disk.neighbour = 0  # sealed and offloaded before the next pass


async def _passes(tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
                  neighbour: int) -> tuple[HonestDevice, list[RecordingRef]]:
    """One pass on a disk with room for half the recording (the guard cuts it); BUSY_PASSES passes with
    room for the whole recording as `_tight_for` reckons it, a neighbour holding `neighbour` bytes while
    each runs; then one pass with the same room and no neighbour. Returns the device and what the last
    pass gave up."""
    size, packets = stream
    spool = new_spool(tmp_path)
    disk = ModelDisk(spool, RESERVE + 2 * size)
    disk.install(monkeypatch)
    recording = replace(RECORDING, file_size_bytes=size)  # honest: the stream's size
    device = BusyDevice(packets, disk)
    async with station_downloads(tmp_path, spool, device.start_download) as downloads:
        await downloads.download([recording])
        assert device.ended == [EndReason.DISK_FULL] and device.received[0] < size
        disk.level = RESERVE + ROOM_PER_BYTE_DOWNLOADED * size + 2 * FLUSH_BYTES  # `_tight_for`'s room
        device.busy = neighbour
        for _ in range(BUSY_PASSES):
            await downloads.download([recording])
        device.busy = 0
        last = await downloads.download([recording])
    return device, last.given_up


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
