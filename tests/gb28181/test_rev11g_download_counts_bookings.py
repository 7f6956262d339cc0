"""A GB/T 28181 download's free-space guard counts the store's bookings (edge.ingest.kept_space): a docking
copy that passed its check and has not yet written books its bytes, and a download receiving meanwhile on
the same disk must keep them free, or the copy fails half way (store full) or a room's margin is eaten. The
receiver was wired (edge.station) to count only what the rooms recording hold.

Real media receiver with its guard, RTP over a real TCP connection, real pipeline, ffmpeg and store
(tests/gb28181/disk_rig.py: the spool's disk is a model behind the seams that read it); the guard reads
`KeptSpace.held_or_booked` of the pipeline's booking ledger, what the station passes it. The docking copy
books as the download starts (after the pass looked at the disk), as a copy does before its check.
Controls: the same download with the booking released before the media comes is received whole; a download
alone on a disk that fits it is received whole, its own copy into the store (which books) not counted
against it. And through the station: the receiver the station's platform opens counts a booking too."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.custody.ledger import EntryType
from edge.gb28181.media import FLUSH_BYTES, ROOM_PER_RECEIVED_BYTE, EndReason, MediaTransport
from edge.ingest.kept_space import COPY_BOOKING, Booking, KeptSpace
from edge.sources.gb28181 import GbDownloads
from tests.gb28181.disk_rig import RESERVE, HonestDevice, ModelDisk, long_stream, new_spool, station_downloads
from tests.gb28181.media_sender import send_tcp
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.station.harness import simulated_station

SSRC = 1100000711
PORTS = (39400, 39499)
DOCKED = "usb 1-1.3:DCIM/100MEDIA/0001.MP4"  # the docking copy's booking
BOOKED_SAYS = "booked by 1 copy(s) in progress"


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[bytes]]:
    return long_stream(tmp_path_factory.mktemp("src"), SSRC)


class DockingMeanwhile(HonestDevice):
    """The device, and a docking copy on the station that books `booked` bytes as the download's receiver
    opens; `released_before_media`: the copy ends (its booking given up) before any media comes."""

    def __init__(self, packets: list[bytes], kept_space: KeptSpace, booked: int, *,
                 released_before_media: bool) -> None:
        super().__init__(packets, ssrc=SSRC, ports=PORTS, idle_timeout_s=30.0,
                         kept_free=kept_space.held_or_booked)
        self.kept_space, self.booked, self.released_before_media = kept_space, booked, released_before_media
        self.booking: Booking | None = None

    def session_started(self) -> None:
        self.booking = self.kept_space.book(COPY_BOOKING, DOCKED, self.booked)
        self.kept_space.admit(self.booking)  # a copy that passed its check (see the module docstring)
        if self.released_before_media:
            self.session_ended()

    def session_ended(self) -> None:
        if self.booking is not None:
            self.kept_space.release(self.booking)
            self.booking = None


@dataclass
class Pass:
    """What a pass did: the device's sessions, the recording's size, the ledger's `error` entries of the
    stages `media` and `store`, and the bookings left once it ended."""

    device: DockingMeanwhile
    size: int
    media: list[dict[str, Any]]
    store: list[dict[str, Any]]
    booked_after: list[Booking]


def _errors(downloads: GbDownloads, stage: str) -> list[dict[str, Any]]:
    return [e.data for e in downloads.pipeline.store.ledger.entries()
            if e.type == EntryType.ERROR and e.data.get("stage") == stage]


def _fits_alone(size: int) -> int:
    """A disk level with room for the download alone: the reserve, the raw PS and the guard's 3 x."""
    return RESERVE + (ROOM_PER_RECEIVED_BYTE + 1) * size + 2 * FLUSH_BYTES


async def _download_while_docking(tmp_path: Path, stream: tuple[int, list[bytes]],
                                  monkeypatch: pytest.MonkeyPatch, *,
                                  released_before_media: bool) -> Pass:
    size, packets = stream
    spool = new_spool(tmp_path)
    ModelDisk(spool, _fits_alone(size)).install(monkeypatch)
    async with station_downloads(tmp_path, spool, lambda ref, raw: device.start_download(ref, raw)) \
            as downloads:
        # Booked: twice the recording, which the disk holds beside the reserve, but not beside the download.
        device = DockingMeanwhile(packets, downloads.pipeline.kept_space, 2 * size,
                                  released_before_media=released_before_media)
        await downloads.download([RECORDING])
        return Pass(device, size, _errors(downloads, "media"), _errors(downloads, "store"),
                    downloads.pipeline.kept_space.booked())


async def test_a_download_while_a_copy_is_booked_stops_disk_full_naming_the_booking(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    done = await _download_while_docking(tmp_path, stream, monkeypatch, released_before_media=False)
    device, size = done.device, done.size
    assert device.ended == [EndReason.DISK_FULL], (device.ended, device.received)
    assert 0 < device.received[0] < size
    assert len(done.media) == 1, done.media
    detail = done.media[0]["transfer"]["detail"]
    assert f"the {2 * size} other writers hold or booked ({2 * size} {BOOKED_SAYS}" in detail, detail
    assert DOCKED not in detail, "a device's file name is not printed"
    [cut] = done.store
    assert "cut short by the station's disk running low" in cut["reason"]
    assert done.booked_after == [], "the download's own copy gave its booking up"


async def test_control_the_same_download_with_the_booking_released_is_received_whole(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    done = await _download_while_docking(tmp_path, stream, monkeypatch, released_before_media=True)
    assert done.device.ended == [EndReason.CLOSED] and done.device.received == [done.size], done.device.ended
    assert done.media == [] and done.store == []


async def test_a_retry_waits_while_a_copy_is_booked_and_names_it(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The next pass after the cut, with a copy booked before it looks at the disk (`_tight_for`): the
    recording waits, the reason names the booking; once the copy is done, the retry is received whole."""
    size, packets = stream
    spool = new_spool(tmp_path)
    ModelDisk(spool, _fits_alone(size)).install(monkeypatch)
    async with station_downloads(tmp_path, spool, lambda ref, raw: device.start_download(ref, raw)) \
            as downloads:
        kept_space = downloads.pipeline.kept_space
        device = DockingMeanwhile(packets, kept_space, 2 * size, released_before_media=False)
        await downloads.download([RECORDING])
        assert device.ended == [EndReason.DISK_FULL]
        device.booked = 0  # no copy books as the retry starts
        with kept_space.booking_for(COPY_BOOKING, DOCKED, 2 * size) as booking:
            kept_space.admit(booking)
            report = await downloads.download([RECORDING])
        assert report.waiting_for_room == [RECORDING] and device.ended == [EndReason.DISK_FULL]
        [tight] = [e for e in _errors(downloads, "store")
                   if "not downloaded until there is room" in e["reason"]]
        assert f"{2 * size} {BOOKED_SAYS}" in tight["reason"], tight["reason"]
        await downloads.download([RECORDING])  # control: the copy is done
        assert device.ended == [EndReason.DISK_FULL, EndReason.CLOSED] and device.received[1] == size


async def test_a_download_alone_is_not_held_back_by_its_own_copy_s_booking(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Its own copy into the store books (COPY_BOOKING) once its receiver has closed: never counted by
    its own guard (which keeps ROOM_PER_RECEIVED_BYTE x what came for that copy already)."""
    size, packets = stream
    spool = new_spool(tmp_path)
    ModelDisk(spool, _fits_alone(size)).install(monkeypatch)
    async with station_downloads(tmp_path, spool, lambda ref, raw: device.start_download(ref, raw)) \
            as downloads:
        kept_space = downloads.pipeline.kept_space
        device = HonestDevice(packets, ssrc=SSRC, ports=PORTS, idle_timeout_s=30.0,
                              kept_free=kept_space.held_or_booked)
        booked: list[tuple[str, int]] = []
        real_book = kept_space.book

        def book(kind: str, what: str, size: int) -> Booking:
            booked.append((kind, size))
            return real_book(kind, what, size)

        monkeypatch.setattr(kept_space, "book", book)
        await downloads.download([RECORDING])
        assert device.ended == [EndReason.CLOSED] and device.received == [size], device.ended
        assert (COPY_BOOKING, size) in booked, f"its raw PS's copy into the store books: {booked}"
        assert _errors(downloads, "media") == [] and _errors(downloads, "store") == []
        assert kept_space.booked() == []


@contextlib.contextmanager
def _spool_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-gbkeep-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("booked", [True, False], ids=["booked", "control-released"])
async def test_the_station_s_receiver_counts_the_bookings(
        tmp_path: Path, stream: tuple[int, list[bytes]], booked: bool) -> None:
    """The station's own wiring: the platform's receiver seam (edge.station), on the real disk. A booking
    larger than any disk stops the download at its first look (the harness's reserve is 0: the guard is on
    all the same); released, the same stream is received whole."""
    size, packets = stream
    password = tmp_path / "gb-password"
    password.write_text("weak-1234\n")
    password.chmod(0o600)
    section = {"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0,
               "devices": {"34020000001320000071": {"password": f"file:{password}"}}}
    async with simulated_station(tmp_path / "st", [], gb28181=section) as station:
        agent = station.agent
        assert agent.gb28181 is not None and agent.pipeline is not None
        open_receiver = agent.gb28181.sessions._open_receiver
        assert open_receiver is not None
        with _spool_dir() as spool, contextlib.ExitStack() as held:
            if booked:
                kept_space = agent.pipeline.kept_space
                kept_space.admit(held.enter_context(kept_space.booking_for(COPY_BOOKING, DOCKED, 1 << 60)))
            receiver = await open_receiver(
                MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
                raw_path=spool / "rec.ps", idle_timeout_s=30.0, max_bytes=1 << 40, expected_peer_host=None,
                max_media_span_s=None, time_limit_s=None, progress_window_s=None, min_progress_s=None)
            with contextlib.suppress(ConnectionError):  # the receiver closes the connection when it stops
                await send_tcp(packets, receiver.local_port)
            outcome = await receiver.wait_closed()
    if booked:
        assert outcome.ended is EndReason.DISK_FULL, (outcome.ended, outcome.detail)
        assert f"{1 << 60} {BOOKED_SAYS}" in outcome.detail and 0 < outcome.bytes < size
    else:
        assert outcome.ended is EndReason.CLOSED and outcome.bytes == size, (outcome.ended, outcome.detail)
