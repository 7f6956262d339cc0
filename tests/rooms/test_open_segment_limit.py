"""A camera that stops sending key frames: ffmpeg's progress keeps its run alive (edge.rooms.progress), but
not for ever. With stream copy its open segment can close only at a key frame, and fragmented MP4 keeps the
frames since the last one in ffmpeg's memory, not on disk: past OPEN_SEGMENT_FACTOR liveness timeouts the
run ends with a gap naming why, and what it had is sealed.

Real ffmpeg (stream copy) reading a real socket: a stand-in camera streams an MPEG-TS feed made by the real
ffmpeg with one key frame at its start (a GOP longer than the feed). Settings: liveness timeout 3 s
(segment_time_s 1 + stale_margin_s 2), so the open segment's limit is 30 s. Control: well past the liveness
timeout, but under the limit, the run is alive and no gap is open (the frames arrive).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import OPEN_SEGMENT_FACTOR, SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config
from tests.rooms.test_review23_short_stall import StallingCamera

pytestmark = pytest.mark.usefixtures("ffmpeg")

FEED_S = 60
WAIT_S = 120.0  # a generous bound on a loaded machine


async def test_a_segment_without_a_closing_key_frame_ends_the_run_at_the_limit(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path
) -> None:
    feed = tmp_path / "camera.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=160x120:rate=25:d={FEED_S}", "-c:v", "libx264",
                    "-g", "5000", "-keyint_min", "5000", "-sc_threshold", "0",
                    "-f", "mpegts", str(feed)], check=True, timeout=120)
    camera = StallingCamera(feed.read_bytes(), stall=False)
    server = await asyncio.start_server(camera.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source: dict[str, Any] = {"id": "cam", "codec": "copy", "input": [{
        "format": "mpegts", "url": f"tcp://127.0.0.1:{port}",
        "options": {"probesize": "100000", "analyzeduration": "500000"}}]}
    config = rooms_config(source)
    limit_s = OPEN_SEGMENT_FACTOR * (config.segment_time_s + config.stale_margin_s)
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:
        await asyncio.sleep(limit_s / 2)  # five liveness timeouts without a segment listed
        assert recording.sources["cam"].runs == 1 and watch.of("gap", source="cam") == [], (
            "control: a camera whose frames arrive is alive without a listed segment")
        opened = (await watch.until(lambda: watch.of("gap", source="cam", state="open"), WAIT_S))[0]
    finally:
        recording.stop()
        await asyncio.wait_for(task, 60)
        server.close()
        await server.wait_closed()
    assert f"a segment open for more than {limit_s:g} s" in opened.data["reason"]
    assert watch.of("segment_sealed", source="cam"), "what the ended run had is sealed"
