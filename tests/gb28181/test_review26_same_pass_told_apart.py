"""Review 26: `GbDownloads._told_apart` compares a listed recording with what was sealed *before the call*
(`sealed_downloads_off_loop` runs once per call). Two recordings listed with the same channel, times and
path but another FileSize, handed to one call (one pass), are both taken under the plain identity: the
first is downloaded and sealed under it, and the second is then downloaded as attempt 1 of the same
identity again (its sealed snapshot is empty): the pipeline finds that key sealed and takes the
transfer for the first's copy (`copied_bytes` 0, the report counts it ingested), so the second
recording's bytes are discarded without a ledger entry. (The scheduler's listing drops the second before
this point today: test_review26_same_listing_sizes; fixing that alone leads here.)

Real receiver, RTP over UDP, pipeline and store (the rig of test_source_downloads). Control: the same two
recordings handed to two calls (two passes): both sealed complete, the second told apart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings
from edge.sources.gb28181.recordings import sealed_downloads_of_device
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_source_downloads import CASE, DEVICE, Device
from tests.prerequisites import require

FIRST = RECORDING
SECOND = replace(RECORDING, file_size_bytes=RECORDING.file_size_bytes + 4096)  # type: ignore[operator]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("media"), Codec.H264, seconds=2)


async def _sealed_recordings(tmp_path: Path, media: SourceMedia, *, one_call: bool) -> set[str]:
    """The originals (recording identities) sealed complete after FIRST and SECOND were downloaded."""
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        device = Device(media)
        downloads = GbDownloads(pipeline, source, device.start_download)
        if one_call:
            await downloads.download([FIRST, SECOND])
        else:
            await downloads.download([FIRST])
            await downloads.download([SECOND])
        assert len(device.asked) == 2
        found = sealed_downloads_of_device(store, DEVICE)
        return {identity for identity, sealed in found.items() if any(d.complete for d in sealed)}
    finally:
        store.close()


async def test_two_recordings_told_apart_by_size_in_one_pass_are_sealed_apart(
        tmp_path: Path, media: SourceMedia) -> None:
    sealed = await _sealed_recordings(tmp_path, media, one_call=True)
    assert sealed == {FIRST.identity(), SECOND.told_apart().identity()}, (
        f"two recordings listed in one pass with the same channel, times and path but FileSize "
        f"{FIRST.file_size_bytes} and {SECOND.file_size_bytes}: sealed as {sorted(sealed)} (the second's "
        "transfer taken for the first's sealed copy and discarded)")


async def test_control_in_two_passes_they_are_sealed_apart(tmp_path: Path, media: SourceMedia) -> None:
    sealed = await _sealed_recordings(tmp_path, media, one_call=False)
    assert sealed == {FIRST.identity(), SECOND.told_apart().identity()}
