"""RTP codec, sequence unwrap and the reorder buffer: loss, reordering and duplication are reported, never
spliced silently."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gb28181.rtp import (
    Delivered,
    Duplicate,
    Gap,
    Late,
    ReorderBuffer,
    ReorderEvent,
    Restart,
    RtpError,
    RtpExtension,
    RtpPacket,
    SequenceUnwrapper,
    Stray,
    parse_rtp,
    sequence_delta,
)

# The start of a real capture quoted in gb28181.md §7: V=2, PT=96, marker 0, seq 0x007a, then a pack header.
CAPTURED = bytes.fromhex("8060007a0000e1a00bebc20e") + bytes.fromhex("000001ba44")


def test_a_captured_gb28181_packet() -> None:
    packet = parse_rtp(CAPTURED)
    assert (packet.payload_type, packet.marker, packet.sequence) == (96, False, 0x7A)
    assert packet.timestamp == 0xE1A0 and packet.ssrc == 0x0BEBC20E
    assert packet.payload == bytes.fromhex("000001ba44")
    assert packet.to_bytes() == CAPTURED


def test_csrc_extension_and_padding_are_honoured() -> None:
    packet = RtpPacket(payload_type=96, sequence=65535, timestamp=2**32 - 1, ssrc=1200000001, marker=True,
                       payload=b"\x00\x00\x01\xba PS", csrcs=(1, 2, 3),
                       extension=RtpExtension(0xBEDE, b"\x10\xff\x00\x00"), padding_bytes=4)
    data = packet.to_bytes()
    assert data[0] == 0x80 | 0x20 | 0x10 | 3 and data[1] == 0x80 | 96
    assert len(data) == 12 + 12 + 4 + 4 + len(packet.payload) + 4 and data[-1] == 4
    assert parse_rtp(data) == packet
    # A parser that ignored the X bit would hand the extension to the PS demuxer as payload (srs-gb28181 #52).
    assert parse_rtp(data).payload == b"\x00\x00\x01\xba PS"


@pytest.mark.parametrize(("data", "complaint"), [
    (b"\x80\x60\x00", "RTP header needs 12"),
    (bytes([0x40]) + bytes(11), "version 1"),
    (bytes([0x8F]) + bytes(11), "15 CSRCs announced"),
    (bytes([0x90]) + bytes(11), "no extension header"),
    (bytes([0x90]) + bytes(11) + b"\x00\x00\x00\x05", "runs past"),
    (bytes([0xA0]) + bytes(11) + b"ab\x00", "padding count 0"),
    (bytes([0xA0]) + bytes(11) + b"ab\x09", "padding count 9"),
    (bytes([0x80]) + bytes(70000), "exceeds"),
])
def test_malformed_packets_name_what_was_wrong(data: bytes, complaint: str) -> None:
    with pytest.raises(RtpError, match=complaint):
        parse_rtp(data)


def test_sequence_unwrap_across_the_wrap_and_reordering() -> None:
    assert sequence_delta(2, 65534) == 4 and sequence_delta(65534, 2) == -4
    unwrapper = SequenceUnwrapper()
    assert [unwrapper.unwrap(s) for s in (65533, 65535, 65534, 0, 1, 65535, 2)] == [
        65533, 65535, 65534, 65536, 65537, 65535, 65538]
    seq = 0
    for _ in range(5 * 65536 // 1000):  # many wraps in steps
        seq = (seq + 1000) % 65536
        unwrapper.unwrap(seq)
    assert unwrapper.highest is not None and unwrapper.highest > 5 * 65536 - 2000


def _packet(sequence: int) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence=sequence % 65536, timestamp=0, ssrc=1,
                     payload=sequence.to_bytes(4, "big"))


def _run(buffer: ReorderBuffer, order: list[int]) -> list[ReorderEvent]:
    events: list[ReorderEvent] = []
    for sequence in order:
        events += buffer.push(_packet(sequence))
    return events + buffer.flush()


def test_reordering_within_the_window_is_undone() -> None:
    order = list(range(65530, 65560))
    rng = random.Random(1)
    for i in range(0, len(order) - 4, 5):
        chunk = order[i:i + 5]
        rng.shuffle(chunk)
        order[i:i + 5] = chunk
    events = _run(ReorderBuffer(window=8), order)
    assert [e.index for e in events if isinstance(e, Delivered)] == list(range(65530, 65560))
    assert all(isinstance(e, Delivered) for e in events)


def test_loss_is_a_gap_duplicates_and_late_packets_are_dropped_and_reported() -> None:
    buffer = ReorderBuffer(window=4)
    sent = [0, 1, 2, 2, 5, 6, 7, 8, 9, 3, 1, 10]  # 3 and 4 lost; 2 repeated; 3 arrives too late; 1 again
    events = _run(buffer, sent)
    delivered = [e.index for e in events if isinstance(e, Delivered)]
    assert delivered == [0, 1, 2, 5, 6, 7, 8, 9, 10]
    assert Gap(3, 4) in events and Gap(3, 4).count == 2
    assert Duplicate(2) in events and Duplicate(1) in events and Late(3) in events
    assert (buffer.stats.received, buffer.stats.delivered, buffer.stats.lost) == (12, 9, 2)
    assert (buffer.stats.duplicates, buffer.stats.late) == (2, 1)
    # Delivery order is strictly increasing: nothing out of order, nothing twice.
    assert delivered == sorted(set(delivered))


def test_the_window_bounds_what_is_held_and_flush_reports_the_tail_gap() -> None:
    buffer = ReorderBuffer(window=16)
    events: list[ReorderEvent] = []
    events += buffer.push(_packet(0))
    for sequence in range(2, 200):  # 1 never comes
        events += buffer.push(_packet(sequence))
        assert buffer.held <= 16
    assert Gap(1, 1) in events
    events = buffer.push(_packet(205)) + buffer.flush()
    assert Gap(200, 204) in events and isinstance(events[-1], Delivered) and events[-1].index == 205
    assert buffer.held == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 400), max_size=300), st.integers(1, 64))
def test_any_arrival_order_delivers_each_sequence_once_in_order_and_accounts_for_everything(
        arrivals: list[int], window: int) -> None:
    buffer = ReorderBuffer(window=window)
    events = _run(buffer, arrivals)
    delivered = [e.index for e in events if isinstance(e, Delivered)]
    assert delivered == sorted(set(delivered))
    for event in events:
        if isinstance(event, Delivered):
            assert event.packet.payload == (event.index - (event.index // 65536) * 65536).to_bytes(4, "big")
    stats = buffer.stats
    # Arrivals more than MAX_MISORDER apart are far off (RFC 3550 A.1): a restart once confirmed, a stray
    # if not. Every packet is still accounted for exactly once, and the delivered numbers' span is exactly
    # what was delivered, lost, and skipped by a restart (a new numbering begins after the old one).
    assert stats.received == len(arrivals) == stats.delivered + stats.duplicates + stats.late + stats.strays
    assert stats.strays == sum(isinstance(e, Stray) for e in events)
    restarts = [e for e in events if isinstance(e, Restart)]
    assert stats.restarts == len(restarts)
    if delivered:
        gaps = sum(e.count for e in events if isinstance(e, Gap))
        jumps = sum(r.first - r.previous - 1 for r in restarts)
        assert delivered[-1] - delivered[0] + 1 == len(delivered) + gaps + jumps


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_packets_raise_only_rtp_error(data: bytes) -> None:
    with contextlib.suppress(RtpError):
        packet = parse_rtp(data)
        assert parse_rtp(packet.to_bytes()) == packet
