"""Review 18: with `codec = "auto"` each run first ffprobes its inputs (up to PROBE_TIMEOUT_S, 15 s),
outside the part of SessionRecording._record that opens gaps, and under the supervisor's liveness timeout
(segment_time_s + stale_margin_s: 15 s by default, less with shorter segments). A camera that accepts the
connection but sends nothing (a hung IP camera, a stalled RTSP server) keeps ffprobe waiting past the
liveness timeout: the supervisor cancels the run inside the probe, so

* no gap is ever opened: run after run is cancelled and restarted, the source records nothing for the
  whole session, and the ledger has no `gap` entry for it (the status shows no gap either);
* the cancelled ffprobe is never stopped (probe_streams kills it only on its own timeout): one more
  ffprobe process left hanging on the camera at every restart.

Real ffmpeg/ffprobe, a real TCP server that accepts and stays silent, the real pipeline and ledger.
Control: the same silent camera with codec = "encode" (no probe) gets its gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording, probe_streams
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")


def _probes_on(port: int) -> list[int]:
    """Pids of ffprobe processes reading tcp://127.0.0.1:`port` (started by the code under test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ffprobe") and f"tcp://127.0.0.1:{port}".encode() in argv:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("codec", ["encode", "auto"])
async def test_a_camera_that_stalls_the_probe_still_gets_a_gap_and_leaves_no_ffprobe(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, codec: str
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, never a byte: a hung camera

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    camera: dict[str, Any] = {"id": "cam", "codec": codec,
                              "input": [{"format": "mpegts", "url": f"tcp://127.0.0.1:{port}"}]}
    config = rooms_config(lavfi_source("a"), camera, stale_margin_s=1.0, stop_timeout_s=2.0)
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    left: list[int] = []
    try:
        try:
            await watch.until(lambda: watch.of("gap", source="cam", state="open"), timeout_s=20)
            gap_seen = True
        except TimeoutError:
            gap_seen = False
        runs = recording.sources["cam"].runs
    finally:
        recording.stop()
        await asyncio.wait_for(task, 60)
        left = _probes_on(port)
        for pid in left:  # started by the code under test: cleaned up here
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            # Their abandoned asyncio transports go now, while the loop runs, not in a later test.
            await asyncio.sleep(0.2)
            gc.collect()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert len(watch.of("segment_sealed", source="a")) > 0  # the other source recorded meanwhile
    problems = []
    if not gap_seen:
        problems.append(f"the silent camera recorded nothing for 20 s over {runs} runs and no gap was opened")
    if left:
        problems.append(f"{len(left)} ffprobe processes left hanging on the camera")
    assert problems == [], f"codec={codec}: " + "; ".join(problems)


async def test_a_cancelled_probe_stops_its_ffprobe() -> None:
    """The stop of a session (or any cancellation) inside the probe leaves no ffprobe on the camera."""
    held: list[asyncio.StreamWriter] = []
    connected = asyncio.Event()

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    argv = ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json",
            "-f", "mpegts", "-i", f"tcp://127.0.0.1:{port}"]
    probe = asyncio.create_task(probe_streams(argv, 60.0))
    try:
        await asyncio.wait_for(connected.wait(), 20)
        assert _probes_on(port), "control: the probe's ffprobe is waiting on the camera"
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        left = _probes_on(port)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert left == [], f"ffprobe {left} left waiting on the camera after the probe was cancelled"
