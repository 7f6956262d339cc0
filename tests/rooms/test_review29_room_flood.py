"""Review 29 (HIGH): a camera flooding data at normal timestamps can never fill the store.

Real ffmpeg reading a real socket: simulators.ts_camera serves a feed re-encoded at a constant high bitrate
(H.264 filler, `flooding_feed`), its frames and timestamps those of a 10 fps camera, in real time: the
stream-time flood rule (review 27) sees an honest clock.

1. The bytes rule (edge.rooms.write_rate): against a ceiling (max_bitrate_mbps) it is far over, the run
   ends, a gap ``source-flood: ...``. Control: the same camera at its own bitrate is not flagged.
2. The recording reserve (edge.rooms.reserve), on a real 64 MiB file system (tmpfs) holding the whole
   store: with a ceiling the flood stays under, it writes until the store's free space reaches the reserve
   plus the margin; then it is stopped (a gap ``disk-reserve: ...``), the other source records on, the free
   space never drops below the store's reserve (sampled every few milliseconds), every segment the flood
   wrote is sealed (none dropped), and the store verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge.config.rooms import RoomsSection
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.rooms.capture import FLOOD_REASON
from edge.rooms.recording import SessionRecording
from edge.rooms.reserve import RESERVE_REASON, RecordingReserve
from edge.rooms.segments import SegmentListReader
from edge.rooms.session import RoomSession, new_session
from edge.rooms.state import SessionFiles
from edge.verify.station import verify_store
from simulators.ts_camera import TsCamera, TsCameraConfig, flooding_feed
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.test_review25_export_space import _leave_free, small_disk

__all__ = ["small_disk"]  # a fixture, imported to be used here

pytestmark = pytest.mark.usefixtures("ffmpeg")

MIB = 1 << 20
CLOCK_FLOOD = "x the station's clock (more than"  # the stream-time rule's reason


def _feed(path: Path, content_s: float) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=160x120:rate=10:d={content_s:g}", "-c:v", "libx264", "-preset",
                    "ultrafast", "-g", "10", "-f", "mpegts", str(path)], check=True, timeout=180)
    return path


@contextlib.asynccontextmanager
async def _camera(folder: Path, content_s: float,
                  flood_mbps: float | None) -> AsyncIterator[tuple[TsCamera, int]]:
    feed = _feed(folder / "camera.ts", content_s)
    data = feed.read_bytes() if flood_mbps is None else flooding_feed(feed, folder / "flood.ts", flood_mbps)
    camera = TsCamera(data, TsCameraConfig(content_s))
    server = await camera.start()
    try:
        yield camera, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _camera_source(port: int, max_bitrate_mbps: float) -> dict[str, Any]:
    return {"id": "cam", "codec": "copy", "max_bitrate_mbps": max_bitrate_mbps,
            "input": [{"format": "mpegts", "url": f"tcp://127.0.0.1:{port}",
                       "options": {"probesize": "100000", "analyzeduration": "500000"}}]}


def _session() -> RoomSession:
    return new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                       fields={"case_number": "A3301062026000123", "collector": "张三",
                               "subject": "询问过程"},
                       started_utc="2026-12-06T08:00:00.000000Z", started_by="operator")


def test_the_flooding_feed_keeps_its_timestamps_and_floods_its_bytes(tmp_path: Path) -> None:
    """The simulator's fault itself: the same frames and duration at the bitrate asked for."""
    feed = _feed(tmp_path / "camera.ts", 4.0)
    flood = flooding_feed(feed, tmp_path / "flood.ts", 20.0)
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                            "stream=nb_read_frames,r_frame_rate:format=duration", "-of", "csv=p=0",
                            str(tmp_path / "flood.ts")],
                           capture_output=True, text=True, check=True, timeout=60)
    assert "10/1,40" in probe.stdout, probe.stdout  # 10 fps, 40 frames: the camera's own
    assert len(flood) * 8 / 4.0 >= 15e6, len(flood)  # about 20 Mbit/s over its 4 s
    assert feed.stat().st_size * 8 / 4.0 < 2e6  # control: the camera's own bitrate is low


@pytest.mark.parametrize("flood", [True, False])
async def test_a_flood_at_normal_timestamps_is_ended_by_its_bytes(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path, flood: bool
) -> None:
    content_s = 40.0
    async with _camera(tmp_path, content_s, 20.0 if flood else None) as (camera, port):
        rooms = rooms_config(_camera_source(port, max_bitrate_mbps=2.0), stale_margin_s=12.0)
        files = SessionFiles(store.layout.root)
        files.prepare()
        recording = SessionRecording(_session(), rooms.room[0], rooms, pipeline, files, station_id=STATION)
        task = asyncio.create_task(recording.run())

        def gaps() -> list[str]:
            return [e.data["reason"] for e in watch.of("gap", source="cam", state="open")]

        try:
            if flood:  # 20 Mbit/s against 2: the bucket (40 s of 2 Mbit/s) is full within 5 s
                await watch.until(gaps, timeout_s=120)
            else:  # control: well past the time a flood takes
                await watch.until(lambda: gaps() or len(watch.of("segment_sealed", source="cam")) >= 15,
                                  timeout_s=120)
        finally:
            recording.stop()
            await asyncio.wait_for(task, 90)
    if flood:
        assert gaps()[0].startswith(f"{FLOOD_REASON}: "), gaps()
        assert "max_bitrate_mbps" in gaps()[0] and "Mbit/s" in gaps()[0]
        assert not any(CLOCK_FLOOD in g for g in gaps()), "its timestamps are honest"
        # What the flood wrote before its run ended was sealed, none dropped.
        assert watch.of("segment_sealed", source="cam")
        assert not [e for e in watch.of("gap", source="cam") if e.data.get("unsealable")]
    else:
        assert gaps() == [], f"a camera within its ceiling was taken for a flood: {gaps()}"
        assert camera.clients == 1 and recording.sources["cam"].runs == 1


class FreeSampler:
    """The free bytes of a file system, read every few milliseconds in a thread of its own (the event
    loop's load does not space the samples): the least seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.least = shutil.disk_usage(path).free
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.003):
            self.least = min(self.least, shutil.disk_usage(self.path).free)
            self.samples += 1

    def __enter__(self) -> FreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _listed_names(capture: Path, source: str) -> set[tuple[str, str]]:
    """(run, segment) of every segment ffmpeg listed for `source`, from the runs' segment lists."""
    found: set[tuple[str, str]] = set()
    for listing in capture.glob(f"*/{source}/run-*/segments.csv"):
        segments, _ = SegmentListReader(listing).read_new()
        found |= {(listing.parent.name, seg.name) for seg in segments}
    return found


RESERVE = 8 * MIB
MARGIN = 16 * MIB


async def test_at_the_reserve_the_flood_is_stopped_and_the_rest_records_on(small_disk: Path,
                                                                         tmp_path: Path) -> None:
    store = StationStore(small_disk / "store", STATION)
    try:
        await _reserve_run(store, small_disk, tmp_path)
    finally:
        store.close()


async def _reserve_run(store: StationStore, disk: Path, tmp_path: Path) -> None:
    watch = LedgerWatch(store)
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE, chunk_bytes=256 * 1024))
    files = SessionFiles(store.layout.root)
    files.prepare()

    async def record(type_: str, data: dict[str, Any]) -> object:
        repository = pipeline.repository
        return await pipeline.commit(lambda: repository.entry(type_, None, data))

    reserve = RecordingReserve(store.layout.root, reserve_bytes=RESERVE, margin_bytes=MARGIN, check_s=0.2,
                               record=record)
    # 16 Mbit/s (2 MB/s) under a ceiling of 100: only the reserve can stop it.
    async with _camera(tmp_path, 40.0, 16.0) as (_camera_server, port):
        rooms: RoomsSection = rooms_config(_camera_source(port, max_bitrate_mbps=100.0), lavfi_source("b"),
                                           stale_margin_s=12.0, record_margin_bytes=MARGIN,
                                           reserve_check_s=0.2)
        _leave_free(disk, RESERVE + MARGIN + 14 * MIB)  # the flood reaches the margin within seconds
        recording = SessionRecording(_session(), rooms.room[0], rooms, pipeline, files, station_id=STATION,
                                     reserve=reserve)
        guard = asyncio.create_task(reserve.run())
        with FreeSampler(disk) as sampler:
            task = asyncio.create_task(recording.run())
            try:
                stopped = await watch.until(
                    lambda: [e for e in watch.of("gap", source="cam", state="open")
                             if e.data["reason"].startswith(f"{RESERVE_REASON}: ")], timeout_s=120)
                after = stopped[0].seq
                # The other source records on: segments sealed after the flood's stop.
                await watch.until(lambda: len([e for e in watch.of("segment_sealed", source="b")
                                               if e.seq > after]) >= 4, timeout_s=120)
                # ... and the stopped one stays stopped (the disk is still at the reserve).
                cam = recording.sources["cam"].status()
                b = recording.sources["b"].status()
            finally:
                recording.stop()
                await asyncio.wait_for(task, 90)
                guard.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await guard
    assert sampler.samples > 100
    assert sampler.least >= RESERVE, f"the store's disk went to {sampler.least} bytes free, under its reserve"
    assert not cam["recording"] and cam["gap"]["reason"].startswith(RESERVE_REASON), cam
    assert b["recording"] and b["gap"] is None, b
    reason = stopped[0].data["reason"]
    assert "MiB free" in reason and "record_margin_bytes" in reason and "nothing is dropped" in reason
    warnings = watch.of("space_warning", level="reserve")
    assert warnings and warnings[0].data["stopped"] == {"room": "xw-1", "source": "cam"}
    assert warnings[0].data["free_bytes"] < RESERVE + MARGIN
    assert watch.of("gap", source="b") == [], "the other source was never interrupted"
    closed = watch.of("gap", source="cam", state="closed")
    assert closed and closed[-1].data["to_stop"] is True
    # Nothing the flood wrote was dropped: every segment ffmpeg listed is sealed, none unsealable.
    sealed = {(str(e.data["run"]), str(e.data["segment"])) for e in watch.of("segment_sealed", source="cam")}
    listed = _listed_names(files.capture_dir, "cam")
    assert listed and listed <= sealed, listed - sealed
    assert not [e for e in watch.of("gap") if e.data.get("unsealable")]
    report = verify_store(store.layout.root)
    assert report.ok, report.problems
