"""Review 28: when the receiver's free-space guard ends a download (`disk-full`: the disk would no longer
hold the store's reserve plus room to seal what came), the pass goes on to the device's next recording
on that same tight disk. The guard has just kept the reserve plus 3 x what came; sealing the cut copy
takes about 2 x of it (raw PS and MP4 copied into the store, on the spool's disk), so the next recording
starts with about half the room and is cut short too, at about half as much, and so on: one pass seals
a partial copy (raw PS and MP4) of recording after recording, each of which then waits for room and is
downloaded again whole. `_ensure_room` does not stop it (the guard keeps the reserve); README: "so no
partial copies pile up in the tight store". A recording cut short by the station's disk says the disk
is tight for the next one as well: the rest of the pass should wait, as it does when the store refuses a
copy (`StoreBelowReserve`).

Real media receiver with its guard, RTP over a real TCP connection, real pipeline, ffmpeg and store. The
disk is the model of tests/gb28181/disk_rig.py behind the seams that read it: a fixed size less what the
spool and the store's items hold, as in production where the spool is in the store's root. Control: with
room for the listing, every recording is downloaded whole and none is cut."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge.gb28181.media import ROOM_PER_RECEIVED_BYTE, EndReason
from edge.sources.gb28181 import RecordingRef
from tests.gb28181.disk_rig import RESERVE, HonestDevice, ModelDisk, station_downloads
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_review28_tight_retry_cut_again import honest_device, stream

__all__ = ["stream"]  # the module fixture, shared

LISTED = 6


def _listing(size: int) -> list[RecordingRef]:
    return [replace(RECORDING, start_time=f"2026-01-01T08:0{n}:00", end_time=f"2026-01-01T08:0{n}:03",
                    file_path=f"/sd/DCIM/20260101080{n}00.mp4", file_size_bytes=size) for n in range(LISTED)]


async def _one_pass(tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
                    disk_size: int) -> HonestDevice:
    size, packets = stream
    spool = tmp_path / "store" / "gb28181-spool"
    device = honest_device(packets)
    disk = ModelDisk(spool, disk_size)
    disk.install(monkeypatch)
    async with station_downloads(tmp_path, spool, device.start_download) as downloads:
        spool.mkdir()
        disk.also_held.append(downloads.pipeline.store.layout.root / "items")
        await downloads.download(_listing(size))
    return device


async def test_after_a_download_cut_short_by_the_disk_the_pass_does_not_cut_the_next_ones_too(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    device = await _one_pass(tmp_path, stream, monkeypatch, RESERVE + 2 * size)
    cut = [received for received, ended in zip(device.received, device.ended, strict=True)
           if ended is EndReason.DISK_FULL]
    assert cut and device.ended[0] is EndReason.DISK_FULL
    assert len(cut) == 1, (
        f"one pass over {LISTED} recordings of {size} bytes on a disk with room for half of one: after the "
        f"first was cut short by the guard, {len(cut) - 1} more were started on the same tight disk and cut "
        f"too, each a partial copy sealed ({cut} bytes received), each to be downloaded again whole")


async def test_control_with_room_for_the_listing_none_is_cut(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    room = RESERVE + (ROOM_PER_RECEIVED_BYTE + 1) * size + 3 * LISTED * size
    device = await _one_pass(tmp_path, stream, monkeypatch, room)
    assert device.ended == [EndReason.CLOSED] * LISTED and device.received == [size] * LISTED
