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
pipeline, ffmpeg and store (tests/gb28181/disk_rig.py). The spool's disk is one model behind the seams that
read it: its free space is a level set per pass less what the spool's files hold now. Control: with room
for 4 x the recording, the retry receives it whole."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge.gb28181.media import FLUSH_BYTES, ROOM_PER_RECEIVED_BYTE, EndReason
from tests.gb28181.disk_rig import RESERVE, HonestDevice, ModelDisk, long_stream, new_spool, station_downloads
from tests.gb28181.test_review24_disk_full_give_up import RECORDING

SSRC = 1100000428
PORTS = (34000, 34999)
RETRY_PASSES = 3


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[bytes]]:
    return long_stream(tmp_path_factory.mktemp("src"), SSRC)


def honest_device(packets: list[bytes]) -> HonestDevice:
    """The device of the review 28 tests: this module's SSRC and ports, the receiver's default buffer."""
    return HonestDevice(packets, ssrc=SSRC, ports=PORTS, idle_timeout_s=30.0)


async def _retries(tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
                   retry_level: int) -> HonestDevice:
    """One pass on a disk with room for half the recording (the guard cuts it), then RETRY_PASSES passes
    with the disk at `retry_level`. Returns the device (what each try received and how it ended)."""
    size, packets = stream
    spool = new_spool(tmp_path)
    disk = ModelDisk(spool, RESERVE + 2 * size)
    disk.install(monkeypatch)
    recording = replace(RECORDING, file_size_bytes=size)  # honest: the stream's size
    device = honest_device(packets)
    async with station_downloads(tmp_path, spool, device.start_download) as downloads:
        await downloads.download([recording])
        assert device.ended == [EndReason.DISK_FULL] and device.received[0] < size
        disk.level = retry_level
        for _ in range(RETRY_PASSES):
            await downloads.download([recording])
    return device


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
