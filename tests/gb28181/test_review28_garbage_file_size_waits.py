"""Review 28: a recording the receiver's free-space guard cut short (`disk-full`) is tried again only once
the spool's disk has the store's reserve plus ROOM_PER_RECEIVED_BYTE x its listed FileSize free
(`GbDownloads._tight_for`). A FileSize no disk can hold (an uninitialised 64-bit field, 2**64 - 1: review
22's field problem) makes that never: the recording, of which a cut-short prefix is sealed, is never asked
for again however much room the store makes, never given up either (no `given-up` entry): the ledger says
every six hours it waits "until there is room". Yet the receiver never takes more than the station's
`max_recording_mb` (8 GiB by default) of any download, whatever the device listed: room for that is room
for any try.

Real media receiver with its guard, RTP over a real TCP connection, real pipeline, ffmpeg and store; the
spool's disk is the model of test_review28_tight_retry_cut_again (free space set per pass, less what the
spool holds). Control: the same recording listed with its true FileSize is asked for again once there is
room, and downloaded whole."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
import edge.sources.gb28181.downloads as downloads_module
from edge.gb28181.media import EndReason
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_review28_tight_retry_cut_again import RESERVE, HonestDevice, SpoolDisk, stream
from tests.gb28181.test_source_downloads import CASE, DEVICE

__all__ = ["stream"]  # the module fixture, shared

UNINITIALISED = 2**64 - 1
ROOMY = 1 << 50  # a PiB free: room for anything the receiver takes (the station's max_recording_mb)
PASSES_WITH_ROOM = 3


async def _tries(tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
                 listed: int) -> HonestDevice:
    """One pass cut short by the guard (the disk has room for half the recording), then
    PASSES_WITH_ROOM passes with a PiB free."""
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
    recording = replace(RECORDING, file_size_bytes=listed)
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE))
        device = HonestDevice(packets)
        downloads = GbDownloads(pipeline, source, device.start_download)
        await downloads.download([recording])
        assert device.ended == [EndReason.DISK_FULL]
        disk.level = ROOMY
        for _ in range(PASSES_WITH_ROOM):
            report = await downloads.download([recording])
            assert report.given_up == []
        return device
    finally:
        store.close()


async def test_a_garbage_file_size_does_not_keep_a_cut_short_recording_from_ever_being_asked_again(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    device = await _tries(tmp_path, stream, monkeypatch, UNINITIALISED)
    assert device.ended[1:2] == [EndReason.CLOSED], (
        f"listed with FileSize {UNINITIALISED} (a {size}-byte recording), cut short once by the disk guard "
        f"({device.received[0]} bytes sealed), then {PASSES_WITH_ROOM} passes with {ROOMY} bytes free: it "
        f"was asked for again {len(device.ended) - 1} time(s); the rest is never downloaded, never given up")


async def test_control_with_its_true_file_size_it_is_asked_again_once_there_is_room(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    device = await _tries(tmp_path, stream, monkeypatch, size)
    assert device.ended == [EndReason.DISK_FULL, EndReason.CLOSED] and device.received[1] == size
