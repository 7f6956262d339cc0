"""One ffmpeg run of a room source (edge.rooms.capture) with real ffmpeg and lavfi inputs: segments handed
over as the list names them, in order and joined without a hole, each with the case metadata and a whole
second of frames; the open segment closed and listed when the run is cancelled; an input that cannot be
opened ends the run with ffmpeg's own reason."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from edge.config.rooms import RoomInputConfig
from edge.rooms.argv import Coding, SegmentPlan, segment_argv
from edge.rooms.capture import CaptureEnded, ClosedSegment, capture_run
from tests.rooms.conftest import ffprobe_json

pytestmark = pytest.mark.usefixtures("ffmpeg")


async def test_a_cancelled_run_closes_and_lists_its_open_segment(tmp_path: Path) -> None:

    segments: list[ClosedSegment] = []
    seen = asyncio.Event()

    def closed(segment: ClosedSegment) -> None:
        segments.append(segment)
        seen.set()

    inputs = [RoomInputConfig(url="testsrc2=size=160x120:rate=25", format="lavfi", realtime=True)]
    plan = SegmentPlan(1.0, "fragmented", Coding.ENCODE, Coding.ENCODE, {"case_number": "A-1"})
    task = asyncio.create_task(capture_run(segment_argv("ffmpeg", inputs, plan, tmp_path / "run"),
                                           tmp_path / "run", closed, stop_timeout_s=5.0))
    async with asyncio.timeout(20):
        while len(segments) < 2:
            seen.clear()
            await seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Every segment was listed (none partial), in order, and the last one ffmpeg closed on SIGTERM too.
    assert [s.partial for s in segments] == [None] * len(segments)
    assert [s.index for s in segments] == list(range(len(segments)))
    assert len(segments) >= 3
    for one, two in itertools.pairwise(segments):
        assert one.end_s == two.start_s and one.times_ns()[1] == two.times_ns()[0]  # joined, no hole
    probed = ffprobe_json(segments[1].path)
    assert probed["format"]["tags"]["case_number"] == "A-1"
    assert int(probed["streams"][0]["nb_read_frames"]) == 25  # 1 s at 25 fps, key frame forced on time


async def test_ffmpeg_that_cannot_start_its_input_ends_the_run_with_its_reason(tmp_path: Path) -> None:

    absent = "/dev/v4l/by-id/usb-EvidenceEdge_Absent_video9-video-index0"
    inputs = [RoomInputConfig(url=absent, format="v4l2")]
    argv = segment_argv("ffmpeg", inputs, SegmentPlan(1.0), tmp_path / "run")
    with pytest.raises(CaptureEnded, match=r"exited with status 1.*video9"):
        await capture_run(argv, tmp_path / "run", lambda s: None, stop_timeout_s=2.0)
