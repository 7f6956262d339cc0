"""Media facts of a JPEG photo from its markers, as ffprobe's summary gives them. Pure, bounded.

ffprobe reads a JPEG through its `jpeg_pipe` demuxer (chosen by content: stored copies carry no
extension) and reports one `mjpeg` video stream with the frame header's size and no duration.
Understood here: a baseline, extended or progressive (SOF0/1/2) JPEG walked marker by marker from SOI
through its scans to an EOI that ends the file, with nothing ffmpeg's content probe could read
differently (no 0xFF byte inside table segments it does not skip by length). Anything else, or a file
larger than MAX_JPEG_BYTES, raises NotUnderstood and ffprobe answers.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

from edge.ingest.media.errors import NotUnderstood
from edge.ingest.media.reader import read_exact

CONTAINER = "jpeg_pipe"
MAX_JPEG_BYTES = 64 << 20
MAX_SEGMENTS = 4096
SCAN_CHUNK = 64 * 1024

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
_FRAME_HEADERS = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)
_DHT, _DAC, _DQT, _DRI, _COM = 0xC4, 0xCC, 0xDB, 0xDD, 0xFE
_SKIPPED = {_DHT, _DAC, _DQT, _DRI, _COM, *range(0xE0, 0xF0)}  # APP0..APP15
# Segments ffmpeg's jpeg probe scans byte by byte instead of skipping by their length.
_PROBE_SCANS = {_DHT, _DAC, _DRI}
_RESTARTS = range(0xD0, 0xD8)


def _next_marker(f: BinaryIO, start: int, size: int) -> int:
    """Offset of the first marker at or after `start` in entropy-coded data (0xFF followed by a byte
    that is neither a stuffed 0x00, a restart marker nor another 0xFF fill byte)."""
    position = start
    while position < size - 1:
        f.seek(position)
        chunk = f.read(min(SCAN_CHUNK, size - position))
        if not chunk:
            break
        index = chunk.find(b"\xff")
        while index != -1:
            if index + 1 >= len(chunk):
                break  # the byte after this 0xFF is in the next chunk
            follower = chunk[index + 1]
            if follower != 0x00 and follower != 0xFF and follower not in _RESTARTS:
                return position + index
            index = chunk.find(b"\xff", index + 1)
        position += max(1, len(chunk) - 1)  # re-read a trailing 0xFF with its follower
    raise NotUnderstood("entropy-coded data runs to the end of the file without an EOI marker")


def jpeg_facts(f: BinaryIO, size: int) -> dict[str, Any]:
    """ffprobe's summary of a JPEG file, or NotUnderstood."""
    if size > MAX_JPEG_BYTES:
        raise NotUnderstood(f"a {size}-byte JPEG (at most {MAX_JPEG_BYTES} are read in-process)")
    head = read_exact(f, 0, 4, 4) if size >= 4 else b""
    if head[:2] != b"\xff\xd8" or head == b"\xff\xd8\xff\xf7":  # FFD8FFF7: JPEG-LS, another codec
        raise NotUnderstood("no JPEG start-of-image marker")
    position = 2
    frame: tuple[int, int] | None = None
    scans = 0
    for _ in range(MAX_SEGMENTS):
        if position + 2 > size:
            raise NotUnderstood("the file ends without an EOI marker")
        prefix, marker = read_exact(f, position, 2, 2)
        if prefix != 0xFF:
            raise NotUnderstood(f"offset {position}: expected a marker, found byte 0x{prefix:02x}")
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == EOI:
            if scans == 0 or frame is None:
                raise NotUnderstood("EOI before any scan")
            if position + 2 != size:
                raise NotUnderstood(f"{size - position - 2} bytes after the EOI marker")
            width, height = frame
            return {"container": CONTAINER, "streams": [
                {"type": "video", "codec": "mjpeg", "width": width, "height": height}
            ]}
        if position + 4 > size:
            raise NotUnderstood("a segment length is cut off")
        (length,) = struct.unpack(">H", read_exact(f, position + 2, 2, 2))
        if length < 2 or position + 2 + length > size:
            raise NotUnderstood(f"offset {position}: segment 0x{marker:02x} of {length} bytes does not fit")
        payload_at = position + 4
        if marker in _FRAME_HEADERS:
            if frame is not None or scans:
                raise NotUnderstood("a second frame header")
            header = read_exact(f, payload_at, min(length - 2, 5), 5)
            if len(header) < 5:
                raise NotUnderstood("frame header cut off")
            height, width = struct.unpack(">HH", header[1:5])
            if not (width and height):
                raise NotUnderstood(f"frame size {width}x{height}")
            frame = (width, height)
            position = payload_at + length - 2
        elif marker == SOS:
            if frame is None:
                raise NotUnderstood("a scan before the frame header")
            scans += 1
            position = _next_marker(f, payload_at + length - 2, size)
        elif marker in _SKIPPED:
            if marker in _PROBE_SCANS and b"\xff" in read_exact(f, payload_at, length - 2, 0xFFFF):
                raise NotUnderstood(f"segment 0x{marker:02x} holds a 0xFF byte")
            position = payload_at + length - 2
        else:
            raise NotUnderstood(f"offset {position}: marker 0x{marker:02x}")
    raise NotUnderstood(f"more than {MAX_SEGMENTS} segments")
