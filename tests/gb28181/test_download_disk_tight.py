"""A recording the station's own free-space guard cut short (`disk-full`) is not tried again while the
spool's disk is still too tight for it (the store's reserve plus the receiver's room per listed byte): one
limited `error` entry instead of one more partial copy sealed into the tight store per pass (review 24).
And a give-up for interrupted downloads names what cut them short, as sealed.

Real receiver, RTP over UDP, pipeline and store (the rig of test_source_downloads). "Tight" is a listed
FileSize no disk has room for (the guard's room per byte times a petabyte, on a station whose
max_recording_mb takes that much: the size is capped there since review 28); control: a FileSize that
fits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from edge.custody.ledger import EntryType
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef
from edge.sources.gb28181.downloads import GIVEN_UP_STAGE, MAX_INTERRUPTED_ATTEMPTS, Transfer
from edge.sources.gb28181.recordings import INTERRUPTED_DEVICE_OFFLINE
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_review24_disk_full_give_up import RECORDING, TightDisk
from tests.gb28181.test_source_downloads import CASE, DEVICE, Device
from tests.prerequisites import require

PETABYTE = 10**15


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("media"), Codec.H264, seconds=2)


class DropsOffline(Device):
    """Every transfer is cut short by the device going offline, as the scheduler records it."""

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        transfer = await super().start_download(ref, raw_path)
        return Transfer(transfer.outcome, {**transfer.facts, "complete": False,
                                             "interrupted": INTERRUPTED_DEVICE_OFFLINE,
                                             "incomplete": "the device went offline during the download"})


def _errors(store: StationStore, stage: str) -> list[dict[str, object]]:
    return [e.data for e in store.ledger.entries()
            if e.type == EntryType.ERROR and e.data.get("stage") == stage]


async def _tries_after_disk_full(tmp_path: Path, media: SourceMedia,
                                 ref: RecordingRef) -> tuple[list[str], list[dict[str, object]], int]:
    """One download of `ref` ended by the disk guard, then two passes with a device that would send it
    whole: what those passes asked for, the `store` error entries they wrote (the first pass writes its
    own, ending the pass after the cut: review 28), and the items sealed."""
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        tight = TightDisk(media)
        await GbDownloads(pipeline, source, tight.start_download).download([ref])
        assert tight.asked == [ref.start_time]  # the first try: nothing said the disk was tight
        sealed_before = int(store.conn.execute("SELECT count(*) FROM items").fetchone()[0])
        errors_before = len(_errors(store, "store"))
        device = Device(media)
        # one limiter over both passes; a station that takes recordings up to a petabyte
        downloads = GbDownloads(pipeline, source, device.start_download, max_recording_bytes=PETABYTE)
        for _ in range(2):
            report = await downloads.download([ref])
            assert report.given_up == []
        sealed = int(store.conn.execute("SELECT count(*) FROM items").fetchone()[0])
        return device.asked, _errors(store, "store")[errors_before:], sealed - sealed_before
    finally:
        store.close()


async def test_a_recording_cut_short_by_the_disk_guard_waits_while_the_disk_is_tight(
        tmp_path: Path, media: SourceMedia) -> None:
    asked, errors, sealed = await _tries_after_disk_full(tmp_path, media,
                                                         replace(RECORDING, file_size_bytes=PETABYTE))
    assert asked == [] and sealed == 0  # no more partial copies in the tight store
    assert len(errors) == 1  # one limited entry, not one per pass
    reason = str(errors[0]["reason"])
    assert "disk-full" in reason and "never given up" in reason and str(PETABYTE) in reason


async def test_control_a_recording_that_fits_is_downloaded_again(tmp_path: Path, media: SourceMedia) -> None:
    asked, errors, sealed = await _tries_after_disk_full(tmp_path, media, RECORDING)
    assert asked == [RECORDING.start_time]  # sealed complete at the first of the two passes
    assert errors == [] and sealed == 2  # its raw PS and MP4


async def test_a_give_up_for_interruptions_names_what_cut_them_short(tmp_path: Path,
                                                                    media: SourceMedia) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        dropping = DropsOffline(media)
        for _ in range(MAX_INTERRUPTED_ATTEMPTS + 1):
            await GbDownloads(pipeline, source, dropping.start_download).download([RECORDING])
        assert len(dropping.asked) == MAX_INTERRUPTED_ATTEMPTS
        given_up = _errors(store, GIVEN_UP_STAGE)
        assert len(given_up) == 1
        reason = str(given_up[0]["reason"])
        assert f"cut short by the device going offline ({MAX_INTERRUPTED_ATTEMPTS});" in reason
        assert "station" not in reason and "disk" not in reason
    finally:
        store.close()
