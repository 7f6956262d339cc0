"""Each recording downloaded once (edge/sources/gb28181/downloads.py): recordings listed from RecordInfo items
are downloaded one after the other through a real media receiver fed by a real RTP sender over UDP, into the
real pipeline and store; those already sealed are not asked for again, also after a restart; a session that
brings no media or cannot be made is an `error` entry and the next recording is still downloaded.

The SIP side (INVITE, 200 OK, MediaStatus 121) is the platform's and is stood in for by `start_download`
here: the seam the composition root fills with the platform's Download session."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from drivers.gb28181.manscdp import RecordItem
from drivers.gb28181.ps import Codec
from edge.gb28181.media import MediaTransport, open_receiver
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef, Transfer
from edge.verify.station import verify_store
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source, ps_packs, rtp_packets, send_udp
from tests.prerequisites import require

DEVICE = "34020000001320000009"
CHANNEL = "34020000001310000009"
SSRC = 1340200009
CASE = {"case_number": "", "location": "", "collector": "", "subject": "", "important": False,
        "category": "", "retention": "standard"}
SETTINGS = IngestSettings(min_free_bytes=0, chunk_bytes=64 * 1024)


def _item(minute: int, name: str) -> RecordItem:
    return RecordItem(device_id=CHANNEL, name=name, file_path=f"/sd/rec/{minute:02d}.mp4",
                      address="巡逻 3 组", start_time=datetime(2026, 12, 5, 9, minute),
                      end_time=datetime(2026, 12, 5, 9, minute, 3), secrecy=0, type="time",
                      recorder_id="110002", file_size_bytes=123456)


RECORDINGS = [RecordingRef.from_record_item(DEVICE, _item(m, f"执法记录 {m}")) for m in (1, 2, 3)]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=2)


class Device:
    """Plays the device's media for each Download session: streams the recording over real UDP into the
    receiver the session opened; `silent` recordings send nothing, `refused` ones fail to start."""

    def __init__(self, media: SourceMedia, *, silent: frozenset[str] = frozenset(),
                 refused: frozenset[str] = frozenset()) -> None:
        self.packets = rtp_packets(ps_packs(media), ssrc=SSRC)
        self.silent, self.refused = silent, refused
        self.asked: list[str] = []

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        self.asked.append(ref.start_time)
        if ref.start_time in self.refused:
            raise RuntimeError("device answered 486 Busy Here")
        receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=(33000, 33999),
                                       ssrc=SSRC, raw_path=raw_path, idle_timeout_s=1.0, max_bytes=1 << 30)
        if ref.start_time not in self.silent:
            await send_udp(self.packets, receiver.local_port)
        outcome = await receiver.wait_closed()
        return Transfer(outcome, {"call_id": f"{ref.start_time}@station", "ssrc_offered": SSRC})


def _downloads(store: StationStore, spool: Path, device: Device) -> GbDownloads:
    source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
    return GbDownloads(IngestPipeline(store, SETTINGS), source, device.start_download,
                       device_clock_offset_ms=lambda: 350)


def _sealed_roles(store: StationStore) -> list[tuple[str, str]]:
    repository = IngestRepository(store)
    found = []
    for (item,) in store.conn.execute("SELECT item FROM items"):
        record = repository.item(item)
        assert record is not None and record.manifest is not None
        found.append((record.manifest["time"]["recorded_start"], record.manifest["original"]["role"]))
    return sorted(found)


async def test_each_recording_is_downloaded_once_and_failures_do_not_stop_the_rest(
    media: SourceMedia, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    first, second, third = (r.start_time for r in RECORDINGS)
    device = Device(media, silent=frozenset({second}))
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        report = await _downloads(store, spool, device).download(RECORDINGS)
        assert device.asked == [first, second, third]
        assert [r.start_time for r, _ in report.failed] == [second]
        assert "no media came (idle" in report.failed[0][1]
        assert _sealed_roles(store) == [(first, "mp4"), (first, "raw-ps"), (third, "mp4"), (third, "raw-ps")]
        errors = [e.data for e in store.ledger.entries() if e.type == "error"]
        assert len(errors) == 1 and errors[0]["stage"] == "download" and second in errors[0]["original"]
        repository = IngestRepository(store)
        records = [repository.item(i) for (i,) in store.conn.execute("SELECT item FROM items")]
        raws = [r.manifest for r in records if r is not None and r.manifest is not None
                and r.manifest["original"]["role"] == "raw-ps"]
        assert sorted(m["original"]["name"] for m in raws) == ["执法记录 1", "执法记录 3"]
        assert {m["original"]["address"] for m in raws} == {"巡逻 3 组"}
        assert {m["original"]["file_size_bytes"] for m in raws} == {123456}
        assert {m["time"]["device_clock_offset_ms"] for m in raws} == {350}
        assert {m["time"]["recorded_start"] for m in raws} == {"2026-12-05T09:01:00", "2026-12-05T09:03:00"}
        assert list(spool.iterdir()) == [], "nothing left in the spool, not even the silent one's empty file"
    finally:
        store.close()

    # A restart: the listing comes again; only the one never sealed is asked for.
    device = Device(media, refused=frozenset({second}))
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        report = await _downloads(store, spool, device).download(RECORDINGS)
        assert device.asked == [second]
        assert len(report.skipped) == 2 and "486 Busy Here" in report.failed[0][1]
        device = Device(media)
        report = await _downloads(store, spool, device).download(RECORDINGS)
        assert device.asked == [second] and report.failed == []
        assert len(_sealed_roles(store)) == 6
        assert verify_store(store.layout.root).ok
    finally:
        store.close()


async def test_a_recording_of_another_device_is_refused(media: SourceMedia, tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        other = RecordingRef.from_record_item("34020000001320000099", _item(1, "x"))
        with pytest.raises(ValueError, match="34020000001320000099"):
            await _downloads(store, tmp_path / "spool", Device(media)).download([other])
    finally:
        store.close()


class ClockEpochDevice(Device):
    """A device whose platform knows which clock stamped each recording: the session's facts carry the
    offset of the clock before the station set it (edge.gb28181.platform.device_clock_offset_ms)."""

    def __init__(self, media: SourceMedia, offsets: dict[str, int | None]) -> None:
        super().__init__(media)
        self.offsets = offsets

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        transfer = await super().start_download(ref, raw_path)
        if ref.start_time in self.offsets:
            offset = self.offsets[ref.start_time]
            unknown = {} if offset is not None else {"device_clock_unknown": "ambiguous"}
            return Transfer(transfer.outcome, {**transfer.facts, "device_clock_offset_ms": offset, **unknown})
        return transfer


async def test_each_recording_carries_the_offset_of_the_clock_that_stamped_it(
    media: SourceMedia, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    first, second, third = (r.start_time for r in RECORDINGS)
    a_year = -365 * 86400 * 1000
    # first: made before the station set the clock (a year behind); second: its stamp is ambiguous;
    # third: the session did not say (an older platform): the device's latest offset (350) stands.
    device = ClockEpochDevice(media, {first: a_year, second: None})
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        await _downloads(store, spool, device).download(RECORDINGS)
        repository = IngestRepository(store)
        offsets, unknown = {}, {}
        for (item,) in store.conn.execute("SELECT item FROM items"):
            record = repository.item(item)
            assert record is not None and record.manifest is not None
            if record.manifest["original"]["role"] == "raw-ps":
                time_block = record.manifest["time"]
                offsets[time_block["recorded_start"]] = time_block["device_clock_offset_ms"]
                unknown[time_block["recorded_start"]] = time_block.get("device_clock_unknown")
        assert offsets == {first: a_year, second: None, third: 350}, offsets
        # The manifest says why an offset is missing (a stamp in the overlap of a clock set back).
        assert unknown == {first: None, second: "ambiguous", third: None}, unknown
    finally:
        store.close()
