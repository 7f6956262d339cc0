"""Review 24: review 22 tells a recording listed under a sealed one's identity (channel, start, end, file
path) apart by its FileSize -- but only when the sealed one is complete (`GbDownloads._told_apart` looks
at `d.complete` downloads alone). A recorder whose clock restarts at its epoch at every power-on lists the
first segment after each power-on under the same identity; when the earlier one's downloads all came
incomplete (a lossy 4G link: `MAX_INCOMPLETE_ATTEMPTS` of them) it was given up, and the new recording,
listed with another FileSize, is taken for that one: given up too, never asked for, lost when the device
overwrites it. (With fewer incomplete tries, the new recording's download is sealed as one more attempt of
the old recording.)

Real receiver, RTP over UDP, pipeline and store. Control: the same new recording under another start is
downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef
from edge.sources.gb28181.downloads import MAX_INCOMPLETE_ATTEMPTS, Transfer
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_source_downloads import CASE, CHANNEL, DEVICE, Device
from tests.prerequisites import require


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("media"), Codec.H264, seconds=2)


class ShortDevice(Device):
    """Every transfer is short of the recording (as the scheduler's completeness check says)."""

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        transfer = await super().start_download(ref, raw_path)
        return Transfer(transfer.outcome, {**transfer.facts, "complete": False,
                                             "incomplete": "1.0 s of a 3 s recording came"})


def _after_power_on(start: str, file_size: int) -> RecordingRef:
    return RecordingRef(device_id=DEVICE, channel_id=CHANNEL, name="执法记录",
                        file_path="/sd/DCIM/20000101000000.mp4", start_time=start,
                        end_time="2000-01-01T00:00:03", record_type="time", file_size_bytes=file_size)


async def _second_asked(tmp_path: Path, media: SourceMedia, second: RecordingRef) -> list[str]:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        short = ShortDevice(media)
        first = _after_power_on("2000-01-01T00:00:00", 48_000)
        for _ in range(MAX_INCOMPLETE_ATTEMPTS + 1):
            await GbDownloads(pipeline, source, short.start_download).download([first])
        assert len(short.asked) == MAX_INCOMPLETE_ATTEMPTS  # the first recording was given up
        device = Device(media)
        await GbDownloads(pipeline, source, device.start_download).download([second])
        return device.asked
    finally:
        store.close()


async def test_a_new_recording_under_a_given_up_ones_identity_is_downloaded(
        tmp_path: Path, media: SourceMedia) -> None:
    asked = await _second_asked(tmp_path, media, _after_power_on("2000-01-01T00:00:00", 73_000))
    assert asked, ("the next power-on's recording (another FileSize) was given up with the earlier "
                   "recording listed under the same channel, times and path, whose downloads came incomplete")


async def test_control_the_new_recording_under_another_start_is_downloaded(
        tmp_path: Path, media: SourceMedia) -> None:
    assert await _second_asked(tmp_path, media, _after_power_on("2000-01-01T00:00:01", 73_000)) == [
        "2000-01-01T00:00:01"]
