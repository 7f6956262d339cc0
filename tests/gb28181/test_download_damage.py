"""What a damaged or short download leaves on the record (edge/sources/gb28181): however many garbage
packets, foreign-SSRC packets or PS resynchronisations a session had, one bounded `error` entry of stage
`media` for it (never one per event); a download that came short of its recording (a MediaStatus 121 sent
early, a stream that stopped) is sealed all the same, its manifest saying `complete: false` and why.
Real media receiver over real UDP, real pipeline and store; the SIP side is `start_download`'s seam."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.manscdp import RecordItem
from drivers.gb28181.ps import Codec
from drivers.gb28181.rtp import RtpPacket
from edge.gb28181.media import MediaTransport, open_receiver
from edge.gb28181.sessions import EndReason, SessionResult
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef, Transfer
from edge.sources.gb28181.scheduler import completeness
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source, ps_packs, rtp_packets, send_udp
from tests.prerequisites import require

DEVICE = "34020000001320000019"
CHANNEL = "34020000001310000019"
SSRC = 1340200019
CASE = {"case_number": "", "location": "", "collector": "", "subject": "", "important": False,
        "category": "", "retention": "standard"}
SETTINGS = IngestSettings(min_free_bytes=0, chunk_bytes=64 * 1024)
GARBAGE = 3000


def recording(minute: int) -> RecordingRef:
    return RecordingRef.from_record_item(DEVICE, RecordItem(
        device_id=CHANNEL, name=f"rec {minute}", file_path=f"/sd/{minute}.mp4", address="",
        start_time=datetime(2026, 12, 5, 9, minute), end_time=datetime(2026, 12, 5, 9, minute, 2), secrecy=0,
        type="time", recorder_id=""))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=2)


def hostile(packets: list[bytes]) -> list[bytes]:
    """The recording's packets with GARBAGE unreadable datagrams and packets of another SSRC between them."""
    out: list[bytes] = []
    every = max(1, len(packets) // GARBAGE)
    for i, packet in enumerate(packets):
        out.append(packet)
        for _ in range(0 if i % every else 1):
            out.append(b"\x00garbage" * 3)  # RTP version 0: unreadable
            out.append(RtpPacket(payload_type=96, sequence=i, timestamp=0, ssrc=SSRC + 1, marker=False,
                                 payload=b"\x00\x00\x01\xba junk").to_bytes())
    return out


class Device:
    def __init__(self, packets: list[bytes], facts: dict[str, Any] | None = None) -> None:
        self.packets = packets
        self.facts = facts or {}

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=(34000, 34999),
                                       ssrc=SSRC, raw_path=raw_path, idle_timeout_s=1.0, max_bytes=1 << 30)
        await send_udp(self.packets, receiver.local_port)
        return Transfer(await receiver.wait_closed(), dict(self.facts))


async def download(tmp_path: Path, device: Device) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        report = await GbDownloads(IngestPipeline(store, SETTINGS), source, device.start_download).download(
            [recording(1)])
        assert report.failed == [] and len(report.ingested) == 1
        entries = [e.data for e in store.ledger.entries() if e.type == "error"]
        repository = IngestRepository(store)
        manifests = []
        for (item,) in store.conn.execute("SELECT item FROM items"):
            record = repository.item(item)
            assert record is not None and record.manifest is not None
            manifests.append(record.manifest)
        return entries, manifests
    finally:
        store.close()


async def test_thousands_of_bad_packets_are_one_bounded_entry(media: SourceMedia, tmp_path: Path) -> None:
    packets = hostile(rtp_packets(ps_packs(media), ssrc=SSRC))
    entries, manifests = await download(tmp_path, Device(packets))
    [entry] = [e for e in entries if e.get("stage") == "media"]
    assert entry["transfer"]["invalid_packets"] >= 2 and entry["transfer"]["ssrc_mismatches"] >= 2
    assert "unreadable RTP packets" in entry["reason"] and "packets of another SSRC" in entry["reason"]
    assert len(str(entry)) < 4096
    assert sorted(m["original"]["role"] for m in manifests) == ["mp4", "raw-ps"]  # the recording is intact


async def test_the_control_a_clean_stream_has_no_media_entry(media: SourceMedia, tmp_path: Path) -> None:
    entries, manifests = await download(tmp_path, Device(rtp_packets(ps_packs(media), ssrc=SSRC)))
    assert [e for e in entries if e.get("stage") == "media"] == []
    assert len(manifests) == 2


async def test_an_incomplete_download_is_sealed_and_says_so(media: SourceMedia, tmp_path: Path) -> None:
    half = rtp_packets(ps_packs(media), ssrc=SSRC)
    half = half[:len(half) // 2]
    facts = {"complete": False, "incomplete": "video spans 0.9 s of the recording's 2 s (the device said the "
             "file had ended: MediaStatus 121)"}
    entries, manifests = await download(tmp_path, Device(half, facts))
    [raw] = [m for m in manifests if m["original"]["role"] == "raw-ps"]
    assert raw["original"]["complete"] is False and "MediaStatus 121" in raw["original"]["incomplete"]
    [entry] = [e for e in entries if e.get("stage") == "media"]
    assert entry["reason"].startswith("incomplete: video spans 0.9 s")


class Outcome:
    """The receiver's outcome fields `completeness` reads."""

    def __init__(self, first_pts: int | None, last_pts: int | None, size: int) -> None:
        self.first_video_pts, self.last_video_pts, self.bytes = first_pts, last_pts, size


def result(outcome: Outcome, *, file_size: int | None = None) -> SessionResult:
    """A Download session that ended on MediaStatus 121."""
    return SessionResult(call_id="c", end_reason=EndReason.FILE_END, ssrc_offered=1, ssrc_answered=None,
                         ssrc_answer_text=None, ssrc_used=1, file_size_bytes=file_size, outcome=outcome)


def test_a_121_before_the_end_time_is_incomplete_and_a_whole_file_is_not() -> None:
    ref = recording(1)
    short = completeness(result(Outcome(0, 90000 * 10, 5_000_000)), ref, 60.0)
    assert short["complete"] is False and "10 s of the recording's 60 s" in short["incomplete"]
    assert "MediaStatus 121" in short["incomplete"]
    whole = completeness(result(Outcome(0, 90000 * 59 + 86400, 5_000_000)), ref, 60.0)  # one frame short
    assert whole["complete"] is True and "incomplete" not in whole


def test_a_121_before_a_filesize_is_reached_is_incomplete() -> None:
    ref = recording(1)
    short = completeness(result(Outcome(0, 90000 * 60, 1_000_000), file_size=4_000_000), ref, 60.0)
    assert short["complete"] is False and "a=filesize 4000000" in short["incomplete"]
    enough = completeness(result(Outcome(0, 90000 * 60, 4_100_000), file_size=4_000_000), ref, 60.0)
    assert enough["complete"] is True


async def test_an_incomplete_recording_is_downloaded_again_and_a_complete_one_never(
        media: SourceMedia, tmp_path: Path) -> None:
    packets = rtp_packets(ps_packs(media), ssrc=SSRC)
    short = Device(packets[:len(packets) // 2], {"complete": False, "incomplete": "video spans 0.9 s"})
    whole = Device(packets, {"complete": True})
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, SETTINGS)
        first = await GbDownloads(pipeline, source, short.start_download).download([recording(1)])
        assert len(first.ingested) == 1 and first.skipped == []
        second = await GbDownloads(pipeline, source, whole.start_download).download([recording(1)])
        assert len(second.ingested) == 1 and second.skipped == []  # the incomplete one did not count
        third = await GbDownloads(pipeline, source, whole.start_download).download([recording(1)])
        assert third.ingested == [] and len(third.skipped) == 1  # the control: complete, never again
        repository = IngestRepository(store)
        raws = {}
        for (item,) in store.conn.execute("SELECT item FROM items"):
            record = repository.item(item)
            assert record is not None and record.manifest is not None
            if record.manifest["original"]["role"] == "raw-ps":
                raws[record.manifest["original"].get("attempt", 1)] = record.manifest["original"]["complete"]
        assert raws == {1: False, 2: True}
    finally:
        store.close()
