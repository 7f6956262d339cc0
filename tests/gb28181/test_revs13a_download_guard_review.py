"""Review revs13a of e4cfe45 (a GB/T 28181 download's free-space guard counts the store's bookings).

1. A booking its own check refuses still cuts the download. A docking copy books its file's listed size
   (the recorder volume's st_size: the device's word) before its check, in its coroutine, and the check runs
   when the executor gets to it (edge.ingest.pipeline `_copy_in_worker`); a size the disk cannot hold is
   refused and released, nothing written. The receiver counts every booking, also those made after the
   download began (kept_space's rule that "a later writer, even one refused, never ends it" holds for
   booking writers only): a hostile or broken recorder whose listing claims a file larger than the disk
   has free cuts every download in flight when it docks (or re-enumerates), each cut sealing one more
   partial copy that counts toward no give-up (review 29).
2. `[offload] min_free_bytes = 0` had no guard; the station's receiver is now always guarded, with
   ROOM_PER_RECEIVED_BYTE (3) x what came. A small disk with room for the raw PS and its copy into the store
   used to receive the recording whole (the whole raw PS sealed); now the download is cut at a quarter of
   the disk, and `_tight_for` then waits, every pass, for 4 x the recording that disk never has: the
   recording is never had whole ("never given up for waiting").

Real media receiver (TCP), pipeline, store and ffmpeg (tests/gb28181/disk_rig.py: the spool's disk is a
model behind the seams that read it). Controls: the same download with the refused booking gone before the
media comes, and the small disk wired as the station was before e4cfe45, are received whole."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.gb28181.disk_rig as disk_rig
from edge.gb28181.media import FLUSH_BYTES, EndReason
from edge.ingest.kept_space import COPY_BOOKING, Booking, KeptSpace
from edge.sources.gb28181 import RecordingRef, Transfer
from tests.gb28181.disk_rig import HonestDevice, ModelDisk, long_stream, new_spool, station_downloads
from tests.gb28181.test_review24_disk_full_give_up import RECORDING

SSRC = 1100000713
PORTS = (39600, 39699)
HOSTILE = "usb 1-1.4:DCIM/100MEDIA/HUGE.MP4"
# Its size as the recorder's volume lists it: under [offload] max_file_bytes (256 GiB), so the offload
# offers it and its copy books it; more than this disk has free, so its check refuses it.
CLAIMED = 255 << 30


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[bytes]]:
    return long_stream(tmp_path_factory.mktemp("src"), SSRC)


class RefusedMeanwhile(ModelDisk):
    """The disk, and a docking copy of a file listed larger than the disk has free: booked as the
    download's receiver opens (its coroutine books before its check), refused by its check, which the
    executor runs with the receiver's first write (the booking released then: nothing of it is written)."""

    def __init__(self, spool: Path, level: int, kept_space: KeptSpace) -> None:
        super().__init__(spool, level)
        self.kept_space = kept_space
        self.booking: Booking | None = None
        self.refused_check: list[bool] = []

    def dock(self) -> None:
        self.booking = self.kept_space.book(COPY_BOOKING, HOSTILE, CLAIMED)

    def write_and_measure(self, fd: int, data: bytes | bytearray) -> int:
        if self.booking is not None:
            # The docking copy's check (edge.ingest.pipeline `check_and_copy`): needs more than is free.
            self.refused_check.append(self.free() - CLAIMED < disk_rig.RESERVE)
            self.kept_space.release(self.booking)
            self.booking = None
        return super().write_and_measure(fd, data)


@pytest.mark.parametrize("refused_before_media", [False, True], ids=["refused-meanwhile", "control-before"])
async def test_a_booking_its_own_check_refuses_does_not_cut_a_download(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
        refused_before_media: bool) -> None:
    size, packets = stream
    spool = new_spool(tmp_path)
    level = disk_rig.RESERVE + 5 * size + 2 * FLUSH_BYTES  # room for the download alone, and more

    async def start(ref: RecordingRef, raw: Path) -> Transfer:
        return await device.start_download(ref, raw)

    async with station_downloads(tmp_path, spool, start) as downloads:
        kept_space = downloads.pipeline.kept_space
        disk = RefusedMeanwhile(spool, level, kept_space)
        disk.install(monkeypatch)
        device = HonestDevice(packets, ssrc=SSRC, ports=PORTS, idle_timeout_s=30.0,
                              kept_free=kept_space.held_or_booked)
        monkeypatch.setattr(device, "session_started", disk.dock)
        if refused_before_media:
            monkeypatch.setattr(device, "session_started", lambda: kept_space.release(
                kept_space.book(COPY_BOOKING, HOSTILE, CLAIMED)))
        await downloads.download([RECORDING])
    assert disk.refused_check in ([True], []), "the docking copy's own check refuses the file"
    assert device.ended == [EndReason.CLOSED] and device.received == [size], \
        f"a booking never written cut the download: {device.ended} after {device.received} of {size} bytes"


@pytest.mark.parametrize("wired", ["station-now", "control-before-e4cfe45"])
async def test_a_station_keeping_no_reserve_still_downloads_what_its_disk_holds(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
        wired: str) -> None:
    """`[offload] min_free_bytes = 0`, nothing held or booked; the disk holds the raw PS and its copy into
    the store (2 x the recording), not 4 x. Within three passes the recording is had whole."""
    size, packets = stream
    monkeypatch.setattr(disk_rig, "RESERVE", 0)  # the store's reserve and the receiver's min_free_bytes
    spool = new_spool(tmp_path)
    ModelDisk(spool, 2 * size + 4 * FLUSH_BYTES).install(monkeypatch)

    async def start(ref: RecordingRef, raw: Path) -> Transfer:
        return await device.start_download(ref, raw)

    async with station_downloads(tmp_path, spool, start) as downloads:
        assert downloads.pipeline.settings.min_free_bytes == 0
        # The station passes KeptSpace.held_or_booked since e4cfe45 (before it: the guard off at 0).
        kept_free = downloads.pipeline.kept_space.held_or_booked if wired == "station-now" else None
        device = HonestDevice(packets, ssrc=SSRC, ports=PORTS, idle_timeout_s=30.0, kept_free=kept_free)
        waiting = []
        for _ in range(3):
            report = await downloads.download([RECORDING])
            waiting.append(report.waiting_for_room)
            if size in device.received:
                break
    assert size in device.received, (f"never had whole on a disk holding 2 x it: {device.ended}, received "
                                     f"{device.received} of {size}; waiting for room at passes: {waiting}")
