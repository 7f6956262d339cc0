"""ffmpeg's progress report as proof of life (edge.rooms.progress): a block counts only when one of its
counters went beyond every earlier block's; hostile lines (junk, N/A, negatives, huge numbers, an overlong
line) never count. The reader runs on a real pipe fed by a real subprocess."""

from __future__ import annotations

import asyncio
import sys

import pytest

from edge.rooms.progress import ProgressCounter, read_progress, with_progress


def _blocks(counter: ProgressCounter, *blocks: bytes) -> list[bool]:
    told = []
    for block in blocks:
        for line in block.splitlines(keepends=True):
            if counter.feed(line):
                told.append(True)
                break
        else:
            told.append(False)
    return told


def test_a_block_counts_only_when_a_counter_grew() -> None:
    counter = ProgressCounter()
    assert _blocks(
        counter,
        b"frame=0\nout_time_us=0\ntotal_size=N/A\nprogress=continue\n",   # nothing muxed yet
        b"frame=25\nout_time_us=1000000\nprogress=continue\n",          # control: it grew
        b"frame=25\nout_time_us=1000000\nprogress=continue\n",          # the same: a silent camera
        b"frame=25\nout_time_us=1040000\nprogress=continue\n",          # audio only moves the time
        b"frame=20\nout_time_us=900000\nprogress=continue\n",           # backwards is not progress
    ) == [False, True, False, True, False]


@pytest.mark.parametrize("junk", [
    b"frame=-5\n", b"out_time_us=-9223372036854775807\n", b"frame=N/A\n", b"frame=1e9\n",
    b"frame=99999999999999999999999\n", b"speed=999x\n", b"bitrate=9999kbits/s\n", b"frame\n",
    b"\xff\xfe=\x00\n", b"frame=12 \x00\n",
])
def test_hostile_lines_never_count(junk: bytes) -> None:
    counter = ProgressCounter()
    assert _blocks(counter, b"frame=10\nprogress=continue\n") == [True]  # control
    assert _blocks(counter, junk + b"progress=continue\n") == [False]


def test_the_progress_options_follow_the_program_name() -> None:
    assert with_progress(["ffmpeg", "-i", "x"]) == ["ffmpeg", "-progress", "pipe:1", "-i", "x"]


async def test_the_reader_survives_an_overlong_line_and_reads_to_the_end() -> None:
    script = ("import sys; w = sys.stdout.buffer.write; w(b'frame=1\\nprogress=continue\\n'); "
              "w(b'x' * 200000 + b'\\n'); w(b'frame=2\\nprogress=continue\\nframe=2\\nprogress=end\\n')")
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                   stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    calls: list[int] = []
    await asyncio.wait_for(read_progress(process.stdout, lambda: calls.append(1)), 30)
    await process.wait()
    assert len(calls) == 2
