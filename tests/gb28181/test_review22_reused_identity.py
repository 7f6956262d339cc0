"""Review 22: a new recording listed with the channel, times and file path of one already sealed is never
downloaded, and nothing says so.

A recording's identity (its keys, `already_sealed`) is `channel|StartTime|EndTime|FilePath` as the device
lists them. A body-worn recorder whose RTC battery is dead comes up at its epoch (2000-01-01 00:00:00, or
its firmware's build date) at every power-on, and names its files by that clock: the first segment after
each power-on is listed with the same start, end (fixed-length segments) and path as the first one after
the previous power-on. README "Device clocks" knows the case ("an RTC reset at a reboot ... a stamp both
clocks may have made is `ambiguous`") for the clock offset, but the download decision looks at the identity
alone: `GbDownloads.download` counts the new recording as skipped (already sealed), and it is lost when
the device's loop overwrites it. What the device lists beside the identity differs (here its FileSize,
which the sealed manifest holds), and nothing compares it; no ledger entry, no counter but `skipped`.

Real receiver, RTP over UDP, pipeline and store. Control: the same second recording under another start
time is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_source_downloads import CASE, CHANNEL, DEVICE, Device
from tests.prerequisites import require


@pytest.fixture(scope="module")
def first_media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("first"), Codec.H264, seconds=2)


@pytest.fixture(scope="module")
def second_media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("second"), Codec.H264, seconds=3)


def _after_power_on(start: str, file_size: int) -> RecordingRef:
    """The first segment after a power-on, as a recorder with a dead RTC battery lists it."""
    return RecordingRef(device_id=DEVICE, channel_id=CHANNEL, name="执法记录",
                        file_path="/sd/DCIM/20000101000000.mp4", start_time=start,
                        end_time="2000-01-01T00:00:03", record_type="time", file_size_bytes=file_size)


async def _second_downloaded(tmp_path: Path, first_media: SourceMedia, second_media: SourceMedia,
                             second: RecordingRef) -> tuple[list[str], int, int]:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        first_device = Device(first_media)
        await GbDownloads(pipeline, source, first_device.start_download).download(
            [_after_power_on("2000-01-01T00:00:00", 48_000)])
        # The next shift: the recorder was switched off and on; its clock started at its epoch again.
        second_device = Device(second_media)
        report = await GbDownloads(pipeline, source, second_device.start_download).download([second])
        said = [e for e in store.ledger.entries() if e.type in ("error", "refused")]
        repository = IngestRepository(store)
        raws = [repository.item(i) for (i,) in store.conn.execute("SELECT item FROM items")]
        sealed = sum(1 for r in raws if r is not None and r.manifest is not None
                     and r.manifest["original"]["role"] == "raw-ps")
        assert len(report.skipped) + len(second_device.asked) == 1
        return second_device.asked, sealed, len(said)
    finally:
        store.close()


async def test_a_new_recording_listed_under_a_sealed_ones_identity_is_downloaded_or_flagged(
        tmp_path: Path, first_media: SourceMedia, second_media: SourceMedia) -> None:
    asked, sealed, said = await _second_downloaded(tmp_path, first_media, second_media,
                                                   _after_power_on("2000-01-01T00:00:00", 73_000))
    assert asked or said, (
        "the second power-on's recording (another FileSize, other media) was skipped as already sealed: "
        f"never asked for, {sealed} raw PS sealed, nothing on the ledger")


async def test_control_the_same_recording_under_another_start_is_downloaded(
        tmp_path: Path, first_media: SourceMedia, second_media: SourceMedia) -> None:
    asked, sealed, said = await _second_downloaded(tmp_path, first_media, second_media,
                                                   _after_power_on("2000-01-01T00:00:01", 73_000))
    assert (asked, sealed, said) == (["2000-01-01T00:00:01"], 2, 0)
