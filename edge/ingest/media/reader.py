"""Bounded reads from a seekable binary file, and the way ffprobe prints a duration. Pure helpers."""

from __future__ import annotations

from typing import BinaryIO

from edge.ingest.media.errors import NotUnderstood


def read_exact(f: BinaryIO, offset: int, length: int, limit: int) -> bytes:
    """`length` bytes at `offset`; never more than `limit` whatever a header asked for."""
    if length < 0 or length > limit:
        raise NotUnderstood(f"offset {offset}: a header asks for {length} bytes (at most {limit} are read)")
    f.seek(offset)
    data = f.read(length)
    if len(data) != length:
        raise NotUnderstood(f"offset {offset}: the file ends {length - len(data)} bytes early")
    return data


def rescale_to_microseconds(value: int, timescale: int) -> int:
    """av_rescale(value, 1000000, timescale) with ffmpeg's default rounding (to nearest, ties away)."""
    return (value * 1_000_000 + timescale // 2) // timescale


def ffprobe_milliseconds(microseconds: int) -> int:
    """The `duration_ms` that summarising ffprobe's report gives for a duration of `microseconds`:
    ffprobe prints the double `us * 1e-6` with %f, and the summary rounds that text times 1000."""
    return round(float("%f" % (microseconds * (1 / 1_000_000))) * 1000)
