"""Review 23 (#2): a camera that stalls for less than the liveness timeout (segment_time_s +
stale_margin_s) leaves seconds of the proceeding unrecorded without a gap.

A network camera (RTSP over TCP, an MPEG-TS feed) or a V4L2 camera starved of USB bandwidth stops
delivering for a few seconds and resumes with timestamps that carry on where they stopped (the camera's
clock does not count the stall). ffmpeg lists nothing meanwhile; the supervisor does not restart it (it
is under the liveness timeout); when the next segment is listed, capture.station_spans gives it the whole
station interval from the previous segment's end: a segment of one second of pictures claims to have
recorded several seconds of the room. No `gap` entry, so the session manifest shows the source
continuous; only `source_clock_drift_s` in that segment's `segment_sealed` hints at it, and the session
manifest does not carry that field. Only GB/T 28181 sources report stalls (their live layer); RTSP, TCP
and V4L2 sources do not.

Real ffmpeg reading a real socket: a stand-in camera (asyncio TCP server) streams an MPEG-TS file made by
the real ffmpeg at its own rate, stalling 7 s in the middle. Control: the same camera without the stall:
every segment lasts about what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

CONTENT_S = 45.0
STALL_AT_S = 15.0
STALL_S = 7.0
# A segment's station interval may exceed what it holds by the listing's latency on a loaded machine.
SLACK_S = 2.5


def _s(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class StallingCamera:
    """Serves an MPEG-TS file over TCP at its own rate, to each client; stalls once if told to."""

    def __init__(self, feed: bytes, *, stall: bool) -> None:
        self.feed = feed
        self.stall = stall

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tick_s = 0.04
        per_tick = max(188, int(len(self.feed) / CONTENT_S * tick_s))
        sent, played_s, stalled = 0, 0.0, False
        try:
            while sent < len(self.feed):
                writer.write(self.feed[sent:sent + per_tick])
                await writer.drain()
                sent += per_tick
                played_s += tick_s
                if self.stall and not stalled and played_s >= STALL_AT_S:
                    stalled = True
                    await asyncio.sleep(STALL_S)
                await asyncio.sleep(tick_s)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


@pytest.mark.parametrize("stall", [False, True])
async def test_a_short_stall_of_a_camera_is_a_gap_on_the_record(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path, stall: bool
) -> None:
    feed = tmp_path / "camera.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=160x120:rate=25:d={CONTENT_S:g}", "-c:v", "libx264", "-g", "25",
                    "-f", "mpegts", str(feed)], check=True, timeout=120)
    camera = StallingCamera(feed.read_bytes(), stall=stall)
    server = await asyncio.start_server(camera.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source: dict[str, Any] = {"id": "cam", "codec": "encode",
                              "input": [{"format": "mpegts", "url": f"tcp://127.0.0.1:{port}",
                                         "options": {"probesize": "100000", "analyzeduration": "500000"}}]}
    # Liveness timeout 1 + 12 s: the 7 s stall is under it, so ffmpeg is not restarted.
    config = rooms_config(source, stale_margin_s=12.0)
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:
        await watch.until(lambda: any(e.data["stream_end_s"] >= STALL_AT_S + 6
                                      for e in watch.of("segment_sealed", source="cam")), timeout_s=120)
    finally:
        runs = recording.sources["cam"].runs
        recording.stop()
        await asyncio.wait_for(task, 60)
        server.close()
        await server.wait_closed()
    assert runs == 1  # control: one run, never restarted: the stall stayed under the liveness timeout
    gaps = [(_s(e.data["from"]), _s(e.data["to"])) for e in watch.of("gap", source="cam", state="closed")]
    unaccounted = []
    for entry in watch.of("segment_sealed", source="cam"):
        data = entry.data
        if data.get("partial") or data["stream_end_s"] is None:
            continue
        start, end = _s(data["start_utc"]), _s(data["end_utc"])
        held = data["stream_end_s"] - data["stream_start_s"]
        covered = sum(max(0.0, min(end, t) - max(start, f)) for f, t in gaps)
        if end - start - covered > held + SLACK_S:
            unaccounted.append((data["index"], round(end - start, 2), round(held, 2),
                                data.get("source_clock_drift_s")))
    assert not unaccounted, (
        f"segments (index, station seconds, stream seconds held, drift) claim more of the room's time than "
        f"they hold, and no gap records the rest: {unaccounted} (gaps: {gaps})")
