"""GB/T 28181 downloads through the real ingest pipeline into a real station store
(edge/sources/gb28181): a recording received over real UDP (with loss) by the media receiver, converted
by the real ffmpeg, becomes two sealed items, the raw PS and the MP4, whose manifests say what the device
described, how the transfer went and what the MP4 was made from; `edge verify` passes; the keys survive a
restart; a failed conversion still seals the raw PS and says why on the ledger."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.ps import Codec
from drivers.gb28181.rtp import parse_rtp
from edge.gb28181.media import MediaTransport, open_receiver
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.gb28181 import (
    DownloadedRecording,
    GbRecordings,
    RecordingRef,
    already_sealed,
    ingest_download,
    raw_key,
)
from edge.verify.station import verify_store
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source, ps_packs, rtp_packets, send_udp
from tests.prerequisites import require

SSRC = 1340200001
DEVICE = "34020000001320000001"
CHANNEL = "34020000001310000001"
CASE = {"case_number": "", "location": "", "collector": "", "subject": "", "important": False,
        "category": "", "retention": "standard"}
SETTINGS = IngestSettings(min_free_bytes=0, chunk_bytes=64 * 1024)
# A name as a hostile or careless device may send it: Chinese, a bidi override, a control character.
REF = RecordingRef(device_id=DEVICE, channel_id=CHANNEL, name="执法记录\u202eGNP.exe\x07",
                   file_path="/mnt/sd/../../etc/passwd", start_time="2026-12-05T09:00:00",
                   end_time="2026-12-05T09:00:03", record_type="time")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=3)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    (tmp_path / "spool").mkdir()
    return tmp_path / "spool"


async def _download(media: SourceMedia, spool: Path, *, lose: tuple[int, ...] = ()) -> DownloadedRecording:
    packets = rtp_packets(ps_packs(media), ssrc=SSRC)
    sent = [p for i, p in enumerate(packets) if i not in lose]
    receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=(31000, 31999),
                                   ssrc=SSRC, raw_path=spool / "dl-0001.ps", idle_timeout_s=1.0,
                                   max_bytes=1 << 30)
    await send_udp(sent, receiver.local_port)
    outcome = await receiver.wait_closed()
    assert (spool / "dl-0001.ps").read_bytes() == b"".join(parse_rtp(p).payload for p in sent)
    return DownloadedRecording(REF, spool / "dl-0001.ps", outcome, device_clock_offset_ms=-1200,
                               device_tz_offset_min=480, facts={"call_id": "abc@station"})


def _source(spool: Path) -> GbRecordings:
    return GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE, collector_no="110002")


def _manifests(store: StationStore) -> dict[str, dict[str, Any]]:
    repository = IngestRepository(store)
    found = {}
    for (item,) in store.conn.execute("SELECT item FROM items"):
        record = repository.item(item)
        assert record is not None and record.manifest is not None
        found[record.manifest["original"]["role"]] = {**record.manifest, "_item": item}
    return found


async def test_a_download_becomes_two_sealed_items_that_verify(media: SourceMedia, store: StationStore,
                                                              spool: Path) -> None:
    download = await _download(media, spool, lose=(40, 41, 150))
    raw_bytes = download.raw_ps.read_bytes()
    done = await ingest_download(IngestPipeline(store, SETTINGS), _source(spool), download)
    assert done.conversion_error is None and done.raw_item and done.mp4_item
    manifests = _manifests(store)
    assert set(manifests) == {"raw-ps", "mp4"}
    raw, mp4 = manifests["raw-ps"], manifests["mp4"]

    assert raw["sha256"] == hashlib.sha256(raw_bytes).hexdigest() and raw["size"] == len(raw_bytes)
    for manifest in (raw, mp4):
        assert manifest["source"] == {"kind": "gb28181", "station": "TEST-STATION", "device_id": DEVICE,
                                      "channel_id": CHANNEL, "device_serial": DEVICE}
        assert manifest["time"]["device_tz_offset_min"] == 480
        assert manifest["time"]["recorded_start"] == "2026-12-05T09:00:00"
        assert manifest["time"]["recorded_end"] == "2026-12-05T09:00:03"
        assert manifest["time"]["device_clock_offset_ms"] == -1200
        original = manifest["original"]
        assert original["name"] == "执法记录\\u202eGNP.exe\\u0007", "escaped for display, Chinese kept"
        assert original["path"] == "/mnt/sd/../../etc/passwd"
    assert raw["original"]["ssrc"] == SSRC and raw["original"]["transport"] == "udp"
    assert raw["original"]["bytes"] == len(raw_bytes)
    lost = [n for a, b in raw["original"]["gaps"] for n in range(a, b + 1)]
    first = parse_rtp(rtp_packets(ps_packs(media), ssrc=SSRC)[0]).sequence
    assert lost == [first + 40, first + 41, first + 150]
    assert raw["original"]["transfer"]["ended"] == "idle"

    made_from = mp4["original"]["converted_from"]
    assert made_from["sha256"] == raw["sha256"] and made_from["size"] == raw["size"]
    assert made_from["key"]["version"] == "raw-ps"
    conversion = mp4["original"]["conversion"]
    assert conversion["ffmpeg_version"] and "-movflags" in conversion["mp4_argv"]
    assert "{raw_ps}" in conversion["argv"] and str(spool) not in str(conversion)
    assert conversion["sandbox"].startswith("landlock")
    assert mp4["media"]["streams"][0]["codec"] == "h264"

    gaps = [e for e in store.ledger.entries() if e.type == "gap"]
    assert len(gaps) == 1 and gaps[0].item == done.raw_item and gaps[0].data["lost_packets"] == 3
    acquired = [e for e in store.ledger.entries() if e.type == "acquired"]
    assert {e.data.get("call_id") for e in acquired} == {"abc@station"}
    report = verify_store(store.layout.root)
    assert report.ok, report.problems
    assert list(spool.iterdir()) == [], "the spool is cleared once both are sealed"


async def test_keys_survive_a_restart_and_a_recording_is_sealed_once(media: SourceMedia, tmp_path: Path,
                                                                    spool: Path) -> None:
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        assert not already_sealed(store, REF)
        await ingest_download(IngestPipeline(store, SETTINGS), _source(spool), await _download(media, spool))
        assert already_sealed(store, REF)
    finally:
        store.close()
    reopened = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        assert already_sealed(reopened, REF), "the station restarted: the recording is still known as sealed"
        other = RecordingRef(**{**REF.__dict__, "end_time": "2026-12-05T09:00:04"})
        assert not already_sealed(reopened, other), "control: another recording is not"
        head = reopened.ledger.head()[0]
        again = await ingest_download(IngestPipeline(reopened, SETTINGS), _source(spool),
                                      await _download(media, spool))
        assert again.raw_item is not None
        assert reopened.ledger.head()[0] == head, "offered again: nothing new acquired or sealed"
        assert reopened.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 2
        assert raw_key(REF) == raw_key(RecordingRef(**REF.__dict__))
    finally:
        reopened.close()


async def test_a_failed_conversion_still_seals_the_raw_ps_and_says_why(store: StationStore, spool: Path,
                                                                      media: SourceMedia) -> None:
    download = await _download(media, spool)
    # Only the audio packs survive: a PS with no video frame cannot become an MP4.
    audio_only = b"".join(p for p, _ in ps_packs(media) if p[14:].find(b"\x00\x00\x01\xe0") < 0)
    download.raw_ps.unlink()
    download.raw_ps.write_bytes(audio_only)
    done = await ingest_download(IngestPipeline(store, SETTINGS), _source(spool), download)
    assert done.conversion is None and done.mp4_item is None and done.raw_item is not None
    assert done.conversion_error is not None and "no H.264 or H.265 video" in done.conversion_error
    assert set(_manifests(store)) == {"raw-ps"}
    errors = [e for e in store.ledger.entries() if e.type == "error"]
    assert len(errors) == 1 and errors[0].item == done.raw_item and errors[0].data["stage"] == "convert"
    assert DEVICE in errors[0].data["original"]
    assert verify_store(store.layout.root).ok
    assert list(spool.iterdir()) == []


async def test_an_mp4_left_by_an_interrupted_attempt_is_made_again(media: SourceMedia, store: StationStore,
                                                                   spool: Path) -> None:
    download = await _download(media, spool)
    (spool / "dl-0001.mp4").write_bytes(b"half an mp4 from before a power cut")
    done = await ingest_download(IngestPipeline(store, SETTINGS), _source(spool), download)
    assert done.conversion_error is None and done.mp4_item is not None
    mp4 = _manifests(store)["mp4"]
    assert mp4["size"] > 1000 and mp4["media"]["streams"][0]["codec"] == "h264"
    assert verify_store(store.layout.root).ok


def test_media_damage_names_refused_foreign_datagrams_and_is_silent_without_them() -> None:
    from types import SimpleNamespace

    from edge.sources.gb28181.recordings import media_damage

    clean: Any = SimpleNamespace(invalid_packets=0, ssrc_mismatches=0, resyncs=0, dropped_frames=0,
                            refused_connections=0, refused_packets=0)
    assert media_damage(clean, {}) == []  # control
    spoofed: Any = SimpleNamespace(**{**clean.__dict__, "refused_packets": 42})
    assert media_damage(spoofed, {}) == ["42 UDP datagrams from another host than the device's refused"]
