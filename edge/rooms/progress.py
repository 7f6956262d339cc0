"""ffmpeg's own account of its progress (``-progress pipe:1``), for judging a source alive.

A listed segment is proof that a source records, but not the only one: with stream copy the segment
muxer can cut only at a key frame, so a camera whose key frames are further apart than the liveness
timeout (IP cameras in "smart codec" / H.264+ modes stretch the GOP to 10 s and more) lists its segments
late, and with fragmented MP4 (``frag_keyframe``) even the open segment's file grows only at key frames.
ffmpeg's progress report (a block of ``key=value`` lines every half second on stdout) counts what it has
muxed: ``frame``, ``out_time_us`` and ``total_size`` grow with every packet of every frame, key frame or
not, and stop growing when the camera falls silent. :class:`ProgressCounter` says when a block shows any of
them beyond what an earlier block did.

The report comes from ffmpeg, whose numbers come from the camera: every line may be wrong. Only the three
counters are read, as non-negative decimals of at most 19 digits; anything else (N/A, a negative time,
junk, an overlong line) is skipped and never counts as progress.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence

# Global options of ffmpeg: they may stand anywhere on its command line, so after the program name.
PROGRESS_ARGS = ("-progress", "pipe:1")
_COUNTERS = frozenset({b"frame", b"out_time_us", b"total_size"})
_VALUE = re.compile(rb"[0-9]{1,19}")


def with_progress(argv: Sequence[str]) -> list[str]:
    """`argv` with ffmpeg told to report its progress on stdout."""
    return [argv[0], *PROGRESS_ARGS, *argv[1:]]


class ProgressCounter:
    """Reads ffmpeg's progress lines; :meth:`feed` is True at the end of a block that advanced."""

    def __init__(self) -> None:
        self._highest: dict[bytes, int] = {}
        self._advanced = False

    def feed(self, line: bytes) -> bool:
        key, sep, value = line.strip().partition(b"=")
        if not sep:
            return False
        if key == b"progress":  # the block's last line ("continue" or "end")
            advanced, self._advanced = self._advanced, False
            return advanced
        if key in _COUNTERS and _VALUE.fullmatch(value):
            number = int(value)
            if number > self._highest.get(key, 0):
                self._highest[key] = number
                self._advanced = True
        return False


async def read_progress(stream: asyncio.StreamReader, on_progress: Callable[[], None]) -> None:
    """Read ffmpeg's progress report until it closes stdout, calling `on_progress` at each block that
    advanced; never let the pipe fill up."""
    counter = ProgressCounter()
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # an overlong line: dropped by the reader, never progress
            continue
        if not line:
            return
        if counter.feed(line):
            on_progress()
