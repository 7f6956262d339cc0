"""Review 26: since review 24 a download the receiver's free-space guard ended (`disk-full`) never counts
toward a give-up, and `_tight_for` is what keeps it from being tried again while the disk is tight. But
`_tight_for` judges "tight" only by the FileSize the device listed (or a fixed 256 MiB margin when none
is listed, as no GB/T 28181-2016 device lists one). A device whose FileSize understates the recording (a
size in KiB, a stale size, a lie) is tried again at every pass although the disk has no more room than
when the guard cut the last try short: every try ends the same way and seals one more identical partial
copy (raw PS and MP4) into the tight store, for ever (before review 24 it was bounded by
MAX_INTERRUPTED_ATTEMPTS). What the last try received before the guard cut it is known (the sealed copy):
the recording is at least that large.

Real receiver, RTP over UDP, pipeline and store (the rig of test_review24_disk_full_give_up); the disk's
free space is the downloads' `free_bytes` seam, held constant: room for the listed FileSize under the
guard's rule (ROOM_PER_RECEIVED_BYTE per byte), not for what the last try had already received. Control:
once the disk has room for more than the last try received, the recording is asked for again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import edge.sources.gb28181.downloads as downloads_module
from drivers.gb28181.ps import Codec
from edge.gb28181.media import ROOM_PER_RECEIVED_BYTE
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef
from edge.sources.gb28181.downloads import MAX_INTERRUPTED_ATTEMPTS, Transfer
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_review24_disk_full_give_up import RECORDING, TightDisk
from tests.gb28181.test_source_downloads import CASE, DEVICE
from tests.prerequisites import require

LISTED = 1000  # the device's FileSize: far below what it sends for the recording
UNDERSTATED = replace(RECORDING, file_size_bytes=LISTED)
PASSES = MAX_INTERRUPTED_ATTEMPTS + 2


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("media"), Codec.H264, seconds=2)


class MeasuredTightDisk(TightDisk):
    """TightDisk that remembers how many bytes each cut-short try received."""

    def __init__(self, media: SourceMedia) -> None:
        super().__init__(media)
        self.received: list[int] = []

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        transfer = await super().start_download(ref, raw_path)
        self.received.append(transfer.outcome.bytes)
        return transfer


async def _passes(tmp_path: Path, media: SourceMedia, monkeypatch: pytest.MonkeyPatch,
                  *, room_grows: bool, passes: int = PASSES) -> tuple[MeasuredTightDisk, int]:
    """`passes` passes over UNDERSTATED, each try cut short by the guard. The free space: room for the
    listed FileSize (constant), or (`room_grows`) room for more than the last try received (the raw PS
    itself plus the guard's ROOM_PER_RECEIVED_BYTE times it: review 28). Returns the device and how many
    items were sealed."""
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    device = MeasuredTightDisk(media)
    free = {"bytes": ROOM_PER_RECEIVED_BYTE * LISTED + 1}
    monkeypatch.setattr(downloads_module, "free_bytes", lambda _path: free["bytes"])
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        downloads = GbDownloads(pipeline, source, device.start_download)  # one limiter over the passes
        for _ in range(passes):
            report = await downloads.download([UNDERSTATED])
            assert report.given_up == []
            if room_grows and device.received:
                free["bytes"] = (ROOM_PER_RECEIVED_BYTE + 1) * (max(device.received) + 1) + 1
        sealed = int(store.conn.execute("SELECT count(*) FROM items").fetchone()[0])
        return device, sealed
    finally:
        store.close()


async def test_a_cut_short_recording_is_not_tried_again_while_the_disk_has_no_more_room(
        tmp_path: Path, media: SourceMedia, monkeypatch: pytest.MonkeyPatch) -> None:
    device, sealed = await _passes(tmp_path, media, monkeypatch, room_grows=False)
    assert device.received and device.received[0] > LISTED  # the guard cut it beyond its listed size
    assert len(device.asked) == 1, (
        f"the disk's free space never changed ({ROOM_PER_RECEIVED_BYTE * LISTED + 1} bytes: room for the "
        f"listed FileSize {LISTED}, not for the {device.received[0]} bytes the first try received before "
        f"the guard cut it), yet the recording was downloaded {len(device.asked)} times in {PASSES} passes, "
        f"each cut short the same way: {sealed} items (partial raw PS and MP4 copies) sealed, never given up")


async def test_control_once_there_is_room_for_more_it_is_asked_again(
        tmp_path: Path, media: SourceMedia, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rig's device sends the same stream at every try, so each try "cut short" gets no further than the
    # one before: since review 28 such repeats count toward the give-up (MAX_INTERRUPTED_ATTEMPTS of them),
    # so the control stops one short of it.
    passes = MAX_INTERRUPTED_ATTEMPTS
    device, _sealed = await _passes(tmp_path, media, monkeypatch, room_grows=True, passes=passes)
    assert len(device.asked) == passes  # each pass had room for more than any try before received
