"""Review 25 (LOW): a camera whose clock runs more than 25 % slow read as a stall at every segment.

The stall check (review 23, edge.rooms.capture.stall_before) took a segment listed more than 25 % of its
stream duration later than that duration accounts for as a stall: a camera whose RTP clock runs a third
slow lists each 4-second segment 2 s late, so every segment was a `source-stalled` gap, and the session
manifest showed a camera that recorded all along as broken every few seconds. Now the source's clock
rate is measured over the run (stalls left out) and durations are scaled by it before a stall is judged;
the drift itself is still said on the segments (`source_clock_drift_s`), and a real stall of the same
slow camera is still a gap (the control).

Real ffmpeg reading a real socket: the stand-in camera of review 23 (tests.rooms.test_review23_short_stall)
serves an MPEG-TS whose timestamps run at 1/1.5 of the station's clock (45 s of pictures stamped as 30 s).
"""

from __future__ import annotations

import asyncio
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.capture import source_clock_rate, stall_before
from edge.rooms.recording import STALLED_REASON, SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms import test_review23_short_stall as review23
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

SLOW = 1.5  # station seconds per stream second
S = 1_000_000_000


def _s(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_the_clock_rate_is_measured_from_the_first_listing_without_the_stalls() -> None:
    assert source_clock_rate(None, 4.0, 10 * S, 0) is None  # nothing listed before
    assert source_clock_rate((4.0, 10 * S), 4.0, 10 * S, 0) is None  # one listing: nothing measured
    assert source_clock_rate((4.0, 10 * S), 8.0, 16 * S, 0) == pytest.approx(4 / 6)  # a third slow
    assert source_clock_rate((4.0, 10 * S), 8.0, 23 * S, 7 * S) == pytest.approx(4 / 6)  # a stall left out
    assert source_clock_rate((4.0, 10 * S), 8.0, 14 * S, 0) == pytest.approx(1.0)  # control: true
    assert source_clock_rate((4.0, 10 * S), 8.0, 10 * S + 1, 0) == 4.0  # bounded
    # Scaled by the rate, a slow clock's segment is no stall; a stall beyond it still is.
    assert stall_before(16 * S, 22 * S, [4.0]) == 2 * S  # unscaled: the old false stall
    assert stall_before(16 * S, 22 * S, [4.0 * SLOW]) == 0
    assert stall_before(16 * S, 29 * S, [4.0 * SLOW]) == 7 * S


@pytest.mark.parametrize("stall", [False, True])
async def test_a_slow_camera_clock_is_drift_not_stalls(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path, stall: bool
) -> None:
    feed = tmp_path / "camera.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=160x120:rate=25:d={review23.CONTENT_S:g},setpts=PTS/{SLOW}",
                    "-c:v", "libx264", "-g", "25", "-f", "mpegts", str(feed)], check=True, timeout=120)
    camera = review23.StallingCamera(feed.read_bytes(), stall=stall)  # paced over CONTENT_S station s
    server = await asyncio.start_server(camera.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source: dict[str, Any] = {"id": "cam", "codec": "encode",
                              "input": [{"format": "mpegts", "url": f"tcp://127.0.0.1:{port}",
                                         "options": {"probesize": "100000", "analyzeduration": "500000"}}]}
    # 4 s segments (6 s of the station's clock each): 2 s late, over the old tolerance of 1 s. Liveness
    # 4 + 12 s: the 7 s stall is under it.
    config = rooms_config(source, segment_time_s=4.0, stale_margin_s=12.0)
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    stall_at_stream_s = review23.STALL_AT_S / SLOW
    try:
        await watch.until(lambda: any(e.data["stream_end_s"] >= stall_at_stream_s + 10
                                      for e in watch.of("segment_sealed", source="cam")), timeout_s=150)
    finally:
        runs = recording.sources["cam"].runs
        recording.stop()
        await asyncio.wait_for(task, 60)
        server.close()
        await server.wait_closed()
    assert runs == 1
    stalls = [(round(_s(e.data["to"]) - _s(e.data["from"]), 1), e.data["reason"][:80])
              for e in watch.of("gap", source="cam", state="closed")
              if e.data["reason"].startswith(STALLED_REASON)]
    whole = [e.data for e in watch.of("segment_sealed", source="cam") if "partial" not in e.data]
    if not stall:
        assert stalls == [], f"a camera whose clock runs a third slow read as stalls: {stalls}"
    else:  # control: a real stall of the same camera is still one gap, of about its length
        assert len(stalls) == 1 and review23.STALL_S - 2.5 <= stalls[0][0] <= review23.STALL_S + 3, stalls
    # The drift is still said: 1 stream second per 1.5 station seconds, seconds apart by the end.
    last = max(whole, key=lambda d: d["index"])
    assert last.get("source_clock_drift_s", 0) < -3, last
