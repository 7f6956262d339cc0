"""Review 25: progress-judged liveness (review 23 #12) keeps a camera alive whose picture has stopped while
its sound goes on.

An IP camera's RTSP/TS stream carries its microphone too. When its video stops (encoder hung, sensor
lost) and its audio does not, ffmpeg's progress report keeps advancing (``out_time_us`` and
``total_size`` grow with the audio packets), so ``progressed`` beats the liveness; with stream copy the
segment muxer cuts only at a video key frame, so no segment is listed either, and the run goes on until
the open segment is OPEN_SEGMENT_FACTOR (10) liveness timeouts old: 150 s under the defaults (10 + 5 s),
sealed as an ordinary recorded segment with no gap over the minutes without a picture. Before the fix the
same camera was restarted, with a gap, after one liveness timeout. (edge/rooms/recording.py progressed,
edge/rooms/progress.py: any counter counts, audio included.)

Real ffmpeg both sides: the stand-in camera is an ffmpeg serving a live (-re) MPEG-TS over TCP, its
picture ending after PICTURE_S while its sound runs on. Liveness timeout 1 + 12 s (as in review 23's
stall test), the session lasts SESSION_S. Controls: the same camera with its picture throughout; a source
with no picture at all (a microphone's stream) stays alive on its sound, one run and no gap.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.mqtt.local_broker import free_port as free_loopback_port  # (the UDP feed port is gone: review 25)
from edge.rooms.recording import LATE_START_REASON, VIDEO_LOST_REASON, SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

PICTURE_S = 5
SOUND_S = 90
SESSION_S = 45.0


@pytest.mark.parametrize("camera_kind", ["picture", "picture-lost", "sound-only"])
async def test_a_camera_whose_picture_stops_is_a_gap_within_the_liveness_timeout(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, camera_kind: str
) -> None:
    port = free_loopback_port()  # (a TCP port is as free: both ephemeral)
    picture_lost = camera_kind == "picture-lost"
    picture_s = PICTURE_S if picture_lost else SOUND_S
    picture = [] if camera_kind == "sound-only" else [
        "-re", "-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:d={picture_s}"]
    coding = ["-c:a", "aac"] if camera_kind == "sound-only" else [
        "-c:v", "libx264", "-g", "25", "-c:a", "aac"]
    camera = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", *picture, "-re", "-f", "lavfi", "-i", f"sine=frequency=440:d={SOUND_S}",
        *coding, "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1",
        stdin=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1.0)
    source: dict[str, Any] = {"id": "cam", "codec": "copy", "input": [{
        "format": "mpegts", "url": f"tcp://127.0.0.1:{port}",
        "options": {"probesize": "200000", "analyzeduration": "1000000"}}]}
    config = rooms_config(source, stale_margin_s=12.0)  # liveness 13 s, open-segment limit 130 s
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:
        await asyncio.sleep(SESSION_S)
    finally:
        runs = recording.sources["cam"].runs
        gaps = [e.data["reason"][:100] for e in watch.of("gap", source="cam")
                if not e.data["reason"].startswith(LATE_START_REASON)]
        recording.stop()
        await asyncio.wait_for(task, 60)
        with contextlib.suppress(ProcessLookupError):
            camera.kill()
        await camera.wait()
    sealed = watch.of("segment_sealed", source="cam")
    after_stop = [(e.data.get("state"), e.data["reason"][:100]) for e in watch.of("gap", source="cam")]
    assert sealed  # both: the camera was recorded
    if not picture_lost:  # controls: one run, no gap
        assert runs == 1 and not gaps, (runs, gaps)
    else:  # 40 s without a picture, three liveness timeouts: it must be on the record as a gap
        assert gaps and all(gap.startswith(VIDEO_LOST_REASON) for gap in gaps), (runs, gaps)
        assert gaps or runs > 1, (
            f"the picture stopped {SESSION_S - PICTURE_S:g} s before the stop; runs {runs}, no gap; sealed "
            f"{[(e.data.get('stream_end_s'), e.data.get('partial')) for e in sealed][-3:]}; "
            f"gaps after the stop {after_stop}")
