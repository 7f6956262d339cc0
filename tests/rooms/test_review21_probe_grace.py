"""Review 21 (#3): the start grace (start_grace_s) did not cover the auto probe. With ``codec = "auto"``
a run first ffprobes its inputs, and ffprobe waits for the source's first frames as ffmpeg does; the
probe had only 60 % of the liveness timeout (segment_time_s + stale_margin_s), and the grace counted from
the run's start, probe included. A camera slow to deliver its first frame (an RTSP camera waking up)
stalled the probe, or the probe ate the grace ffmpeg needed next: the healthy source was restarted,
run after run, each a gap.

Now the probe's deadline includes the start grace, and the grace counts from the end of the probe.
Real ffprobe and ffmpeg (lavfi paced by `realtime`; `trim` delays the first frame as a slow camera does,
for the probe and for ffmpeg alike), the real supervisor, pipeline and ledger; scaled down (1 s segments,
liveness 3 s, grace 6 s, the first frame 4 s late). Control: the same source with its first frame on time.
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


@pytest.mark.parametrize("late_s", [0, 4])
async def test_a_slow_probe_does_not_eat_the_start_grace(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, late_s: int
) -> None:
    graph = "testsrc2=size=160x120:rate=25,realtime" + (f",trim=start={late_s}" if late_s else "")
    camera: dict[str, Any] = {"id": "cam", "codec": "auto",
                              "input": [{"format": "lavfi", "url": graph, "realtime": False}]}
    config = rooms_config(lavfi_source("a"), camera, start_grace_s=6.0)
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
            await watch.until(lambda: len(whole()) >= 3, timeout_s=40)
    finally:
        runs = recording.sources["cam"].runs
        recording.stop()
        await asyncio.wait_for(task, 60)
    # The probe and ffmpeg both wait late_s for the first frame: a run needs about 2 * late_s + 1 s for
    # its first segment, within the probe's deadline plus the grace and the liveness timeout.
    # The late start itself is a gap (test_review21_late_start): no other may be.
    reasons = [e.data["reason"] for e in watch.of("gap", source="cam", state="open")
               if not e.data["reason"].startswith("source-late-start")]
    assert len(whole()) >= 3 and runs == 1 and reasons == [], (
        f"a healthy camera whose first frame comes {late_s} s late, probed first: {runs} runs, gaps "
        f"{reasons[:2]}, {len(whole())} segments")
