"""The disk-model rig of the download disk-full reviews (28 to 33): a modelled spool disk behind the seams
that read it, an honest device streaming a real recording into a real receiver with its free-space guard, the
downloads with a real pipeline and store, and a receiver drained and closed after MediaStatus 121.

What is real: ffmpeg-made H.264 muxed into PS, RTP over real TCP connections, the media receiver, the ingest
pipeline, ffmpeg conversion and the station store. What is modelled is the disk's answers only, through the
receiver's `_write_and_measure` / `_write_all` / `_free_bytes_of` / `_free_bytes_in` seams and the downloads'
`free_bytes`.

Hooks: `ModelDisk.write_and_measure` (override to have a neighbour arrive, or refuse a write);
`HonestDevice.session_started` / `session_ended` (what the disk does around each session: a neighbour
docking as a retry begins, gone by the next pass). `StalledDisk`: a write stuck until the test releases it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

import edge.gb28181.media as media_module
import edge.sources.gb28181.downloads as downloads_module
from drivers.gb28181.ps import Codec
from edge.custody.ledger import EntryType
from edge.gb28181.media import (
    FLUSH_BYTES,
    EndReason,
    MediaOutcome,
    MediaReceiver,
    MediaTransport,
    SpaceTaken,
    receiver_keeping_free,
)
from edge.gb28181.sessions import EndReason as SessionEnd
from edge.gb28181.sessions import SessionResult
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef, Transfer
from edge.sources.gb28181.downloads import GIVEN_UP_STAGE, StartDownload
from edge.sources.gb28181.give_up_span import TryTimes
from edge.sources.gb28181.recordings import INTERRUPTED_DISK_FULL
from edge.sources.gb28181.scheduler import GbDownloadScheduler, completeness
from tests.gb28181.media_sender import HAVE_FFMPEG, make_source, ps_packs, rtp_packets, send_tcp
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_source_downloads import CASE, DEVICE
from tests.prerequisites import require

RESERVE = 1 << 20  # the store's [offload] min_free_bytes, which the receiver's guard keeps too
EXPECTED_S = 3.0  # RECORDING: 08:00:00 to 08:00:03
WriteAll = Callable[[int, bytes | bytearray], None]


def long_stream(folder: Path, ssrc: int) -> tuple[int, list[bytes]]:
    """A 100 s recording at 4 Mbit/s: its raw PS size and its RTP packets (outlasting many of the guard's
    looks at the disk)."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    packs = ps_packs(make_source(folder, Codec.H264, seconds=100, bitrate="4M"))
    size = sum(len(p) for p, _ in packs)
    assert size > 16 * FLUSH_BYTES, "the stream must outlast many of the guard's looks at the disk"
    return size, rtp_packets(packs, ssrc=ssrc)


def repeated_recording(folder: Path, times: int, ssrc: int) -> list[bytes]:
    """RECORDING's 3 s `times` over as RTP packets (its PTS restart each time, which the receiver only
    counts): a stream longer than the receiver's write buffer holds past a stall."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    packs = ps_packs(make_source(folder, Codec.H264, seconds=EXPECTED_S)) * times
    assert sum(len(p) for p, _ in packs) > 4 * FLUSH_BYTES, "more than the write buffer holds past a stall"
    return rtp_packets(packs, ssrc=ssrc)


def short_recording(folder: Path, ssrc: int) -> list[bytes]:
    """RECORDING's 3 s as RTP packets."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return rtp_packets(ps_packs(make_source(folder, Codec.H264, seconds=3)), ssrc=ssrc)


class ModelDisk:
    """The spool's disk: `level` bytes free with the spool empty, less what the spool's files hold, less
    what a neighbour (another device's download, a docked camera's offload into the store) holds now."""

    def __init__(self, spool: Path, level: int) -> None:
        self.spool, self.level, self.neighbour = spool, level, 0
        self.also_held: list[Path] = []  # more folders on the disk (the store's items, when it is there too)
        self.real_write_all: WriteAll = media_module._write_all

    def held(self) -> int:
        return sum(_held(folder) for folder in (self.spool, *self.also_held))

    def free(self) -> int:
        return self.level - self.held() - self.neighbour

    def write_and_measure(self, fd: int, data: bytes | bytearray) -> int:
        """The receiver's write and its look at the disk after it (a hook: override to refuse)."""
        self.real_write_all(fd, data)
        return self.free()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Put the model behind the receiver's and the downloads' seams."""
        monkeypatch.setattr(media_module, "_write_and_measure", self.write_and_measure)
        monkeypatch.setattr(media_module, "_free_bytes_of", lambda _fd: self.free())
        monkeypatch.setattr(media_module, "_free_bytes_in", lambda _directory: self.free())
        monkeypatch.setattr(downloads_module, "free_bytes", lambda _path: self.free())


def _held(folder: Path) -> int:
    total = 0
    for parent, _dirs, files in os.walk(folder):
        total += sum(os.stat(os.path.join(parent, name), follow_symlinks=False).st_size for name in files)
    return total


def facts_as_scheduled(outcome: MediaOutcome, call: int, ssrc: int) -> dict[str, object]:
    """A transfer's facts as the scheduler makes them for one the guard or a refused write ended
    (`_interruption`: disk-full), or for a whole one."""
    facts: dict[str, object] = {"call_id": f"{call}@station", "ssrc_offered": ssrc}
    if outcome.ended is EndReason.DISK_FULL:
        facts.update(complete=False, interrupted=INTERRUPTED_DISK_FULL,
                     incomplete="the station's disk ran low during the download (the store's reserve)")
    else:
        facts.update(complete=True)
    return facts


class HonestDevice:
    """Streams the whole recording over TCP into the receiver the session opened (with the guard) and
    records how each session went. `max_buffered_bytes` 2 x FLUSH_BYTES (the least allowed) makes TCP
    reading pause past it: the guard's cut lands within a few flushes of its look on a loaded machine.
    `kept_free`: what the guard keeps beyond RESERVE, as the station passes it (None: the reserve only)."""

    def __init__(self, packets: list[bytes], *, ssrc: int, ports: tuple[int, int],
                 idle_timeout_s: float = 60.0, max_buffered_bytes: int | None = None,
                 kept_free: Callable[[], SpaceTaken] | None = None) -> None:
        self.packets, self.ssrc, self.ports = packets, ssrc, ports
        self.idle_timeout_s, self.max_buffered_bytes = idle_timeout_s, max_buffered_bytes
        self.kept_free = kept_free
        self.received: list[int] = []
        self.written: list[int | None] = []
        self.ended: list[EndReason] = []
        self.refused: list[tuple[str | None, int | None]] = []

    def session_started(self) -> None:
        """Hook: the receiver is open, nothing sent yet (after `_tight_for` looked at the disk)."""

    def session_ended(self) -> None:
        """Hook: the session is over, its copy not yet sealed."""

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        buffered: dict[str, object] = {} if self.max_buffered_bytes is None else {
            "max_buffered_bytes": self.max_buffered_bytes}
        # The download's own booking, as the station's platform passes it (edge.sources.gb28181.scheduler).
        downloads = _DOWNLOADS_OF_SPOOL.get(raw_path.parent)
        if downloads is not None and downloads.booked_space is not None:
            buffered["space"] = downloads.booked_space
        receiver = await receiver_keeping_free(RESERVE, kept_free=self.kept_free)(
            MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=self.ports, ssrc=self.ssrc,
            raw_path=raw_path, idle_timeout_s=self.idle_timeout_s, max_bytes=1 << 30, expected_peer_host=None,
            max_media_span_s=None, time_limit_s=None, progress_window_s=None, min_progress_s=None,
            **buffered)
        self.session_started()
        try:
            with contextlib.suppress(ConnectionError):  # the receiver closes the connection when it stops
                await send_tcp(self.packets, receiver.local_port)
            outcome = await receiver.wait_closed()
        finally:
            self.session_ended()
        self.received.append(outcome.bytes)
        self.written.append(outcome.bytes_written)
        self.ended.append(outcome.ended)
        self.refused.append((outcome.write_refused, outcome.write_refused_free_bytes))
        return Transfer(outcome, facts_as_scheduled(outcome, len(self.received), self.ssrc))


class PassClock:
    """The station's wall and monotonic clocks as the downloads read them, moved on by the test between
    passes (`advance`): days of passes in a test's seconds."""

    def __init__(self, wall: float = 1_790_000_000.0, mono: float = 1000.0) -> None:
        self.at, self.mono = wall, mono

    def wall(self) -> float:
        return self.at

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float, *, wall_s: float | None = None) -> None:
        """Both clocks `seconds` on (the wall clock `wall_s` instead, when given: a step of it)."""
        self.mono += seconds
        self.at += seconds if wall_s is None else wall_s


@contextlib.asynccontextmanager
async def station_downloads(tmp_path: Path, spool: Path, start_download: StartDownload, *,
                            clock: PassClock | None = None) -> AsyncIterator[GbDownloads]:
    """The downloads of DEVICE into a real pipeline and store (`tmp_path`/store, reserve RESERVE), spool
    `spool`; `clock`: the station's clocks as the downloads read them (None: the real ones)."""
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE))
        tries = None if clock is None else TryTimes(clock.wall, clock.monotonic)
        downloads = GbDownloads(pipeline, source, start_download, try_times=tries)
        _DOWNLOADS_OF_SPOOL[spool] = downloads
        yield downloads
    finally:
        _DOWNLOADS_OF_SPOOL.pop(spool, None)
        store.close()


# The rig's downloads by their spool: a device's receiver gets the download's booking from them, as the
# station's scheduler passes it to the platform.
_DOWNLOADS_OF_SPOOL: dict[Path, GbDownloads] = {}


def new_spool(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir()
    return spool


def measured(write: WriteAll) -> Callable[[int, bytes | bytearray], int]:
    """`write`, then the free bytes of the file's real disk (the receiver's `_write_and_measure`)."""

    def write_and_measure(fd: int, data: bytes | bytearray) -> int:
        write(fd, data)
        stats = os.fstatvfs(fd)
        return stats.f_bavail * stats.f_frsize

    return write_and_measure


async def receive_after_121(raw: Path, packets: list[bytes], *, ssrc: int, ports: tuple[int, int],
                            call_id: str) -> tuple[MediaOutcome, dict[str, object]]:
    """The device sends the recording and keeps its connection (it says 121 over SIP); the session drains
    the receiver (guard on) and closes it. The outcome, and the scheduler's own `completeness` verdict."""
    receiver = await receiver_keeping_free(1)(
        MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=ports, ssrc=ssrc, raw_path=raw,
        idle_timeout_s=30.0, max_bytes=1 << 30, expected_peer_host=None, max_media_span_s=None,
        time_limit_s=None, progress_window_s=None, min_progress_s=None)
    writer = await send_tcp(packets, receiver.local_port, close=False)
    try:
        await receiver.drain()  # as the session does on MediaStatus 121
        await receiver.close()
        outcome = await receiver.wait_closed()
    finally:
        writer.close()
    result = SessionResult(call_id=call_id, end_reason=SessionEnd.FILE_END, ssrc_offered=ssrc,
                           ssrc_answered=ssrc, ssrc_answer_text=str(ssrc), ssrc_used=ssrc,
                           file_size_bytes=None, outcome=outcome)
    return outcome, completeness(result, RECORDING, EXPECTED_S)


class StalledDisk:
    """The raw PS's disk stalling (a loaded box, NFS latency): the first write blocks in the receiver's
    worker until `release()`, however long that takes; later writes go through. Deterministic: what the
    receiver does while its write is stuck does not depend on how loaded the machine is."""

    def __init__(self) -> None:
        self._gate = threading.Event()
        self.held_bytes: int | None = None  # the stuck write's size, once it began
        self._real_write_all: WriteAll = media_module._write_all

    def write_all(self, fd: int, data: bytes | bytearray) -> None:
        if self.held_bytes is None:
            self.held_bytes = len(data)
            if not self._gate.wait(STALL_BOUND_S):
                raise TimeoutError("the stalled write was never released (the test's own bug)")
        self._real_write_all(fd, data)

    def release(self) -> None:
        self._gate.set()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Put the stall behind the receiver's write seams (the disk's free space is the real one's)."""
        monkeypatch.setattr(media_module, "_write_all", self.write_all)
        monkeypatch.setattr(media_module, "_write_and_measure", measured(self.write_all))


STALL_BOUND_S = 120.0  # a stalled write released by no test fails rather than hang the run


def given_up_reasons(downloads: GbDownloads) -> list[str]:
    """The reasons of the given-up entries on the downloads' ledger."""
    return [str(e.data.get("reason")) for e in downloads.pipeline.store.ledger.entries()
            if e.type == EntryType.ERROR and e.data.get("stage") == GIVEN_UP_STAGE]


async def udp_receiver(raw_path: Path, *, ports: tuple[int, int], ssrc: int) -> MediaReceiver:
    """A UDP receiver (guard on) whose write buffer is the least allowed (2 x FLUSH_BYTES): a stalled disk
    soon outlasts it."""
    return await receiver_keeping_free(1)(
        MediaTransport.UDP, bind_host="127.0.0.1", port_range=ports, ssrc=ssrc, raw_path=raw_path,
        idle_timeout_s=30.0, max_bytes=1 << 30, expected_peer_host=None, max_media_span_s=None,
        time_limit_s=None, progress_window_s=None, min_progress_s=None, max_buffered_bytes=2 * FLUSH_BYTES)


async def receiver_ended(receiver: MediaReceiver, bound_s: float = 60.0) -> None:
    """Until the receiver has ended (datagrams already sent may still be on their way to it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while receiver.ended is None:
        assert loop.time() < deadline, "the stall outlasted the write buffer, yet the session went on"
        await asyncio.sleep(0.01)


def as_scheduled(result: SessionResult, ref: RecordingRef) -> tuple[str | None, dict[str, object]]:
    """The scheduler's own classification of a session's end (`_interruption`: DEVICE online, the station
    not stopping) and its `completeness` verdict on the copy."""
    scheduler = SimpleNamespace(platform=SimpleNamespace(registry={DEVICE: SimpleNamespace(online=True)}))
    interrupted = GbDownloadScheduler._interruption(scheduler, DEVICE, result)  # type: ignore[arg-type]
    return interrupted, completeness(result, ref, EXPECTED_S)
