"""ffmpeg's own account of its progress (``-progress pipe:1``), for judging a source alive.

A listed segment is proof that a source records, but not the only one: with stream copy the segment
muxer can cut only at a key frame, so a camera whose key frames are further apart than the liveness
timeout (IP cameras in "smart codec" / H.264+ modes stretch the GOP to 10 s and more) lists its segments
late, and with fragmented MP4 (``frag_keyframe``) even the open segment's file grows only at key frames.
ffmpeg's progress report (a block of ``key=value`` lines every half second on stdout) counts what it has
muxed: ``frame``, ``out_time_us`` and ``total_size`` grow with every packet of every frame, key frame or
not, and stop growing when the camera falls silent. :class:`ProgressCounter` says when a block shows any of
them beyond what an earlier block did.

A source with a picture is judged by its picture alone. An IP camera's stream carries its microphone too:
when its video stops (a hung encoder, a lost sensor) and its sound goes on, ``out_time_us`` and
``total_size`` keep growing with the audio packets, and would keep a camera without a picture alive. ffmpeg
writes ``frame`` (video frames muxed, stream copy included) only when the output has a video stream, so a
block with a ``frame`` line is a video source's: only a grown ``frame`` counts there, and a block in which
only the other counters grew is :attr:`Progress.SOUND_ONLY`, the picture lost. A source without video (a
microphone) has no ``frame`` line, and its sound is its life.

The report comes from ffmpeg, whose numbers come from the camera: every line may be wrong. Only the three
counters are read, as non-negative decimals of at most 19 digits; anything else (N/A, a negative time,
junk, an overlong line) is skipped and never counts as progress.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from enum import Enum

# Global options of ffmpeg: they may stand anywhere on its command line, so after the program name.
PROGRESS_ARGS = ("-progress", "pipe:1")
_FRAME = b"frame"
_COUNTERS = frozenset({_FRAME, b"out_time_us", b"total_size"})
_VALUE = re.compile(rb"[0-9]{1,19}")


def with_progress(argv: Sequence[str]) -> list[str]:
    """`argv` with ffmpeg told to report its progress on stdout."""
    return [argv[0], *PROGRESS_ARGS, *argv[1:]]


class Progress(Enum):
    """What a block of the report showed."""

    NONE = "none"  # nothing grew
    ADVANCED = "advanced"  # the source's media grew: its picture, or its sound when it has no picture
    SOUND_ONLY = "sound-only"  # a source with a picture muxed more, but no video frame: the picture is lost


class ProgressCounter:
    """Reads ffmpeg's progress lines; :meth:`feed` tells, at the end of each block, what it showed."""

    def __init__(self) -> None:
        self._highest: dict[bytes, int] = {}
        self._grown: set[bytes] = set()
        # Once a block had a frame line the output has video: from then on only frames count.
        self.has_video = False

    def feed(self, line: bytes) -> Progress | None:
        """None until the block's last line; then what the block showed."""
        key, sep, value = line.strip().partition(b"=")
        if not sep:
            return None
        if key == b"progress":  # the block's last line ("continue" or "end")
            grown, self._grown = self._grown, set()
            if not grown:
                return Progress.NONE
            if not self.has_video or _FRAME in grown:
                return Progress.ADVANCED
            return Progress.SOUND_ONLY
        if key == _FRAME:
            self.has_video = True  # even with a value that does not count (N/A, junk)
        if key in _COUNTERS and _VALUE.fullmatch(value):
            number = int(value)
            if number > self._highest.get(key, 0):
                self._highest[key] = number
                self._grown.add(key)
        return None


async def read_progress(stream: asyncio.StreamReader, on_progress: Callable[[Progress], None]) -> None:
    """Read ffmpeg's progress report until it closes stdout, calling `on_progress` at each block that
    showed something grow (:attr:`Progress.ADVANCED` or :attr:`Progress.SOUND_ONLY`); never let the pipe
    fill up."""
    counter = ProgressCounter()
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # an overlong line: dropped by the reader, never progress
            continue
        if not line:
            return
        shown = counter.feed(line)
        if shown is not None and shown is not Progress.NONE:
            on_progress(shown)
