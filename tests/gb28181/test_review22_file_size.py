"""Review 22: a RecordInfo item whose FileSize is beyond JSON's interoperable integers (more than
2**53 - 1: the codec takes up to 18 digits) makes its recording unsealable, at every pass.

`manscdp._int` bounds the FileSize only by its 18 digits; `RecordingRef.described()` puts it into the raw
PS's and the MP4's manifest (`original.file_size_bytes`) as it came, and the canonical JSON of a manifest
refuses an integer outside +-(2**53 - 1) (I-JSON, edge/custody/canonical). A device that fills FileSize
with garbage (an uninitialised 64-bit field, a size in bits, a lie) thus gets a download whose received
bytes are never sealed (the copy fails at its manifest; the raw PS and MP4 stay in the spool), and the
recording is downloaded again at the next pass, and fails the same way, for ever. Hostile or wrong
text from a device must be escaped or bounded, not break sealing.

Real RecordInfo codec (the item parsed from the device's XML), real receiver, RTP over UDP, pipeline and
store. Control: the same recording with a plausible FileSize is sealed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from drivers.gb28181.manscdp import RecordInfoResponse, RecordItem, build_record_info_responses, parse_message
from drivers.gb28181.ps import Codec
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_source_downloads import CASE, CHANNEL, DEVICE, Device, _item
from tests.prerequisites import require


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=2)


def _listed(file_size: int) -> RecordingRef:
    """The recording as the platform gets it: the device's XML, parsed by the codec."""
    item = _item(1, "执法记录 1")
    item = replace(item, file_size_bytes=file_size)
    body = build_record_info_responses(7, CHANNEL, "记录仪", [item], per_message=10)[0]
    parsed = parse_message(body)
    assert isinstance(parsed.payload, RecordInfoResponse)
    items = parsed.payload.items
    assert len(items) == 1 and isinstance(items[0], RecordItem) and items[0].file_size_bytes == file_size
    return RecordingRef.from_record_item(DEVICE, items[0])


async def _sealed(tmp_path: Path, media: SourceMedia, file_size: int) -> tuple[int, list[str]]:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        downloads = GbDownloads(IngestPipeline(store, IngestSettings(min_free_bytes=0)), source,
                                Device(media).start_download)
        problems: list[str] = []
        try:
            report = await downloads.download([_listed(file_size)])
            problems = [reason for _, reason in report.failed]
        except Exception as exc:  # what the scheduler's supervisor would see
            problems = [f"{type(exc).__name__}: {exc}"]
        sealed = store.conn.execute("SELECT count(*) FROM acquisitions WHERE state = 'sealed'").fetchone()[0]
        return int(sealed), problems
    finally:
        store.close()


async def test_a_file_size_beyond_json_integers_does_not_keep_the_recording_from_being_sealed(
        tmp_path: Path, media: SourceMedia) -> None:
    sealed, problems = await _sealed(tmp_path, media, 99_999_999_999_999_999)
    assert sealed == 2, f"{sealed} items sealed of the recording's 2; {problems}"


async def test_control_a_plausible_file_size_is_sealed(tmp_path: Path, media: SourceMedia) -> None:
    sealed, problems = await _sealed(tmp_path, media, 123_456)
    assert (sealed, problems) == (2, [])
