"""Review 24: a download the receiver's free-space guard ends (`disk-full`, review 22) is counted as
interrupted, "no fault of the recording" -- but `given_up_because` counts every interrupted download
alike, so after `MAX_INTERRUPTED_ATTEMPTS` passes on a station whose disk is tight (a recording larger
than a third of the room above the store's reserve ends `disk-full` every time) the recording is given up
for good ("cut short by the device going offline or the station stopping", which is not what happened),
and is not downloaded once room is made. Each of those passes also sealed a partial copy (raw PS and MP4)
of it into the same tight store.

Real receiver, RTP over UDP, pipeline and store; the transfers' facts are the scheduler's for a download
its guard ended (`complete` false, `interrupted` disk-full). Control: one interruption fewer, the
recording is downloaded once there is room."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef
from edge.sources.gb28181.downloads import MAX_INTERRUPTED_ATTEMPTS, Transfer
from edge.sources.gb28181.recordings import INTERRUPTED_DISK_FULL
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_source_downloads import CASE, CHANNEL, DEVICE, Device
from tests.prerequisites import require

RECORDING = RecordingRef(device_id=DEVICE, channel_id=CHANNEL, name="执法记录",
                         file_path="/sd/DCIM/20260101080000.mp4", start_time="2026-01-01T08:00:00",
                         end_time="2026-01-01T08:00:03", record_type="time", file_size_bytes=73_000)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("media"), Codec.H264, seconds=2)


class TightDisk(Device):
    """Every transfer is ended by the receiver's free-space guard, as the scheduler records it."""

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        transfer = await super().start_download(ref, raw_path)
        return Transfer(transfer.outcome, {
            **transfer.facts, "complete": False, "interrupted": INTERRUPTED_DISK_FULL,
            "incomplete": "the station's disk ran low during the download (the store's reserve); "
                          "1.0 s of a 3 s recording came"})


async def _asked_once_room_is_made(tmp_path: Path, media: SourceMedia, interruptions: int) -> list[str]:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        tight = TightDisk(media)
        for _ in range(interruptions):
            await GbDownloads(pipeline, source, tight.start_download).download([RECORDING])
        assert len(tight.asked) == interruptions
        roomy = Device(media)  # room was made (the store uploaded and freed what it held)
        await GbDownloads(pipeline, source, roomy.start_download).download([RECORDING])
        return roomy.asked
    finally:
        store.close()


async def test_a_recording_the_disk_guard_cut_short_is_downloaded_once_there_is_room(
        tmp_path: Path, media: SourceMedia) -> None:
    asked = await _asked_once_room_is_made(tmp_path, media, MAX_INTERRUPTED_ATTEMPTS)
    assert asked == [RECORDING.start_time], (
        f"after {MAX_INTERRUPTED_ATTEMPTS} downloads ended by the station's own free-space guard, the "
        "recording was given up and not asked for once there was room")


async def test_control_one_interruption_fewer_it_is_downloaded(tmp_path: Path, media: SourceMedia) -> None:
    asked = await _asked_once_room_is_made(tmp_path, media, MAX_INTERRUPTED_ATTEMPTS - 1)
    assert asked == [RECORDING.start_time]
