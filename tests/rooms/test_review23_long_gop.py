"""Review 23 (#12): a camera whose key frames are further apart than the liveness timeout is restarted
for ever: a session of gaps.

With stream copy (codec = "copy", or "auto" on an H.264/HEVC camera: the usual case) the segment muxer can
cut only at a key frame, so a segment lasts a whole number of the camera's GOPs, however short
segment_time_s is. The supervisor judges a source by the age of its last segment (segment_time_s +
stale_margin_s; start_grace_s only before the first segment). A camera whose GOP is longer than that
(IP cameras in "smart codec" / H.264+ modes stretch the GOP to several seconds, some to 10 s and more; a
low-bitrate profile the same) is killed before each segment can close, restarted, killed again: every
interval of the session is a gap ("no new segment for more than ... s"), each run ends in a partial
segment, and each restart loses the reconnection time and the frames until the next key frame. Nothing
warns at configuration or at the first run that the camera's GOP exceeds the timeout.

Real ffmpeg (stream copy) reading a real socket: a stand-in camera streams an MPEG-TS feed made by the real
ffmpeg with a 4 s GOP (-g 100 at 25 fps) at its own rate; the test settings give a 3 s liveness timeout
(segment_time_s 1 + stale_margin_s 2), the same ratio as a 16 s GOP under the defaults (10 + 5).
Control: the same camera with a 1 s GOP records in one run without a gap.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import LATE_START_REASON, SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config
from tests.rooms.test_review23_short_stall import CONTENT_S, StallingCamera

pytestmark = pytest.mark.usefixtures("ffmpeg")


@pytest.mark.parametrize("gop_frames", [25, 100])
async def test_a_camera_with_a_long_gop_records_without_restarts(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path, gop_frames: int
) -> None:
    feed = tmp_path / "camera.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=160x120:rate=25:d={CONTENT_S:g}", "-c:v", "libx264",
                    "-g", str(gop_frames), "-keyint_min", str(gop_frames), "-sc_threshold", "0",
                    "-f", "mpegts", str(feed)], check=True, timeout=120)
    camera = StallingCamera(feed.read_bytes(), stall=False)
    server = await asyncio.start_server(camera.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source: dict[str, Any] = {"id": "cam", "codec": "copy", "input": [{
        "format": "mpegts", "url": f"tcp://127.0.0.1:{port}",
        "options": {"probesize": "100000", "analyzeduration": "500000"}}]}
    config = rooms_config(source)  # segment_time_s 1, stale_margin_s 2: liveness 3 s
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:
        await asyncio.sleep(20)  # the session lasts 20 s (the camera streams for longer)
    finally:
        runs = recording.sources["cam"].runs
        recording.stop()
        await asyncio.wait_for(task, 60)
        server.close()
        await server.wait_closed()
    whole = [e for e in watch.of("segment_sealed", source="cam") if not e.data.get("partial")]
    assert len(whole) >= 2  # control: the camera's segments are recorded
    gaps = [e.data["reason"][:90] for e in watch.of("gap", source="cam", state="closed")
            if not e.data["reason"].startswith(LATE_START_REASON)]
    assert runs == 1 and not gaps, (
        f"a camera with a GOP of {gop_frames / 25:g} s: {runs} ffmpeg runs in 20 s, gaps {gaps}")
