"""Review 18: a source is judged by the age of its last segment from the moment its run starts, with no
allowance for starting up. The first segment can only close segment_time_s after the first frame, and the
first frame comes after ffprobe (codec = auto), the connection, the camera's own start and ffmpeg's
probing; liveness is segment_time_s + stale_margin_s. A source that takes longer than stale_margin_s to
deliver its first frame (5 s by default: an RTSP camera over a slow link, a camera waking up, a long GOP
to wait for) is cancelled before its first segment closes, every run: SIGTERM makes ffmpeg close a short
first segment, the supervisor starts the next run, and the start-up is lost again. However healthy the
camera is once running, the session records it in scraps between an endless series of restarts and gaps.

Real ffmpeg (lavfi paced by the `realtime` filter; `trim` delays the first frame as a slow camera does),
real supervisor, pipeline and ledger; scaled down (1 s segments, 2 s margin: the first frame 3 s late).
Control: the same source with its first frame on time records.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")


@pytest.mark.parametrize("late_s", [0, 3])
async def test_a_camera_that_starts_slowly_still_records(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, late_s: int
) -> None:
    graph = "testsrc2=size=160x120:rate=25,realtime" + (f",trim=start={late_s}" if late_s else "")
    camera: dict[str, Any] = {"id": "cam", "codec": "encode",
                              "input": [{"format": "lavfi", "url": graph, "realtime": False}]}
    config = rooms_config(lavfi_source("a"), camera)  # 1 s segments, stale_margin_s 2: liveness 3 s
    assert config.segment_time_s + config.stale_margin_s == 3.0
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())

    def whole() -> list[Any]:
        return [e for e in watch.of("segment_sealed", source="cam") if "partial" not in e.data]

    try:
        with contextlib.suppress(TimeoutError):
            await watch.until(lambda: len(whole()) >= 5, timeout_s=25)
    finally:
        runs = recording.sources["cam"].runs
        recording.stop()
        await asyncio.wait_for(task, 60)
    # The late start itself is a gap (review 21 #2, test_review21_late_start): no other may be.
    gaps = [e.data["reason"] for e in watch.of("gap", source="cam", state="open")
            if not e.data["reason"].startswith("source-late-start")]
    assert len(whole()) >= 5 and runs == 1 and gaps == [], (
        f"a healthy camera whose first frame comes {late_s} s after ffmpeg starts: {runs} runs, "
        f"{len(gaps)} gaps ({gaps[:1]}), {len(whole())} segments: each run is cancelled for silence before "
        "its first segment can close, and restarted")
