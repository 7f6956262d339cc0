"""RTP over TCP framing for GB/T 28181 media (Annex L): RFC 4571 and the RTSP-interleaved `$` variant.

RFC 4571 puts a 2-byte big-endian length before each RTP packet. Some devices send the RFC 2326 §10.12 form
instead: `$`, a 1-byte channel, a 2-byte length (ZLMediaKit's RtpSplitter and MiBeeNvr detect both; see
shared/reference/gb28181.md §8). `frame_rfc4571` and `frame_interleaved` write one frame; `StreamDeframer`
cuts a TCP byte stream, however it was split or coalesced into reads, back into frames. Pure: the caller
feeds the bytes it read.

A TCP stream has no resynchronisation point: once a length is wrong, every later boundary is a guess. So a
frame that is not RTP (version 2, at least a header long; checked unless `expect_rtp=False`), a frame longer
than `max_frame_bytes`, or a `$` frame in an RFC 4571 stream raises `FramingError`, and the deframer stays
failed: the caller closes the connection and records the end of the stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

RTP_HEADER_BYTES = 12
MAX_FRAME_BYTES = 0xFFFF  # what a 2-byte length can say
INTERLEAVED_MAGIC = 0x24  # '$'


class FramingError(ValueError):
    """A TCP media stream that is not framed RTP; the message says what came instead."""


class Framing(StrEnum):
    """How RTP packets are framed on a TCP media connection."""

    RFC4571 = "rfc4571"
    INTERLEAVED = "interleaved"
    AUTO = "auto"  # decided by the first frame, then kept


@dataclass(frozen=True)
class TcpFrame:
    """One frame's payload (an RTP packet); `channel` for the interleaved form, None for RFC 4571."""

    payload: bytes
    channel: int | None = None


def frame_rfc4571(packet: bytes) -> bytes:
    if len(packet) > MAX_FRAME_BYTES:
        raise FramingError(f"packet of {len(packet)} bytes does not fit a 2-byte length")
    return struct.pack("!H", len(packet)) + packet


def frame_interleaved(packet: bytes, channel: int = 0) -> bytes:
    if len(packet) > MAX_FRAME_BYTES:
        raise FramingError(f"packet of {len(packet)} bytes does not fit a 2-byte length")
    if not 0 <= channel <= 255:
        raise FramingError(f"channel {channel} is outside 0..255")
    return struct.pack("!BBH", INTERLEAVED_MAGIC, channel, len(packet)) + packet


def _looks_like_rtp(first_byte: int) -> bool:
    return first_byte >> 6 == 2


class StreamDeframer:
    """Incremental deframer for one TCP media connection. `feed(data)` returns the frames completed by
    `data` (none, one or many); partial frames wait for the next read. Holds at most one frame's bytes."""

    def __init__(self, framing: Framing = Framing.AUTO, *, max_frame_bytes: int = MAX_FRAME_BYTES,
                 expect_rtp: bool = True) -> None:
        if not 1 <= max_frame_bytes <= MAX_FRAME_BYTES:
            raise ValueError(f"max_frame_bytes must be 1..{MAX_FRAME_BYTES}")
        self._framing = framing
        self._max_frame_bytes = max_frame_bytes
        self._expect_rtp = expect_rtp
        self._buffer = bytearray()
        self._start = 0  # where the next frame begins in _buffer
        self._failed: FramingError | None = None
        self.frames = 0
        self.bytes_in = 0

    @property
    def framing(self) -> Framing:
        """The framing in use: AUTO until the first frame decided it."""
        return self._framing

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame waiting for more input (non-zero at the end = a truncated frame)."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> list[TcpFrame]:
        if self._failed is not None:
            raise self._failed
        self.bytes_in += len(data)
        self._buffer += data
        frames: list[TcpFrame] = []
        try:
            while (frame := self._next_frame()) is not None:
                frames.append(frame)
                self.frames += 1
        except FramingError as e:
            self._failed = e
            self._buffer.clear()
            raise
        finally:
            # Consumed frames are cut off once per read, not once per frame (a read coalesces many).
            del self._buffer[:self._start]
            self._start = 0
        return frames

    def _decide(self) -> bool:
        """Pick the framing from the first bytes (True when decided). `$` + channel + length + an RTP first
        byte is interleaved, unless the same bytes also read as an RFC 4571 frame of RTP (a length of
        0x24xx: a 9 KiB packet), which the standard's framing wins."""
        buffer, at = self._buffer, self._start
        if len(buffer) - at < 5:
            return False
        interleaved = buffer[at] == INTERLEAVED_MAGIC and _looks_like_rtp(buffer[at + 4])
        rfc4571 = _looks_like_rtp(buffer[at + 2])
        self._framing = Framing.INTERLEAVED if interleaved and not rfc4571 else Framing.RFC4571
        return True

    def _next_frame(self) -> TcpFrame | None:
        if self._framing is Framing.AUTO and not self._decide():
            return None
        buffer, at = self._buffer, self._start
        available = len(buffer) - at
        if self._framing is Framing.INTERLEAVED:
            if available < 4:
                return None
            if buffer[at] != INTERLEAVED_MAGIC:
                raise FramingError(f"expected '$' to start an interleaved frame, got 0x{buffer[at]:02x} "
                                   f"after {self.frames} frames")
            channel: int | None = buffer[at + 1]
            length = (buffer[at + 2] << 8) | buffer[at + 3]
            header = 4
        else:
            if available < 2:
                return None
            channel = None
            length = (buffer[at] << 8) | buffer[at + 1]
            header = 2
        if length > self._max_frame_bytes:
            raise FramingError(f"frame of {length} bytes exceeds {self._max_frame_bytes} "
                               f"after {self.frames} frames")
        if self._expect_rtp:
            if length < RTP_HEADER_BYTES:
                raise FramingError(f"frame of {length} bytes is shorter than an RTP header "
                                   f"after {self.frames} frames")
            if available > header and not _looks_like_rtp(buffer[at + header]):
                raise FramingError(f"frame does not start an RTP version 2 packet "
                                   f"(0x{buffer[at + header]:02x}) after {self.frames} frames")
        if available < header + length:
            return None
        payload = bytes(buffer[at + header:at + header + length])
        self._start = at + header + length
        return TcpFrame(payload, channel)
