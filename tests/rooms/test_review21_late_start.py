"""Review 21 (#2): a source whose ffmpeg starts but whose first frame comes much later left the time from
its start to its first media unrecorded, and without a gap: the session's record claimed the source
recorded from the start. A wait over 2 s for the first media is now a `gap` (``from`` = when the source
was started, ``to`` = its first media, reason ``source-late-start``).

Real ffmpeg (lavfi paced by `realtime`; `trim` delays the first frame by 7 s as a camera that wakes up
slowly), the real supervisor, pipeline and ledger. Control: the same source with its first frame on time
has no gap.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")


def _s(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("late_s", [0, 7])
async def test_a_late_first_frame_is_a_gap_from_the_sources_start(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, late_s: int
) -> None:
    graph = "testsrc2=size=160x120:rate=25,realtime" + (f",trim=start={late_s}" if late_s else "")
    camera: dict[str, Any] = {"id": "cam", "codec": "encode",
                              "input": [{"format": "lavfi", "url": graph, "realtime": False}]}
    # A threshold of 4 s: the on-time control may take seconds to start on a loaded machine.
    config = rooms_config(lavfi_source("a"), camera, late_start_gap_s=4.0, start_grace_s=12.0)
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    began = datetime.now().timestamp()
    task = asyncio.create_task(recording.run())
    try:
        await watch.until(lambda: len(watch.of("segment_sealed", source="cam")) >= 2, timeout_s=40)
    finally:
        runs = recording.sources["cam"].runs
        recording.stop()
        await asyncio.wait_for(task, 60)
    assert runs == 1  # one healthy run: any gap is the late start, not a restart
    gaps = watch.of("gap", source="cam", state="closed")
    first = min(watch.of("segment_sealed", source="cam"), key=lambda e: e.seq)
    if late_s == 0:
        assert gaps == [], f"a source on time has a gap: {[g.data for g in gaps]}"
        return
    assert len(gaps) == 1, (f"the source's first media came {late_s} s after it was started and no gap says "
                            "so: the session claims it recorded from the start")
    gap = gaps[0].data
    assert gap["reason"].startswith("source-late-start"), gap
    assert gap["to"] == first.data["start_utc"], (gap, first.data)  # the gap ends where recording starts
    assert began <= _s(gap["from"]) < began + 2.0, gap  # from when the source was started
    assert late_s - 0.5 <= gap["duration_s"] <= late_s + 3.0, gap
