"""ffmpeg's progress report as proof of life (edge.rooms.progress): a block counts only when one of its
counters went beyond every earlier block's; hostile lines (junk, N/A, negatives, huge numbers, an overlong
line) never count. The reader runs on a real pipe fed by a real subprocess."""

from __future__ import annotations

import asyncio
import sys

import pytest

from edge.rooms.progress import Progress, ProgressCounter, read_progress, with_progress


def _blocks(counter: ProgressCounter, *blocks: bytes) -> list[Progress]:
    told = []
    for block in blocks:
        shown = [counter.feed(line) for line in block.splitlines(keepends=True)]
        assert shown[:-1] == [None] * (len(shown) - 1)  # only a block's last line tells
        assert shown[-1] is not None
        told.append(shown[-1])
    return told


N, ADVANCED, SOUND_ONLY = Progress.NONE, Progress.ADVANCED, Progress.SOUND_ONLY


def test_a_block_counts_only_when_a_counter_grew() -> None:
    counter = ProgressCounter()
    assert _blocks(
        counter,
        b"out_time_us=0\ntotal_size=N/A\nprogress=continue\n",           # nothing muxed yet
        b"out_time_us=1000000\ntotal_size=300\nprogress=continue\n",     # control: it grew
        b"out_time_us=1000000\ntotal_size=300\nprogress=continue\n",     # the same: a silent source
        b"out_time_us=900000\ntotal_size=200\nprogress=continue\n",      # backwards is not progress
        b"out_time_us=1040000\nprogress=end\n",                          # a sound-only source: sound is life
    ) == [N, ADVANCED, N, N, ADVANCED]
    assert not counter.has_video


def test_a_source_with_a_picture_is_judged_by_its_frames_alone() -> None:
    counter = ProgressCounter()
    assert _blocks(
        counter,
        b"frame=0\nout_time_us=0\ntotal_size=N/A\nprogress=continue\n",  # nothing muxed yet
        b"frame=25\nout_time_us=1000000\nprogress=continue\n",          # control: frames grew
        b"frame=25\nout_time_us=1000000\nprogress=continue\n",          # the same: a silent camera
        b"frame=25\nout_time_us=1040000\ntotal_size=9000\nprogress=continue\n",  # sound, no picture
        b"frame=20\nout_time_us=1100000\nprogress=continue\n",          # frames backwards: still none
        b"frame=N/A\nout_time_us=1200000\nprogress=continue\n",         # junk frames are no picture
        b"frame=26\nout_time_us=1200000\nprogress=continue\n",          # the picture is back
    ) == [N, ADVANCED, N, SOUND_ONLY, SOUND_ONLY, SOUND_ONLY, ADVANCED]
    assert counter.has_video


@pytest.mark.parametrize("junk", [
    b"frame=-5\n", b"out_time_us=-9223372036854775807\n", b"frame=N/A\n", b"frame=1e9\n",
    b"frame=99999999999999999999999\n", b"speed=999x\n", b"bitrate=9999kbits/s\n", b"frame\n",
    b"\xff\xfe=\x00\n", b"frame=12 \x00\n",
])
def test_hostile_lines_never_count(junk: bytes) -> None:
    counter = ProgressCounter()
    assert _blocks(counter, b"frame=10\nprogress=continue\n") == [ADVANCED]  # control
    assert _blocks(counter, junk + b"progress=continue\n") == [N]


def test_the_progress_options_follow_the_program_name() -> None:
    assert with_progress(["ffmpeg", "-i", "x"]) == ["ffmpeg", "-progress", "pipe:1", "-i", "x"]


async def test_the_reader_survives_an_overlong_line_and_reads_to_the_end() -> None:
    script = ("import sys; w = sys.stdout.buffer.write; w(b'frame=1\\nprogress=continue\\n'); "
              "w(b'x' * 200000 + b'\\n'); w(b'frame=2\\nprogress=continue\\nframe=2\\nprogress=end\\n')")
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                   stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    calls: list[Progress] = []
    await asyncio.wait_for(read_progress(process.stdout, calls.append), 30)
    await process.wait()
    assert calls == [ADVANCED, ADVANCED]
