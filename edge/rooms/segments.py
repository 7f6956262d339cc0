"""ffmpeg's segment list (``-segment_list_type csv``), read as it grows.

The segment muxer appends ``NAME,START,END`` (stream seconds) to the list after it has written and closed
segment NAME, so a complete line is the proof that the file is complete: a file that merely exists may
still be written. Only whole lines (ending in a newline) count; a half-written last line is read again
next time. The station names the segments itself (``seg-NNNNNN.mp4``,
:data:`edge.rooms.argv.SEGMENT_PATTERN`), so a line naming anything else, or with times that are not
numbers in order, is refused (:class:`SegmentListError`): it did not come from the ffmpeg this station
started.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"seg-(\d{6})\.mp4,(\d{1,9}\.\d{1,9}),(\d{1,9}\.\d{1,9})")
SEGMENT_NAME = re.compile(r"seg-\d{6}\.mp4")
MAX_LINE_BYTES = 256
# A list read in one go is bounded: a run writes a line per segment_time (at least 0.5 s).
MAX_READ_BYTES = 1 << 20


class SegmentListError(ValueError):
    """A segment list line that ffmpeg, as the station runs it, does not write."""


@dataclass(frozen=True)
class ListedSegment:
    """One closed segment as the list names it: file name, index, start and end in stream seconds."""

    name: str
    index: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def parse_line(line: str) -> ListedSegment:
    match = _LINE.fullmatch(line)
    if match is None:
        raise SegmentListError(f"not a segment list line: {line[:80]!r}")
    index, start, end = int(match[1]), float(match[2]), float(match[3])
    if end < start:
        raise SegmentListError(f"segment {match[1]} ends ({end}) before it starts ({start})")
    return ListedSegment(f"seg-{match[1]}.mp4", index, start, end)


class SegmentListReader:
    """Reads the lines a running ffmpeg appends to its segment list; returns each whole line once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending = b""
        self.last_index = -1

    def read_new(self) -> tuple[list[ListedSegment], int | None]:
        """The segments listed since the last call, and the list file's mtime (ns) when it grew: the
        time ffmpeg wrote the last of them (None when nothing new). Raises SegmentListError for a line
        ffmpeg does not write, or segments out of order."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return [], None  # ffmpeg has not closed a segment yet
        except OSError as exc:  # a symlink planted in its place (ELOOP), or worse
            raise SegmentListError(f"the segment list cannot be read: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SegmentListError("the segment list is not a regular file")
            if info.st_size <= self.offset:
                return [], None
            data = os.pread(fd, min(info.st_size - self.offset, MAX_READ_BYTES), self.offset)
        except OSError as exc:
            raise SegmentListError(f"the segment list cannot be read: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        self.offset += len(data)
        text = self.pending + data
        *lines, self.pending = text.split(b"\n")
        if len(self.pending) > MAX_LINE_BYTES:
            raise SegmentListError(f"a segment list line longer than {MAX_LINE_BYTES} bytes")
        found: list[ListedSegment] = []
        for raw in lines:
            segment = parse_line(raw.decode("ascii", errors="replace"))
            if segment.index <= self.last_index:
                raise SegmentListError(f"segment {segment.index} listed after segment {self.last_index}")
            self.last_index = segment.index
            found.append(segment)
        return found, info.st_mtime_ns if found else None
