"""Review 18: a room input's `options` are put before `-i` as `-NAME VALUE`, checked only for the shape of
the name. ffmpeg takes its *global* options anywhere on the line, so a configuration that validates
(`edge check-config` passes it) makes the station's ffmpeg write files outside the store (invariant 6):
``progress = "/path"`` opens that file for writing, and an option that takes no value (``copyts``) leaves
its "value" on the line as an extra output file: a second copy of the room's recording, outside custody
and outside any disk reserve.

Real ffmpeg runs of the argv the station builds from the validated config (edge.rooms.argv,
edge.rooms.capture); control: an input option (``thread_queue_size``) in the same place records segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.config.rooms import RoomsSection
from edge.rooms.argv import Coding, SegmentPlan, segment_argv
from edge.rooms.capture import CaptureEnded, ClosedSegment, capture_run
from tests.rooms.conftest import rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")


def _input_file(tmp_path: Path) -> Path:
    """A 3 s H.264 file: an ffmpeg input whose format ffmpeg guesses (no `format` in the config)."""
    path = tmp_path / "input.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=25", "-t", "3", "-c:v", "libx264", str(path)],
                   check=True, timeout=60)
    return path


def _config(source_input: dict[str, Any]) -> RoomsSection | None:
    """The room config as the station validates it; None when validation refuses it (the fix)."""
    try:
        return rooms_config({"id": "cam", "codec": "encode", "input": [source_input]})
    except ValueError:
        return None


async def _one_run(config: RoomsSection, run_dir: Path) -> list[ClosedSegment]:
    source = config.room[0].source[0]
    plan = SegmentPlan(1.0, "fragmented", Coding.ENCODE, Coding.ENCODE, {"case_number": "A-1"})
    argv = segment_argv("ffmpeg", source.input, plan, run_dir)
    segments: list[ClosedSegment] = []
    with contextlib.suppress(CaptureEnded):  # the 3 s input ends: ffmpeg exits
        await asyncio.wait_for(capture_run(argv, run_dir, segments.append, stop_timeout_s=5.0), 60)
    return segments


@pytest.mark.parametrize("option", ["progress", "copyts"])
async def test_input_options_cannot_make_ffmpeg_write_outside_the_store(tmp_path: Path, option: str) -> None:
    source = _input_file(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / ("progress.txt" if option == "progress" else "copy-of-the-room.mp4")
    # Control: an input option in the same place is taken, and the run records segments.
    benign = _config({"url": str(source), "realtime": True, "options": {"thread_queue_size": "512"}})
    assert benign is not None
    recorded = await _one_run(benign, tmp_path / "store" / "run-control")
    assert [s for s in recorded if s.partial is None], "control: the run recorded nothing"
    hostile = _config({"url": str(source), "realtime": True, "options": {option: str(target)}})
    if hostile is None:
        return  # refused by the config's validation: nothing runs
    await _one_run(hostile, tmp_path / "store" / "run-hostile")
    assert not target.exists(), (
        f"a validated [rooms] input option {option!r} made ffmpeg write {target} "
        f"({target.stat().st_size} bytes) outside the store")
