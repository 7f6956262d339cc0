"""Review 28: a recording the receiver's free-space guard cut short (`disk-full`) is tried again only once
the spool's disk has the store's reserve plus ROOM_PER_RECEIVED_BYTE x its listed FileSize free
(`GbDownloads._tight_for`). A FileSize no disk can hold (an uninitialised 64-bit field, 2**64 - 1: review
22's field problem) makes that never: the recording, of which a cut-short prefix is sealed, is never asked
for again however much room the store makes, never given up either (no `given-up` entry): the ledger says
every six hours it waits "until there is room". Yet the receiver never takes more than the station's
`max_recording_mb` (8 GiB by default) of any download, whatever the device listed: room for that is room
for any try.

Real media receiver with its guard, RTP over a real TCP connection, real pipeline, ffmpeg and store; the
spool's disk is the model of tests/gb28181/disk_rig.py (free space set per pass, less what the spool
holds). Control: the same recording listed with its true FileSize is asked for again once there is
room, and downloaded whole."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge.gb28181.media import EndReason
from tests.gb28181.disk_rig import RESERVE, HonestDevice, ModelDisk, new_spool, station_downloads
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_review28_tight_retry_cut_again import honest_device, stream

__all__ = ["stream"]  # the module fixture, shared

UNINITIALISED = 2**64 - 1
ROOMY = 1 << 50  # a PiB free: room for anything the receiver takes (the station's max_recording_mb)
PASSES_WITH_ROOM = 3


async def _tries(tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
                 listed: int) -> HonestDevice:
    """One pass cut short by the guard (the disk has room for half the recording), then
    PASSES_WITH_ROOM passes with a PiB free."""
    size, packets = stream
    spool = new_spool(tmp_path)
    disk = ModelDisk(spool, RESERVE + 2 * size)
    disk.install(monkeypatch)
    recording = replace(RECORDING, file_size_bytes=listed)
    device = honest_device(packets)
    async with station_downloads(tmp_path, spool, device.start_download) as downloads:
        await downloads.download([recording])
        assert device.ended == [EndReason.DISK_FULL]
        disk.level = ROOMY
        for _ in range(PASSES_WITH_ROOM):
            report = await downloads.download([recording])
            assert report.given_up == []
    return device


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
