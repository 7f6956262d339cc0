"""Review 22: a GB/T 28181 download goes on into a store that is full, and leaves its files in the spool.

The media receiver writes a recording's raw PS into `STORE/gb28181-spool/` (on the store's disk) with no
look at the free space (up to `max_recording_mb`, 8 GiB by default), the conversion writes the MP4 beside
it, and only then does the pipeline's copy find that the disk is below `[offload] min_free_bytes`
(StoreFullError: the run stops, nothing sealed). `GbDownloads._one` takes that as one recording's failure
and goes on to the next recording of the listing: another whole download into the spool, refused again.
`ingest_download` removes spool files only once their item is sealed, so every one of them stays there
until the agent restarts. On a station whose disk is below the reserve (the USB offloads already refused
for it), every listed recording of every device is downloaded once more per pass and left on the disk:
the reserve the pipeline keeps for the ledger and the docking offloads is eaten by the spool, up to a
really full disk.

Real pipeline and store, real media receiver fed by a real RTP sender over UDP (the rig of
test_source_downloads). The store is "below its reserve" through `min_free_bytes` larger than any disk.
Control: the same listing with room downloads and seals all three, the spool left empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_source_downloads import CASE, DEVICE, RECORDINGS, Device
from tests.prerequisites import require


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=2)


async def _pass(tmp_path: Path, media: SourceMedia, min_free_bytes: int) -> tuple[list[str], list[Path], int]:
    spool = tmp_path / "spool"
    spool.mkdir()
    device = Device(media)
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=min_free_bytes, chunk_bytes=64 * 1024))
        await GbDownloads(pipeline, source, device.start_download).download(RECORDINGS)
        sealed = store.conn.execute("SELECT count(*) FROM items").fetchone()[0]
        return device.asked, sorted(spool.iterdir()), int(sealed)
    finally:
        store.close()


async def test_a_full_store_ends_the_pass_instead_of_downloading_every_recording_into_the_spool(
        media: SourceMedia, tmp_path: Path) -> None:
    asked, left, sealed = await _pass(tmp_path, media, min_free_bytes=1 << 60)
    assert sealed == 0
    assert len(asked) <= 1, (f"the store refused the first download's copy (disk below its reserve), yet "
                             f"{len(asked)} recordings were downloaded into the spool of that disk")
    assert len(left) <= 2, (f"{len(left)} unsealed files left in the spool after the pass "
                            f"({sum(p.stat().st_size for p in left)} bytes), kept until the next restart")


async def test_control_with_room_every_recording_is_sealed_and_the_spool_emptied(
        media: SourceMedia, tmp_path: Path) -> None:
    asked, left, sealed = await _pass(tmp_path, media, min_free_bytes=0)
    assert len(asked) == 3 and sealed == 6 and left == []
