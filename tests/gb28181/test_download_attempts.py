"""How many times a recording is downloaded again (edge.sources.gb28181.downloads), beyond review 16's
cases: downloads interrupted by the device leaving are counted apart from incomplete ones, both caps end
in one `given-up` ledger entry, written once however often the recording is listed again, its device text
escaped. Real media receiver over UDP, real ffmpeg conversion, real pipeline and store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef
from edge.sources.gb28181 import downloads as downloads_module
from edge.sources.gb28181.downloads import MAX_INCOMPLETE_ATTEMPTS, MAX_INTERRUPTED_ATTEMPTS
from tests.gb28181.media_sender import SourceMedia, ps_packs, rtp_packets
from tests.gb28181.test_download_damage import CASE, DEVICE, SETTINGS, SSRC, Device, media, recording

__all__ = ["media"]  # the module fixture

INTERRUPTED = {"complete": False, "interrupted": "device-offline",
               "incomplete": "the device went offline during the download; video spans 0.6 s"}
SHORT = {"complete": False, "incomplete": "video spans 0.6 s of the recording's 2 s"}


class Station:
    def __init__(self, tmp_path: Path, media: SourceMedia) -> None:
        packets = rtp_packets(ps_packs(media), ssrc=SSRC)
        self.third = packets[:len(packets) // 3]
        spool = tmp_path / "spool"
        spool.mkdir()
        self.store = StationStore(tmp_path / "store", "TEST-STATION")
        self.source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        self.pipeline = IngestPipeline(self.store, SETTINGS)

    async def download(self, facts: dict[str, Any], ref: RecordingRef | None = None) -> Any:
        device = Device(self.third, facts)
        return await GbDownloads(self.pipeline, self.source, device.start_download).download(
            [ref or recording(1)])

    def given_up_entries(self) -> list[dict[str, Any]]:
        return [e.data for e in self.store.ledger.entries() if e.type == "error"
                and e.data.get("stage") == "given-up"]

    def raw_manifests(self) -> list[dict[str, Any]]:
        repository = IngestRepository(self.store)
        found = []
        for (item,) in self.store.conn.execute("SELECT item FROM items"):
            record = repository.item(item)
            assert record is not None and record.manifest is not None
            if record.manifest["original"]["role"] == "raw-ps":
                found.append(record.manifest["original"])
        return sorted(found, key=lambda o: o.get("attempt", 1))


@pytest.fixture
def station(tmp_path: Path, media: SourceMedia) -> Any:
    s = Station(tmp_path, media)
    yield s
    s.store.close()


async def test_interrupted_downloads_do_not_count_as_incomplete_ones(station: Station) -> None:
    for _ in range(2):
        assert len((await station.download(INTERRUPTED)).ingested) == 1
    for _ in range(MAX_INCOMPLETE_ATTEMPTS):
        assert len((await station.download(SHORT)).ingested) == 1, "the interruptions used up an attempt"
    report = await station.download(SHORT)
    assert report.ingested == [] and len(report.given_up) == 1  # three incomplete: given up
    raws = station.raw_manifests()
    assert [r.get("interrupted") for r in raws] == ["device-offline"] * 2 + [None] * MAX_INCOMPLETE_ATTEMPTS
    assert [r.get("attempt", 1) for r in raws] == [1, 2, 3, 4, 5]
    [entry] = station.given_up_entries()
    assert "incomplete at each of its 3 downloads" in entry["reason"] and entry["attempts"] == 5


async def test_a_device_that_always_drops_is_given_up_after_the_larger_cap(
        station: Station, monkeypatch: pytest.MonkeyPatch) -> None:
    assert MAX_INTERRUPTED_ATTEMPTS > MAX_INCOMPLETE_ATTEMPTS
    monkeypatch.setattr(downloads_module, "MAX_INTERRUPTED_ATTEMPTS", 4)  # the real one is 10: time
    for _ in range(4):
        assert len((await station.download(INTERRUPTED)).ingested) == 1
    assert station.given_up_entries() == []  # the control: not given up short of the cap
    for _ in range(3):  # listed again at each pass: given up each time, on the ledger once
        report = await station.download(INTERRUPTED)
        assert report.ingested == [] and len(report.given_up) == 1
    [entry] = station.given_up_entries()
    assert "4 downloads were cut short by the device going offline" in entry["reason"]
    assert entry["channel_id"] == recording(1).channel_id and entry["device_id"] == DEVICE
    assert len(entry["raw_items"]) == 4


async def test_the_given_up_entry_escapes_the_devices_text(station: Station,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads_module, "MAX_INCOMPLETE_ATTEMPTS", 1)
    hostile = RecordingRef(DEVICE, "3402000000131000001\n9", "rec\u202e\x1b[2J", "/sd/\x00x.mp4",
                           "2026-12-05T09:01:00\n", "2026-12-05T09:01:02")
    await station.download(SHORT, hostile)
    await station.download(SHORT, hostile)
    [entry] = station.given_up_entries()
    text = str(entry)
    assert "\n" not in entry["channel_id"] and "\\u000a" in entry["channel_id"]
    assert "\u202e" not in text and "\x1b" not in text and "\x00" not in text


async def test_through_the_scheduler_a_download_cut_by_the_device_leaving_is_sealed_marked(
        media: SourceMedia, tmp_path: Path) -> None:
    from tests.gb28181.test_review16_offline_attempts import _four_passes

    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        assert await _four_passes(media, store, tmp_path, 1 / 3) == 4
        repository = IngestRepository(store)
        raws = [m["original"] for m in (repository.item(i).manifest for (i,) in  # type: ignore[union-attr]
                                        store.conn.execute("SELECT item FROM items"))
                if m is not None and m["original"]["role"] == "raw-ps"]
    finally:
        store.close()
    assert len(raws) == 4
    assert all(r["complete"] is False and r["interrupted"] == "device-offline" for r in raws)
    assert all(r["incomplete"].startswith("the device went offline during the download") for r in raws)


LOSSY = {"complete": False, "lossy": True,
         "incomplete": "3 RTP packet(s) lost in transfer: the copy has holes"}


async def test_a_lossy_recording_is_fetched_again_and_its_give_up_says_the_copies_are_lossy(
        station: Station) -> None:
    for attempt in range(1, MAX_INCOMPLETE_ATTEMPTS + 1):
        report = await station.download(LOSSY)
        assert len(report.ingested) == 1 and report.given_up == [], f"attempt {attempt} not made"
    assert [r.get("lossy") for r in station.raw_manifests()] == [True] * MAX_INCOMPLETE_ATTEMPTS
    report = await station.download(LOSSY)
    assert report.ingested == [] and len(report.given_up) == 1
    [entry] = station.given_up_entries()
    assert f"{MAX_INCOMPLETE_ATTEMPTS} of the copies sealed are lossy" in entry["reason"]


async def test_control_a_short_recording_given_up_is_not_called_lossy(station: Station) -> None:
    for _ in range(MAX_INCOMPLETE_ATTEMPTS + 1):
        await station.download(SHORT)
    [entry] = station.given_up_entries()
    assert "lossy" not in entry["reason"] and "lossy" not in str(station.raw_manifests())
