"""LineFramer: arbitrary chunks, junk, lost terminators, over-long lines; memory stays bounded."""

from __future__ import annotations

import random

import pytest

from drivers.serial.dock_protocol import (
    MAX_LINE_BYTES,
    BayLed,
    InsertedEvent,
    LineFramer,
    PingCommand,
    SetLedCommand,
    decode_line,
)

FRAMES = [
    PingCommand(1).to_bytes(),
    SetLedCommand(2, 7, BayLed.COPYING).to_bytes(),
    InsertedEvent(3, 4, 90).to_bytes(),
]
STREAM = b"".join(FRAMES)
LINES = [f[:-2] for f in FRAMES]


def test_whole_stream_in_one_chunk() -> None:
    framer = LineFramer()
    assert framer.feed(STREAM) == LINES
    assert (framer.lines, framer.discarded_bytes, framer.pending_bytes) == (3, 0, 0)


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_every_split_point(cut: int) -> None:
    framer = LineFramer()
    assert framer.feed(STREAM[:cut]) + framer.feed(STREAM[cut:]) == LINES
    assert framer.discarded_bytes == 0


def test_byte_by_byte_and_random_chunks() -> None:
    framer = LineFramer()
    assert [line for byte in STREAM for line in framer.feed(bytes([byte]))] == LINES
    rng = random.Random(3)
    for _ in range(200):
        framer = LineFramer()
        lines: list[bytes] = []
        position = 0
        while position < len(STREAM):
            size = rng.randint(0, 12)  # empty chunks happen too (a read that timed out)
            lines += framer.feed(STREAM[position : position + size])
            position += size
        assert lines == LINES


def test_junk_between_frames_is_skipped_and_counted() -> None:
    junk = [b"\x00\xff noise ", b"\x80\x81", b"hello"]
    stream = junk[0] + FRAMES[0] + junk[1] + FRAMES[1] + junk[2] + FRAMES[2]
    framer = LineFramer()
    assert framer.feed(stream) == LINES
    assert framer.discarded_bytes == sum(len(j) for j in junk)


def test_blank_lines_are_not_junk() -> None:
    framer = LineFramer()
    assert framer.feed(b"\r\n\n" + FRAMES[0] + b"\r\n") == LINES[:1]
    assert framer.discarded_bytes == 0


def test_bare_lf_terminator() -> None:
    framer = LineFramer()
    assert framer.feed(FRAMES[0][:-2] + b"\n") == LINES[:1]


def test_frame_that_lost_its_end_is_dropped_at_the_next_start() -> None:
    framer = LineFramer()
    assert framer.feed(b"$12,ACK,PI" + FRAMES[0]) == LINES[:1]
    assert framer.truncated_lines == 1
    assert framer.discarded_bytes == len(b"$12,ACK,PI")


def test_frame_that_lost_its_end_across_chunks() -> None:
    framer = LineFramer()
    assert framer.feed(b"$12,ACK,PI") == []
    assert framer.feed(b"NG,3" + FRAMES[1][:5]) == []
    assert framer.feed(FRAMES[1][5:]) == [LINES[1]]
    assert framer.truncated_lines == 1


def test_overlong_line_is_dropped_and_memory_stays_bounded() -> None:
    framer = LineFramer()
    lines: list[bytes] = []
    lines += framer.feed(b"$" + b"A" * 100)
    for _ in range(100):  # 100 kB without a terminator
        lines += framer.feed(b"B" * 1000)
        assert framer.pending_bytes <= MAX_LINE_BYTES
    lines += framer.feed(b"\r\n" + FRAMES[0])
    assert lines == LINES[:1]
    assert framer.overlong_lines == 1
    assert framer.truncated_lines == 0
    assert framer.discarded_bytes == 1 + 100 + 100_000 + 1  # '$', the A's, the B's, its '\r'


def test_overlong_line_ended_by_a_new_start_counts_as_overlong() -> None:
    framer = LineFramer()
    assert framer.feed(b"$" + b"A" * 400 + FRAMES[2]) == [LINES[2]]
    assert (framer.overlong_lines, framer.truncated_lines) == (1, 0)


def test_line_of_exactly_the_limit_passes_and_one_more_byte_does_not() -> None:
    body = b"$1,VER," + b"A" * (MAX_LINE_BYTES - 2 - len(b"$1,VER,"))
    assert len(body + b"\r\n") == MAX_LINE_BYTES
    framer = LineFramer()
    assert framer.feed(body + b"\r\n") == [body]
    assert framer.feed(body + b"A\r\n") == []
    assert framer.overlong_lines == 1


def test_framer_output_survives_a_noisy_line() -> None:
    """Frames interleaved with random noise (no '$' or newline): every frame comes out intact."""
    rng = random.Random(11)
    parts: list[bytes] = []
    for index in range(300):
        noise = bytes(b for b in (rng.randrange(256) for _ in range(rng.randrange(20))) if b not in b"$\n")
        parts += [noise, InsertedEvent(index + 1, 1 + index % 32, index % 101).to_bytes()]
    stream = b"".join(parts)
    framer = LineFramer()
    lines: list[bytes] = []
    position = 0
    while position < len(stream):
        size = rng.randint(1, 64)
        lines += framer.feed(stream[position : position + size])
        position += size
    events = [decode_line(line) for line in lines]
    assert [event.seq for event in events] == list(range(1, 301))
