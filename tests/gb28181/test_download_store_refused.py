"""Review 22 (findings 3 and 5), the paths the review's own tests do not reach:

* the store refuses a download's copy although the spool's disk looked above the reserve when the
  download started (another writer filled the disk meanwhile): the pass ends at that download (one
  `StoreBelowReserve`, one entry of the downloads besides the pipeline's), and the spool keeps nothing;
* a device's `a=filesize` beyond JSON's integers (in the session's facts) neither keeps the recording
  from being sealed nor judges its completeness.

Real receiver fed by RTP over UDP, real pipeline, store and ffmpeg. The disk's free space as the pass's
check reads it is the one fake: the moment between the check and the copy, where another writer filled
the disk, cannot be staged on a shared disk without a race. Controls: the same listing with room, and a
plausible a=filesize."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.ps import Codec
from edge.custody.canonical import MAX_SAFE_INTEGER
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef
from edge.sources.gb28181 import downloads as downloads_module
from edge.sources.gb28181.downloads import StoreBelowReserve, Transfer
from edge.sources.gb28181.scheduler import completeness
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_download_completeness import WHOLE, Outcome, _ref, _result
from tests.gb28181.test_source_downloads import CASE, DEVICE, RECORDINGS, Device
from tests.prerequisites import require

FULL = 1 << 60  # a reserve no disk holds


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=2)


async def test_a_copy_refused_for_the_reserve_ends_the_pass_and_leaves_no_spool_file(
        media: SourceMedia, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads_module, "free_bytes", lambda _path: FULL)  # looked fine at the start
    spool = tmp_path / "spool"
    spool.mkdir()
    device = Device(media)
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=FULL, chunk_bytes=64 * 1024))
        report = await GbDownloads(pipeline, source, device.start_download).download(RECORDINGS)
        assert isinstance(report.stopped, StoreBelowReserve)
        assert len(device.asked) == 1 and len(report.ingested) == 1 and report.ingested[0].raw_item is None
        assert sorted(spool.iterdir()) == [], "the refused download's raw PS and MP4 are not kept"
        store_entries = [e.data for e in store.ledger.entries()
                         if e.type == "error" and e.data.get("stage") == "store"]
        ours = [d for d in store_entries if d.get("source") == "gb28181"]
        assert len(ours) == 1 and "removed from the spool" in ours[0]["reason"]
        assert store.conn.execute("SELECT count(*) FROM items WHERE path IS NOT NULL").fetchone()[0] == 0
    finally:
        store.close()


async def test_control_with_room_the_same_check_lets_every_download_through(
        media: SourceMedia, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads_module, "free_bytes", lambda _path: FULL)
    spool = tmp_path / "spool"
    spool.mkdir()
    device = Device(media)
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=64 * 1024))
        report = await GbDownloads(pipeline, source, device.start_download).download(RECORDINGS)
        assert report.stopped is None and len(device.asked) == 3 and sorted(spool.iterdir()) == []
    finally:
        store.close()


class Announcing(Device):
    """A Device whose session facts carry the a=filesize its SDP answer gave."""

    def __init__(self, media: SourceMedia, file_size: int) -> None:
        super().__init__(media)
        self.file_size = file_size

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        transfer = await super().start_download(ref, raw_path)
        facts: dict[str, Any] = {**transfer.facts, "file_size_bytes": self.file_size}
        return Transfer(transfer.outcome, facts)


@pytest.mark.parametrize("file_size", [2**63 - 1, 123_456], ids=["beyond-json", "control-plausible"])
async def test_an_sdp_file_size_beyond_json_integers_is_kept_as_text_and_sealed(
        media: SourceMedia, tmp_path: Path, file_size: int) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        report = await GbDownloads(pipeline, source, Announcing(media, file_size).start_download).download(
            RECORDINGS[:1])
        assert report.failed == [] and report.ingested[0].raw_item is not None
        acquired = [e.data for e in store.ledger.entries() if e.type == "acquired"]
        assert len(acquired) == 2
        if file_size > MAX_SAFE_INTEGER:
            assert acquired[0]["file_size_bytes"] is None
            assert acquired[0]["file_size_bytes_listed"] == str(file_size)
        else:
            assert acquired[0]["file_size_bytes"] == file_size and "file_size_bytes_listed" not in acquired[0]
        record = IngestRepository(store).item(report.ingested[0].raw_item)
        assert record is not None and record.manifest is not None
    finally:
        store.close()


@pytest.mark.parametrize("announced, complete", [
    (2**63 - 1, True),  # beyond JSON's integers: not a size, not used
    (90_000_000, False),  # control: a plausible a=filesize ten times what came is still used
    (9_000_000, True),  # control: what came
])
def test_an_a_filesize_beyond_json_integers_is_not_a_size(announced: int, complete: bool) -> None:
    facts = completeness(replace(_result(Outcome(*WHOLE)), file_size_bytes=announced), _ref(), 60.0)
    assert facts["complete"] is complete, facts
