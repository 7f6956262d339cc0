"""Two GB/T 28181 downloads at once count each other's space (edge.sources.gb28181.download_space): each
books what it expects to write in the store's one booking ledger, so the second is refused up front, with a
ledger entry naming the first's booking, while the first still needs the space; it is never started only to
be cut partway when the disk fills.

Real media receivers with their guard (the download's own booking passed as the station's scheduler passes
it), RTP over real TCP, a real pipeline, ffmpeg and store shared by two devices' downloads, one spool; the
disk is the rig's model behind the seams that read it (tests/gb28181/disk_rig.py). The first download's
device waits, its session open and its booking admitted, until the second's pass is over. Controls: with room
for both, both are received whole; a device listing an absurd size is refused while another download is in
progress, and alone is downloaded as before, its booking counted by no one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import edge.sources.gb28181.downloads as downloads_module
from edge.custody.ledger import EntryType
from edge.gb28181.media import (
    FLUSH_BYTES,
    ROOM_PER_RECEIVED_BYTE,
    EndReason,
    MediaTransport,
    receiver_keeping_free,
)
from edge.ingest.kept_space import COPY_BOOKING
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef, Transfer
from edge.sources.gb28181.downloads import (
    DownloadReport,
    SpaceBooked,
    WindowClosed,
    room_per_byte_downloaded,
)
from edge.sources.gb28181.recordings import INTERRUPTED_DISK_FULL, SealedDownload
from tests.gb28181.disk_rig import (
    RESERVE,
    ModelDisk,
    facts_as_scheduled,
    long_stream,
    new_spool,
    station_downloads,
)
from tests.gb28181.media_sender import send_tcp
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_source_downloads import CASE, DEVICE

OTHER_DEVICE = "34020000001320000077"
SSRC = 1100000777
PORTS = (39600, 39699)
PER_BYTE = ROOM_PER_RECEIVED_BYTE + 1  # the raw PS and the guard's room to seal it
SLACK = 2 * FLUSH_BYTES  # the guard's looks come a flush or so apart
BOOKED_BY_A_DOWNLOAD = "booked by 1 download(s) in progress"


@dataclass(frozen=True)
class Stream:
    size: int
    packets: list[bytes]


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    size, packets = long_stream(tmp_path_factory.mktemp("src"), SSRC)
    return Stream(size, packets)


class Device:
    """Streams the recording over TCP into a receiver opened as the station's platform opens it (the
    download's own booking passed); `gate`: the session waits, open, until it is set."""

    def __init__(self, stream: Stream, ports: tuple[int, int], gate: asyncio.Event | None = None) -> None:
        self.stream, self.ports, self.gate = stream, ports, gate
        self.downloads: GbDownloads | None = None
        self.started = asyncio.Event()
        self.ended: list[EndReason] = []
        self.received: list[int] = []
        self.held_or_booked: list[int] = []

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        assert self.downloads is not None and self.downloads.booked_space is not None, "a download books"
        receiver = await receiver_keeping_free(RESERVE)(
            MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=self.ports, ssrc=SSRC,
            raw_path=raw_path, idle_timeout_s=60.0, max_bytes=1 << 30, expected_peer_host=None,
            max_media_span_s=None, time_limit_s=None, progress_window_s=None, min_progress_s=None,
            space=self.downloads.booked_space)
        # What a writer that books nothing (a docking copy's receiver-side peers) keeps free meanwhile.
        self.held_or_booked.append(self.downloads.pipeline.kept_space.held_or_booked().bytes)
        self.started.set()
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 300.0)
        with contextlib.suppress(ConnectionError):  # the receiver closes the connection when it stops
            await send_tcp(self.stream.packets, receiver.local_port)
        outcome = await receiver.wait_closed()
        self.ended.append(outcome.ended)
        self.received.append(outcome.bytes)
        return Transfer(outcome, facts_as_scheduled(outcome, len(self.received), SSRC))


@contextlib.asynccontextmanager
async def two_devices(tmp_path: Path, first: Device, second: Device
                      ) -> AsyncIterator[tuple[IngestPipeline, GbDownloads, GbDownloads]]:
    """Two devices' downloads into one pipeline and store (reserve RESERVE), one spool."""
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE))
        spool = tmp_path / "spool"
        made = []
        for device_id, device in ((DEVICE, first), (OTHER_DEVICE, second)):
            source = GbRecordings(device_id, spool, station_id="TEST-STATION", case=CASE)
            device.downloads = GbDownloads(pipeline, source, device.start_download)
            made.append(device.downloads)
        yield pipeline, made[0], made[1]
    finally:
        store.close()


@dataclass
class Passes:
    first: Device
    second: Device
    second_report: DownloadReport
    refusals: list[dict[str, Any]]
    booked_after: int


async def _second_while_first_runs(tmp_path: Path, stream: Stream, monkeypatch: pytest.MonkeyPatch, *,
                                   level: int, second_size: int) -> Passes:
    """The first device's download opens its session and waits; the second device's pass runs meanwhile;
    then the first one's media comes."""
    spool = new_spool(tmp_path)
    ModelDisk(spool, level).install(monkeypatch)
    gate = asyncio.Event()
    first = Device(stream, PORTS, gate)
    second = Device(stream, (PORTS[0] + 50, PORTS[1]))
    async with two_devices(tmp_path, first, second) as (pipeline, first_downloads, second_downloads):
        first_pass = asyncio.ensure_future(
            first_downloads.download([replace(RECORDING, file_size_bytes=stream.size)]))
        try:
            await asyncio.wait_for(first.started.wait(), 120.0)
            second_ref = replace(RECORDING, device_id=OTHER_DEVICE, file_size_bytes=second_size)
            second_report = await second_downloads.download([second_ref])
        finally:
            gate.set()
            await first_pass
        refusals = [e.data for e in pipeline.store.ledger.entries()
                    if e.type == EntryType.ERROR and e.data.get("stage") == "store"]
        return Passes(first, second, second_report, refusals, len(pipeline.kept_space.booked()))


async def test_the_second_download_is_refused_up_front_naming_the_first_s_booking(
        tmp_path: Path, stream: Stream, monkeypatch: pytest.MonkeyPatch) -> None:
    # Room for either download alone, not for both.
    level = RESERVE + PER_BYTE * stream.size + 2 * stream.size + SLACK
    done = await _second_while_first_runs(tmp_path, stream, monkeypatch, level=level, second_size=stream.size)
    assert done.second.ended == [] and not done.second.started.is_set(), "the second never started"
    assert isinstance(done.second_report.stopped, SpaceBooked), done.second_report.stopped
    assert [r.device_id for r in done.second_report.waiting_for_room] == [OTHER_DEVICE]
    assert done.second_report.ingested == []
    [refusal] = done.refusals
    assert refusal["device_id"] == OTHER_DEVICE
    assert BOOKED_BY_A_DOWNLOAD in refusal["reason"] and BOOKED_BY_A_DOWNLOAD in refusal["held_or_booked"]
    assert "stays on the device" in refusal["reason"], refusal["reason"]
    assert RECORDING.file_path not in refusal["reason"], "the file name is only in `recording`, escaped"
    assert done.first.ended == [EndReason.CLOSED] and done.first.received == [stream.size], done.first.ended
    assert done.booked_after == 0, "every booking is given up once the downloads ended"


async def test_control_with_room_for_both_both_are_received_whole(
        tmp_path: Path, stream: Stream, monkeypatch: pytest.MonkeyPatch) -> None:
    level = RESERVE + 2 * PER_BYTE * stream.size + SLACK
    done = await _second_while_first_runs(tmp_path, stream, monkeypatch, level=level, second_size=stream.size)
    assert done.second_report.stopped is None and done.refusals == []
    assert done.second.ended == [EndReason.CLOSED] and done.second.received == [stream.size]
    assert done.first.ended == [EndReason.CLOSED] and done.first.received == [stream.size], done.first.ended
    assert done.booked_after == 0


async def test_a_device_listing_an_absurd_size_is_refused_and_blocks_no_other_download(
        tmp_path: Path, stream: Stream, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile FileSize larger than any disk while another download is in progress: refused at its own
    check, never admitted; the download in progress is received whole."""
    level = RESERVE + PER_BYTE * stream.size + 2 * stream.size + SLACK
    done = await _second_while_first_runs(tmp_path, stream, monkeypatch, level=level, second_size=1 << 62)
    assert not done.second.started.is_set() and isinstance(done.second_report.stopped, SpaceBooked)
    [refusal] = done.refusals
    assert BOOKED_BY_A_DOWNLOAD in refusal["reason"] and refusal["needed_bytes"] > level, refusal
    assert done.first.ended == [EndReason.CLOSED] and done.first.received == [stream.size], done.first.ended
    assert done.booked_after == 0


async def test_alone_a_device_listing_an_absurd_size_is_downloaded_as_before_counted_by_no_one(
        tmp_path: Path, stream: Stream, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no other booking in progress, a FileSize larger than the disk (false, or hostile) does not keep
    the recording from being asked (review 28): the download goes on booking nothing, never admitted, so a
    writer that books nothing counts none of it; the disk holds the recording, which is received whole."""
    spool = new_spool(tmp_path)
    ModelDisk(spool, RESERVE + PER_BYTE * stream.size + SLACK).install(monkeypatch)
    device = Device(stream, PORTS)
    async with station_downloads(tmp_path, spool, device.start_download) as downloads:
        device.downloads = downloads
        report = await downloads.download([replace(RECORDING, file_size_bytes=1 << 62)])
        assert report.stopped is None and downloads.pipeline.kept_space.booked() == []
    assert device.held_or_booked == [0], "its booking is counted by no writer that books nothing"
    assert device.ended == [EndReason.CLOSED] and device.received == [stream.size], device.ended


async def test_what_a_download_books_for_a_recording_as_listed(tmp_path: Path) -> None:
    """Its listed FileSize; without one (or a FileSize of 0) the configured estimate; one byte more than a
    cut-short copy received when that is more; never more than the receiver takes."""
    async def never(_ref: RecordingRef, _raw: Path) -> Transfer:
        raise AssertionError("not downloaded")

    async with station_downloads(tmp_path, new_spool(tmp_path), never) as downloads:
        configured = GbDownloads(downloads.pipeline, downloads.source, never, max_recording_bytes=10 << 20,
                                 unlisted_recording_bytes=3 << 20)
        cut = SealedDownload("item-1", 1, complete=False, interrupted=INTERRUPTED_DISK_FULL,
                             received_bytes=5 << 20)
        assert configured.expected_bytes(RECORDING, []) == RECORDING.file_size_bytes
        assert configured.expected_bytes(replace(RECORDING, file_size_bytes=None), []) == 3 << 20
        assert configured.expected_bytes(replace(RECORDING, file_size_bytes=0), []) == 3 << 20
        assert configured.expected_bytes(RECORDING, [cut]) == (5 << 20) + 1
        assert configured.expected_bytes(replace(RECORDING, file_size_bytes=1 << 62), []) == 10 << 20
        larger = GbDownloads(downloads.pipeline, downloads.source, never, max_recording_bytes=1 << 20,
                             unlisted_recording_bytes=3 << 20)
        assert larger.expected_bytes(replace(RECORDING, file_size_bytes=None), []) == 1 << 20
        with pytest.raises(ValueError, match="unlisted_recording_bytes must be positive"):
            GbDownloads(downloads.pipeline, downloads.source, never, unlisted_recording_bytes=0)


@pytest.mark.parametrize("file_size", [0, None], ids=["listed-0", "control-unlisted"])
async def test_a_file_size_of_0_is_tight_by_the_size_it_would_book(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_size: int | None) -> None:
    """`_tight_for` and `expected_bytes` agree on one size: a FileSize of 0 is none (the configured
    estimate), not a recording of 0 bytes whose retry after a cut copy needs room for 2 (review revgb).
    Control: the same with no FileSize listed; and the disk with room for that size is not tight."""
    async def never(_ref: RecordingRef, _raw: Path) -> Transfer:
        raise AssertionError("not downloaded")

    spool = new_spool(tmp_path)
    async with station_downloads(tmp_path, spool, never) as downloads:
        configured = GbDownloads(downloads.pipeline, downloads.source, never, max_recording_bytes=10 << 20,
                                 unlisted_recording_bytes=3 << 20)
        cut = SealedDownload("item-1", 1, complete=False, interrupted=INTERRUPTED_DISK_FULL, received_bytes=1)
        ref = replace(RECORDING, file_size_bytes=file_size)
        expected = configured.expected_bytes(ref, [cut])
        assert expected == 3 << 20
        per_byte = room_per_byte_downloaded(downloads.pipeline.settings.min_free_bytes)
        needed = downloads.pipeline.settings.min_free_bytes + per_byte * expected
        for free, tight in ((needed - 1, True), (needed, False)):
            monkeypatch.setattr(downloads_module, "free_bytes", lambda _path, free=free: free)
            assert await configured._tight_for(ref, [cut]) is tight, (free, needed)


async def test_a_booking_before_it_still_to_be_judged_counts_for_its_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks between booking writers count every booking before their own, admitted or not (a docking
    copy whose check has not run yet): the download waits (a wait, never a cut). Control: that booking
    gone, the same download starts."""
    size = 1 << 20
    spool = new_spool(tmp_path)
    ModelDisk(spool, RESERVE + 10 * size).install(monkeypatch)
    asked: list[RecordingRef] = []

    async def start(ref: RecordingRef, _raw: Path) -> Transfer:
        asked.append(ref)
        raise WindowClosed("the test stops here")

    ref = replace(RECORDING, file_size_bytes=size)
    async with station_downloads(tmp_path, spool, start) as downloads:
        kept_space = downloads.pipeline.kept_space
        with kept_space.booking_for(COPY_BOOKING, "usb 1-1.3", 8 * size) as copy:
            assert not copy.admitted
            report = await downloads.download([ref])
        assert asked == [] and isinstance(report.stopped, SpaceBooked), report.stopped
        report = await downloads.download([ref])
        assert asked == [ref] and isinstance(report.stopped, WindowClosed), report.stopped
        assert kept_space.booked() == []
