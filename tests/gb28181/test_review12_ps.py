"""Review 12: the PS demuxer under hostile input, with bounds measured by counted work and tracemalloc.

Each test has a control that passes on today's code; the finding's own assertion fails until it is fixed."""

from __future__ import annotations

import tracemalloc
from typing import Any

from drivers.gb28181.ps import START_CODE, PsDemuxer, encode_timestamp, pack_header, program_stream_map

RTP_PAYLOAD_BYTES = 1400  # what one RTP packet of a GB device carries


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes its `find` calls looked at (the demuxer's only scan primitive)."""

    scanned = 0

    def find(self, sub: Any, start: Any = 0, end: Any = None) -> int:
        stop = len(self) if end is None else min(end, len(self))
        at = super().find(sub, start, stop)
        CountingBuffer.scanned += (at + len(sub) if at >= 0 else stop) - start
        return at


def counting_demuxer(**kwargs: Any) -> PsDemuxer:
    demuxer = PsDemuxer(**kwargs)
    demuxer._buffer = CountingBuffer()  # the demuxer appends to and cuts this same object
    CountingBuffer.scanned = 0
    return demuxer


def feed_in_rtp_payloads(demuxer: PsDemuxer, stream: bytes) -> None:
    for at in range(0, len(stream), RTP_PAYLOAD_BYTES):
        demuxer.feed(stream[at : at + RTP_PAYLOAD_BYTES])


def unbounded_video_pes(body: bytes) -> bytes:
    """A pack, then a video PES of length 0 (allowed for video: it runs to the next start code)."""
    return pack_header(0) + START_CODE + b"\xe0\x00\x00" + b"\x80\x00\x00" + body


def test_an_unbounded_pes_is_scanned_in_linear_work_whatever_the_read_size() -> None:
    # 256 KiB without a start code: a device (or anyone who can reach the media port over UDP) sends a
    # PES of length 0 that never ends. Below max_frame_bytes (16 MiB) the demuxer waits for its end and
    # searches the whole held buffer again from its start on every RTP payload: quadratic work. With start
    # codes below 0xB9 inside (00 00 01 00 ...), each re-search is also a Python loop per start code:
    # 1 MiB of them fed in 1400-byte reads took 16 s of CPU here (2 cores shared), 10 MiB ~ 27 minutes.
    body = b"\xff" * (256 * 1024)
    stream = unbounded_video_pes(body)

    # Control: fed in one piece, the scan is linear (and the counter counts).
    whole = counting_demuxer()
    whole.feed(stream)
    assert len(stream) // 2 <= CountingBuffer.scanned <= 2 * len(stream)

    split = counting_demuxer()
    feed_in_rtp_payloads(split, stream)
    scanned, fed = CountingBuffer.scanned, len(stream)
    assert scanned <= 4 * fed, f"{scanned} bytes scanned for {fed} bytes fed in {RTP_PAYLOAD_BYTES} B reads"


def _pes(stream_id: int, header: bytes, payload: bytes) -> bytes:
    length = (len(header) + len(payload)).to_bytes(2, "big")
    return START_CODE + bytes([stream_id]) + length + header + payload


def _pes_with_pts(stream_id: int, payload: bytes, pts: int) -> bytes:
    return _pes(stream_id, bytes([0x80, 0x80, 5]) + encode_timestamp(2, pts), payload)


def _pes_without_pts(stream_id: int, payload: bytes) -> bytes:
    return _pes(stream_id, bytes([0x80, 0x00, 0]), payload)


def _retained_after(stream: bytes) -> int:
    """Bytes still allocated (tracemalloc) once `stream` went through a demuxer that is kept alive."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        demuxer = PsDemuxer()
        feed_in_rtp_payloads(demuxer, stream)
        retained = tracemalloc.get_traced_memory()[0] - before
        del demuxer
        return retained
    finally:
        tracemalloc.stop()


def test_video_pes_timestamps_without_access_units_do_not_grow_memory_with_the_stream() -> None:
    # 60 000 video PES of 14 bytes each (a PTS and no payload): 840 KB of input. The H.264 framer
    # appends one (start, end, pts, dts) entry per PES that carries a PTS and trims them only when an
    # access unit is cut; max_frame_bytes bounds its byte buffer, not this list. Measured: 2.8 MB of such
    # PES leave 25 MB allocated, growing with the stream for as long as it lasts.
    count = 60_000
    with_pts = pack_header(0) + b"".join(_pes_with_pts(0xE0, b"", pts) for pts in range(count))
    without_pts = pack_header(0) + b"".join(_pes_without_pts(0xE0, b"") for _ in range(count))

    # Control: the same number of empty PES without a PTS leave nothing behind.
    assert _retained_after(without_pts) < 256 * 1024

    retained = _retained_after(with_pts)
    assert retained < 1024 * 1024, f"{retained} bytes retained after {len(with_pts)} bytes of empty PES"


def test_memory_is_bounded_by_one_frame_not_one_frame_per_possible_stream_id() -> None:
    # A PSM that declares 16 video stream ids (0xE0..0xEF) as MPEG-4 video (not NAL-framed: a frame ends
    # only at a PES with a PTS), then PES without PTS on each: every stream id gets its own framer holding
    # up to max_frame_bytes. With the default 16 MiB that is 256 MiB per media session (16 sessions: 4 GiB)
    # for a device that has one video stream.
    frame_limit = 64 * 1024
    ids = tuple(range(0xE0, 0xF0))
    psm = program_stream_map(tuple((stream_id, 0x10) for stream_id in ids))
    chunk = b"\x11" * 60_000  # one PES per stream id, just under the limit: nothing is dropped, all is held

    def retained_with(selected: tuple[int, ...]) -> int:
        per_stream = frame_limit // len(chunk)
        data = pack_header(0) + psm
        data += b"".join(_pes_without_pts(sid, chunk) for _ in range(per_stream) for sid in selected)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            demuxer = PsDemuxer(max_frame_bytes=frame_limit)
            feed_in_rtp_payloads(demuxer, data)
            retained = tracemalloc.get_traced_memory()[0] - before
            del demuxer
            return retained
        finally:
            tracemalloc.stop()

    # Control: one video stream holds about one frame.
    assert retained_with(ids[:1]) < 2 * frame_limit
    retained = retained_with(ids)
    assert retained < 4 * frame_limit, f"{retained} bytes held for a frame limit of {frame_limit}"
