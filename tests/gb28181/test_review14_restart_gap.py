"""Review 14: an outage of more than MAX_DROPOUT (3000) RTP packets on a 4G link (a few seconds of a
4 Mbit/s stream) is classified by the reorder buffer as a `Restart`, never a `Gap`: `lost_packets` stays 0,
the raw item's manifest says `gaps: []`, and `ingest_download` writes a `gap` ledger entry only when
`lost_packets > 0`, so the ledger says nothing about seconds of missing evidence. The control (an outage
of 2000 packets) shows the same path does write the gap entry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from drivers.gb28181.rtp import RtpPacket, parse_rtp
from edge.gb28181.media import MediaTransport, open_receiver
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import DownloadedRecording, GbRecordings, RecordingRef, ingest_download
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source, ps_packs, rtp_packets, send_udp
from tests.prerequisites import require

SSRC = 1340200014
DEVICE = "34020000001320000014"
CHANNEL = "34020000001310000014"
CASE = {"case_number": "", "location": "", "collector": "", "subject": "", "important": False,
        "category": "", "retention": "standard"}
SETTINGS = IngestSettings(min_free_bytes=0, chunk_bytes=64 * 1024)
REF = RecordingRef(device_id=DEVICE, channel_id=CHANNEL, name="rec", file_path="/sd/rec.ps",
                   start_time="2026-12-05T09:00:00", end_time="2026-12-05T09:00:03", record_type="time")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=3, audio=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def _with_outage(packets: list[bytes], at: int, lost: int) -> list[bytes]:
    """What the platform receives when the link drops `lost` consecutive packets after the `at`-th: the
    device's numbering goes on, the packets in between never arrive."""
    out = packets[:at]
    for raw in packets[at:]:
        p = parse_rtp(raw)
        out.append(RtpPacket(payload_type=p.payload_type, sequence=(p.sequence + lost) % 65536,
                             timestamp=p.timestamp, ssrc=p.ssrc, marker=p.marker,
                             payload=p.payload).to_bytes())
    return out


@pytest.mark.parametrize("lost", [2000, 3500], ids=["control-2000-lost", "outage-3500-lost"])
async def test_an_outage_of_any_length_is_a_gap_on_the_ledger(media: SourceMedia, store: StationStore,
                                                              tmp_path: Path, lost: int) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    packets = rtp_packets(ps_packs(media), ssrc=SSRC, first_sequence=1000)
    half = len(packets) // 2
    sent = _with_outage(packets, half, lost)
    receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=(32000, 32999),
                                   ssrc=SSRC, raw_path=spool / "dl.ps", idle_timeout_s=1.0, max_bytes=1 << 30)
    await send_udp(sent, receiver.local_port)
    outcome = await receiver.wait_closed()
    download = DownloadedRecording(REF, spool / "dl.ps", outcome)
    source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
    done = await ingest_download(IngestPipeline(store, SETTINGS), source, download)
    assert done.raw_item is not None

    gaps = [e for e in store.ledger.entries() if e.type == "gap" and e.item == done.raw_item]
    assert gaps, (f"{lost} packets never came, yet the ledger has no gap entry for the recording "
                  f"(outcome: lost_packets={outcome.lost_packets}, gaps={outcome.gaps}, "
                  f"restarts={outcome.restarts})")
