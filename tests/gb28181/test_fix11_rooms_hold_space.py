"""Issue 11 (review rev11d): a GB/T 28181 recording download while a room records keeps the space the rooms
hold (edge.rooms.space.rooms_kept_free) beyond the store's reserve, as a docking copy does: the pass does not
fill the spool into it, the ledger names the rooms, and the recordings wait on the device for a later pass.

Real pipeline and store, real media receiver fed by a real RTP sender over UDP (the rig of
test_source_downloads). The rooms hold more than any disk. Control: the same listing once the room stopped
downloads and seals every recording."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.rooms.space import ROOMS_GROUP, rooms_kept_free
from edge.sources.gb28181 import GbDownloads, GbRecordings
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_source_downloads import CASE, DEVICE, RECORDINGS, Device
from tests.prerequisites import require

HELD = functools.partial(rooms_kept_free, start_min_free_bytes=1 << 50, record_margin_bytes=1 << 30)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=2)


async def test_downloads_wait_while_a_room_records_and_run_once_it_stopped(media: SourceMedia,
                                                                           tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    device = Device(media)
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=64 * 1024))
        with pipeline.kept_space.holding(ROOMS_GROUP, "xw-1", HELD):
            await GbDownloads(pipeline, source, device.start_download).download(RECORDINGS)
        assert device.asked == [] and list(spool.iterdir()) == []
        assert store.conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0
        refusals = [e.data for e in store.ledger.entries()
                    if e.type == "error" and e.data.get("stage") == "store"]
        assert len(refusals) == 1 and "held for the rooms recording (1: xw-1)" in refusals[0]["reason"]
        # Control: the room stopped; the next pass downloads and seals every recording.
        await GbDownloads(pipeline, source, device.start_download).download(RECORDINGS)
        assert len(device.asked) == 3 and list(spool.iterdir()) == []
        assert store.conn.execute("SELECT count(*) FROM items").fetchone()[0] == 6
    finally:
        store.close()
