"""Review 23 (not tested there): a session resumed after a power loss with the station's hardware clock
behind had its resume gap clamped to 0 s without a word.

The resume gap runs from the end of the source's last segment on the ledger to the first segment of the
new run, by the station's clock. With the clock behind (an RTC that lost time while the power was off,
before NTP corrects it), that first segment starts before the gap began: the gap was written ``to`` =
``from``, ``duration_s`` 0, as if the agent had been down no time at all, and nothing said the clock had
stepped back. Now the gap says how far the clock was behind (``clock_behind_s``, its reason too) and an
`error` entry (stage ``room clock``) records the step.

Real ffmpeg, recorder, sealer, pipeline and ledger; the clock behind is a ledger whose last segment of
the source ends 30 s after the station's now. Control: a last segment 5 s before now: a gap of at least
5 s, no clock entry.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import RESUMED_REASON, SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

AHEAD_S = 30.0


@pytest.mark.parametrize("clock_behind", [False, True])
async def test_a_resume_gap_with_the_clock_behind_says_so(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, clock_behind: bool
) -> None:
    config = rooms_config(lavfi_source("a"))
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    last_end_ns = time.time_ns() + int((AHEAD_S if clock_behind else -5.0) * 1e9)
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION,
                                 resumed_from_ns={"a": last_end_ns})
    task = asyncio.create_task(recording.run())
    try:
        await watch.until(lambda: watch.of("segment_sealed", source="a"), timeout_s=60)
    finally:
        recording.stop()
        await asyncio.wait_for(task, 60)
    closed = [e.data for e in watch.of("gap", source="a", state="closed")
              if str(e.data["reason"]).startswith(RESUMED_REASON)]
    assert len(closed) == 1, closed
    gap = closed[0]
    clock_errors = [e.data for e in watch.of("error", stage="room clock", source="a")]
    if not clock_behind:  # control: the gap lasts at least the 5 s the agent was down, no clock entry
        assert gap["duration_s"] >= 5.0 and "clock_behind_s" not in gap and not clock_errors
        return
    assert gap["duration_s"] == 0.0  # its real length is unknown: it cannot end before it began
    # The first segment came a few seconds after the start, so the clock was behind by up to AHEAD_S.
    assert AHEAD_S - 20 <= gap.get("clock_behind_s", 0) <= AHEAD_S, (
        f"the resume gap ended {AHEAD_S:g} s or so before it began by the station's clock and says "
        f"nothing: {gap}")
    assert "behind" in gap["reason"]
    assert len(clock_errors) == 1 and clock_errors[0]["clock_behind_s"] == gap["clock_behind_s"]
