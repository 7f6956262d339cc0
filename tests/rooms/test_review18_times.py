"""Review 18: a segment's station times are the station clock when ffmpeg was *spawned* plus the stream
seconds of the segment list (edge.rooms.capture.ClosedSegment.times_ns). Both halves can be untrue:

* stream second 0 is the first frame ffmpeg received, not its spawn: a camera that answers late (an RTSP
  handshake, a V4L2 device that warms up, ffmpeg's own probing) makes every segment of the run claim to
  have been recorded seconds before it was, and the gap a restart closes ends (``to``) before recording
  really started again: an interruption under-reported;
* stream seconds run on the source's clock (an IP camera's RTP clock), not the station's: a camera whose
  clock runs fast makes segments claim to end after they were written (and sealed).

Shown with real ffmpeg: a lavfi source paced in real time by the ``realtime`` filter, whose first frame
comes 3 s late (``trim``), or whose timestamps run 20 % fast (``setpts``); ffmpeg's listing of a segment
(the list file's mtime, `closed_ns`) is when its last frame had arrived. Controls: the same source without
the fault.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge.config.rooms import RoomInputConfig
from edge.rooms.argv import Coding, SegmentPlan, segment_argv
from edge.rooms.capture import ClosedSegment, capture_run

pytestmark = pytest.mark.usefixtures("ffmpeg")

SOURCE = "testsrc2=size=160x120:rate=25,realtime"


async def _segments(graph: str, run_dir: Path, count: int) -> list[ClosedSegment]:
    """`count` whole segments of a real ffmpeg run of lavfi `graph` (paced by its own realtime filter)."""
    inputs = [RoomInputConfig(url=graph, format="lavfi", realtime=False)]
    argv = segment_argv("ffmpeg", inputs, SegmentPlan(1.0, "fragmented", Coding.ENCODE, Coding.ENCODE),
                        run_dir)
    segments: list[ClosedSegment] = []
    enough = asyncio.Event()

    def closed(segment: ClosedSegment) -> None:
        if segment.partial is None:
            segments.append(segment)
            if len(segments) >= count:
                enough.set()

    task = asyncio.create_task(capture_run(argv, run_dir, closed, stop_timeout_s=5.0))
    try:
        async with asyncio.timeout(60):
            await enough.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return segments[:count]


def _listed_after_end_s(segment: ClosedSegment) -> float:
    """How long after the segment's claimed end ffmpeg listed it (its last frame had arrived by then)."""
    _, end_ns = segment.times_ns()
    return (segment.closed_ns - end_ns) / 1e9


@pytest.mark.parametrize("late_s", [0, 3])
async def test_a_run_counts_its_times_from_its_first_frame_not_from_ffmpegs_spawn(
    tmp_path: Path, late_s: int
) -> None:
    graph = SOURCE if late_s == 0 else f"{SOURCE},trim=start={late_s}"  # the first frame comes late_s late
    first = (await _segments(graph, tmp_path / "run", 1))[0]
    # A segment is listed once its last frame has arrived and the encoder let it go (x264's lookahead:
    # under a second here). late_s = 0 is the control; with the late camera the segment's claimed end
    # lies late_s before its frames had even arrived.
    lag = _listed_after_end_s(first)
    assert lag < 1.5, (f"segment 0 claims to end {lag:.2f} s before ffmpeg had it: its times count from "
                       "ffmpeg's spawn, not from the first frame the source delivered")


# The 20 %-fast camera case ("1.2") is review 18 finding 11, fixed by review 21 #8 (station times from the
# station's clock; tests/rooms/test_review21_source_clock.py).
@pytest.mark.parametrize("rate", ["1.0", "1.2"])
async def test_segment_times_follow_the_station_clock_not_the_sources(tmp_path: Path, rate: str) -> None:
    graph = SOURCE if rate == "1.0" else f"{SOURCE},setpts={rate}*PTS"  # a camera clock 20 % fast
    segments = await _segments(graph, tmp_path / "run", 12)
    # A segment cannot end after ffmpeg listed it (control: rate 1.0, where the lag stays positive).
    early = [(s.index, round(_listed_after_end_s(s), 2)) for s in segments if _listed_after_end_s(s) < -0.2]
    assert early == [], (f"segments (index, seconds) claiming to end after they were listed: {early}; "
                         "their times run on the source's clock")
