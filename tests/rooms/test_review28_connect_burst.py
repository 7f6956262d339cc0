"""Review 28 (issue 11, #1): a camera that sends a burst of buffered video as it connects (an RTSP camera's
or a GB/T 28181 IPC's 10-20 s of GOP cache / pre-buffer, as fast as the network allows) must not be taken
for a flood (edge.rooms.capture, the "more than 4x the station's clock" rule of review 27): that would
end every run of it with a gap, a false interruption on the record of every session.

Real ffmpeg reading a real socket: simulators.ts_camera serves an MPEG-TS file with a 20 s connect burst
(at 20x, 1 s: as fast as a network takes it), then in real time. Control: the same camera running 10x
real time throughout (a sustained flood) still has its run ended, a gap naming the rate.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from simulators.ts_camera import TsCamera, TsCameraConfig
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

BURST_S = 20.0
BURST_SPEED = 20.0  # the burst takes 1 s: 20 s of a 4 Mbit/s camera over an 80 Mbit/s network
FLOOD_SPEED = 10.0
FLOOD_REASON = "the station's clock"


def _feed(path: Path, content_s: float) -> bytes:
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=160x120:rate=10:d={content_s:g}", "-c:v", "libx264", "-preset",
                    "ultrafast", "-g", "10", "-f", "mpegts", str(path)], check=True, timeout=180)
    return path.read_bytes()


@pytest.mark.parametrize("flood", [False, True])
async def test_a_burst_at_connect_is_no_flood_but_a_sustained_flood_is_ended(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path, flood: bool
) -> None:
    content_s = 200.0 if flood else 50.0
    config = (TsCameraConfig(content_s, speed=FLOOD_SPEED) if flood
              else TsCameraConfig(content_s, connect_burst_s=BURST_S, burst_speed=BURST_SPEED))
    camera = TsCamera(_feed(tmp_path / "camera.ts", content_s), config)
    server = await camera.start()
    port = server.sockets[0].getsockname()[1]
    source: dict[str, Any] = {"id": "cam", "codec": "copy",
                              "input": [{"format": "mpegts", "url": f"tcp://127.0.0.1:{port}",
                                         "options": {"probesize": "100000", "analyzeduration": "500000"}}]}
    # A flood is let run for the connect window before it is ended: 4 s segments keep what it leaves to
    # seal before its gap reaches the ledger to a few dozen.
    rooms = rooms_config(source, stale_margin_s=12.0, segment_time_s=4.0 if flood else 1.0)
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, rooms.room[0], rooms, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())

    def floods() -> list[str]:
        return [e.data["reason"] for e in watch.of("gap", source="cam") if FLOOD_REASON in e.data["reason"]]

    try:
        if flood:
            await watch.until(floods, timeout_s=240)
        else:  # past the burst and well into real time (the burst lands within the first seconds)
            await watch.until(lambda: floods() or any(e.data["stream_end_s"] >= BURST_S + 12
                                                      for e in watch.of("segment_sealed", source="cam")),
                              timeout_s=150)
    finally:
        runs = recording.sources["cam"].runs
        recording.stop()
        await asyncio.wait_for(task, 90)
        server.close()
        await server.wait_closed()
    if flood:  # control: a camera at 10x throughout is still no real-time source
        assert "x the station's clock" in floods()[0], floods()
    else:
        assert floods() == [], f"a camera's burst at connect was taken for a flood: {floods()}"
        assert runs == 1 and camera.clients == 1, (runs, camera.clients)
