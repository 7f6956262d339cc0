"""Review 16: a recording whose downloads came incomplete MAX_INCOMPLETE_ATTEMPTS times is given up
(`DownloadReport.given_up`, a counter in the operator view) without any ledger entry saying so: the ledger
shows three incomplete attempts and then nothing, the same as a station that silently stopped or lost the
rest. The decision not to fetch a listed recording again belongs on the record."""

from __future__ import annotations

from pathlib import Path

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings
from edge.sources.gb28181.downloads import MAX_INCOMPLETE_ATTEMPTS
from tests.gb28181.media_sender import SourceMedia, ps_packs, rtp_packets
from tests.gb28181.test_download_damage import CASE, DEVICE, SETTINGS, SSRC, Device, media, recording

__all__ = ["media"]  # the module fixture


async def test_giving_up_on_a_recording_is_a_ledger_entry(media: SourceMedia, tmp_path: Path) -> None:
    packets = rtp_packets(ps_packs(media), ssrc=SSRC)
    short = Device(packets[:len(packets) // 3], {"complete": False, "incomplete": "short"})
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, SETTINGS)
        for _ in range(MAX_INCOMPLETE_ATTEMPTS):
            report = await GbDownloads(pipeline, source, short.start_download).download([recording(1)])
            assert len(report.ingested) == 1
        before = len(list(store.ledger.entries()))
        # Control: each incomplete attempt left its own entry (stage media), so the ledger can say things.
        media_entries = [e for e in store.ledger.entries()
                         if e.type == "error" and e.data.get("stage") == "media"]
        assert len(media_entries) == MAX_INCOMPLETE_ATTEMPTS
        report = await GbDownloads(pipeline, source, short.start_download).download([recording(1)])
        assert report.ingested == [] and len(report.given_up) == 1
        new = list(store.ledger.entries())[before:]
        assert any(recording(1).channel_id in str(e.data) for e in new), \
            "the recording was given up with no ledger entry"
    finally:
        store.close()


async def test_control_an_attempt_short_of_the_limit_leaves_an_entry_naming_the_recording(
        media: SourceMedia, tmp_path: Path) -> None:
    packets = rtp_packets(ps_packs(media), ssrc=SSRC)
    short = Device(packets[:len(packets) // 3], {"complete": False, "incomplete": "short"})
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, SETTINGS)
        for _ in range(MAX_INCOMPLETE_ATTEMPTS - 1):
            await GbDownloads(pipeline, source, short.start_download).download([recording(1)])
        before = len(list(store.ledger.entries()))
        report = await GbDownloads(pipeline, source, short.start_download).download([recording(1)])
        assert len(report.ingested) == 1 and report.given_up == []
        new = list(store.ledger.entries())[before:]
        assert any(recording(1).channel_id in str(e.data) for e in new)
    finally:
        store.close()
