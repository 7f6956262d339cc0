"""Review 23 (#4): a composite over a network camera that serves one client at a time: the composite and
the original fight for the camera, and one of them records nothing for the whole session.

edge.config.room_composite admits any rtsp/http camera as "reopenable" (the composite opens it a second
time beside the source's own ffmpeg). Many interview-room IP cameras and encoders serve one stream client
(or one per profile, taken by the NVR); the second connection is refused (RTSP 453 / HTTP 503). Whoever
connects first keeps the camera: with ``codec = "auto"`` (the default) the original first runs ffprobe,
which disconnects again, while the composite (always encoded, no probe) connects at once. The loser is
restarted every restart_backoff_max_s for the rest of the session, each try refused: an open gap for
the whole proceeding on either the original (the evidence itself, lost to a derived picture) or the
composite (the picture with the burnt-in time the court rules ask for). Nothing checks the camera
serves two clients or lets the original go first; the configuration says nothing.

Real ffmpeg reading a real socket: a stand-in camera (asyncio HTTP server) streams an MPEG-TS feed made by
the real ffmpeg at its own rate and, like such cameras, answers 503 to a second client. Control: the same
camera serving two clients: the original and the composite both record.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.config.rooms import RoomsSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

CONTENT_S = 90.0


class OneClientCamera:
    """An HTTP MPEG-TS camera serving at most `clients` at once (503 to the rest)."""

    def __init__(self, feed: bytes, clients: int) -> None:
        self.feed = feed
        self.clients = clients
        self.serving = 0
        self.refused = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                async with asyncio.timeout(5):
                    await reader.readuntil(b"\r\n\r\n")
            if self.serving >= self.clients:
                self.refused += 1
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                await writer.drain()
                return
            self.serving += 1
            try:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n")
                tick_s = 0.04
                per_tick = max(188, int(len(self.feed) / CONTENT_S * tick_s))
                for at in range(0, len(self.feed), per_tick):
                    writer.write(self.feed[at:at + per_tick])
                    await writer.drain()
                    await asyncio.sleep(tick_s)
            finally:
                self.serving -= 1
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


@pytest.mark.parametrize("clients", [2, 1])
async def test_a_composite_never_takes_the_camera_from_its_original(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path, clients: int
) -> None:
    feed = tmp_path / "camera.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=320x240:rate=10:d={CONTENT_S:g}", "-c:v", "libx264", "-g", "10",
                    "-f", "mpegts", str(feed)], check=True, timeout=120)
    camera = OneClientCamera(feed.read_bytes(), clients)
    server = await asyncio.start_server(camera.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    closeup: dict[str, Any] = {"id": "closeup", "name": "特写", "input": [{  # codec auto, the default
        "format": "mpegts", "url": f"http://127.0.0.1:{port}/live.ts",
        "options": {"probesize": "100000", "analyzeduration": "500000"}}]}
    base = rooms_config(closeup, lavfi_source("overview", rate=10), stale_margin_s=4.0)
    room = base.room[0].model_dump()
    room["composite"] = {"main": "closeup", "inset": "overview", "size": "320x240", "rate": 10,
                         "overlay": False}
    config = RoomsSection.model_validate({**base.model_dump(), "room": [room]})
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())

    def both_record() -> bool:
        return all(len(watch.of("segment_sealed", source=s)) >= 4 for s in ("closeup", "composite"))

    try:
        with contextlib.suppress(TimeoutError):
            await watch.until(both_record, timeout_s=60)
    finally:
        recording.stop()
        await asyncio.wait_for(task, 60)
        server.close()
        await server.wait_closed()
    assert len(watch.of("segment_sealed", source="overview")) >= 4  # control: the room records
    sealed = {s: len(watch.of("segment_sealed", source=s)) for s in ("closeup", "composite")}
    assert both_record(), (
        f"a camera serving {clients} client(s) (refused {camera.refused} connections): segments sealed "
        f"{sealed}; gaps {[(e.data['source'], e.data['reason'][:80]) for e in watch.of('gap', state='open')]}"
    )
