"""RTP codec, sequence unwrap and the reorder buffer: loss, reordering and duplication are reported, never
spliced silently."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gb28181.rtp import (
    MAX_DROPOUT,
    MAX_MISORDER,
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


# -- numbering far off: restarts and strays (RFC 3550 A.1) --------------------------------------------------


@pytest.mark.parametrize(("restart_at", "first"),
                         [(0, 65536), (40_000, 40_000), (30_000 - 101, 65536 + 29_899)])
def test_a_restart_is_reported_as_one_not_as_loss_or_duplicates(restart_at: int, first: int) -> None:
    buffer = ReorderBuffer()
    events = _run(buffer, [*range(30_000, 30_100), *range(restart_at, restart_at + 50)])
    assert [e for e in events if not isinstance(e, Delivered)] == [
        Restart(previous=30_099, previous_sequence=30_099, first=first, sequence=restart_at)]
    delivered = [e.index for e in events if isinstance(e, Delivered)]
    assert delivered == [*range(30_000, 30_100), *range(first, first + 50)]
    stats = buffer.stats
    assert (stats.lost, stats.duplicates, stats.late, stats.restarts) == (0, 0, 0, 1)


def test_a_jump_within_misorder_is_still_reordering_not_a_restart() -> None:
    # Control for the bounds: up to MAX_MISORDER behind the highest is a late or duplicate packet, one
    # more is far off (held aside, then dropped as a stray since nothing confirms it).
    buffer = ReorderBuffer(window=4)
    for sequence in range(1000, 1200):
        buffer.push(_packet(sequence))
    assert buffer.push(_packet(1199 - MAX_MISORDER)) == [Duplicate(1199 - MAX_MISORDER)]
    assert buffer.push(_packet(1199 - MAX_MISORDER - 1)) == []
    assert buffer.flush() == [Stray(1199 - MAX_MISORDER - 1)]


def test_packets_of_the_old_numbering_reordered_behind_a_restart_are_late() -> None:
    buffer = ReorderBuffer(window=8)
    events = _run(buffer, [*range(5000, 5100), 10, 11, 5097, 12])
    assert Late(5097) in events
    assert [e.index for e in events if isinstance(e, Delivered)][-3:] == [65536 + 10, 65536 + 11, 65536 + 12]
    assert buffer.stats.strays == 0 and buffer.stats.restarts == 1


def test_held_aside_is_bounded_and_unconfirmed_strays_expire() -> None:
    buffer = ReorderBuffer(window=8)
    events: list[ReorderEvent] = []
    for sequence in range(0, 50):
        events += buffer.push(_packet(sequence))
    for k in range(40):  # spoofed packets far apart from each other and from the stream
        events += buffer.push(_packet(10_000 + 1000 * k))
        assert buffer.held <= 8 + ReorderBuffer.PROBATION_PACKETS
    for sequence in range(50, 300):
        events += buffer.push(_packet(sequence))
    assert sum(isinstance(e, Stray) for e in events) == 40 == buffer.stats.strays
    delivered = [e.index for e in events if isinstance(e, Delivered)]
    assert delivered == list(range(len(delivered))) and len(delivered) >= 300 - 8
    assert not [e for e in events if isinstance(e, Gap | Restart | Late | Duplicate)]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 65535), st.integers(0, 65535), st.lists(st.integers(0, 65535), max_size=6),
       st.integers(1, 300), st.integers(0, 6), st.booleans())
def test_a_genuine_stream_with_strays_and_a_restart_is_delivered_whole(
        start: int, restart: int, strays: list[int], before: int, seed: int, stray_first: bool) -> None:
    # The genuine stream, reordered within 3, renumbered once after `before` packets; strays far from both
    # numberings anywhere (even first). Every genuine packet is delivered in order (the
    # restart's first packet too, once the second confirms it); every stray is dropped as one.
    def far(sequence: int) -> bool:
        return all(not -MAX_MISORDER - 400 <= sequence_delta(sequence, base) <= MAX_DROPOUT + 400
                   for base in (start, restart))
    old = [(start + i) % 65536 for i in range(before)]
    new = [(restart + i) % 65536 for i in range(200)]
    apart = all(abs(sequence_delta(a, b)) > ReorderBuffer.PROBATION_PACKETS
                for i, a in enumerate(strays) for b in strays[i + 1:])
    if not far(restart) or not all(far(s) for s in strays) or not apart:
        return  # two strays close together are a restart by RFC 3550's rule; that is tested above
    rng = random.Random(seed)
    genuine = old + new
    for i in range(0, len(genuine) - 3, 4):
        if i + 3 < before or i >= before:  # not across the restart: reordered old packets there are Late
            chunk = genuine[i:i + 3]
            rng.shuffle(chunk)
            genuine[i:i + 3] = chunk
    arrivals = list(genuine)
    for k, stray in enumerate(strays):
        where = rng.randrange(len(arrivals) + 1) if k % 2 else before + 5 + k * 20
        arrivals.insert(0 if stray_first and k == 0 else where, stray)
    buffer = ReorderBuffer(window=16)
    events = _run(buffer, arrivals)
    delivered = [e.packet.payload for e in events if isinstance(e, Delivered)]
    assert delivered == [s.to_bytes(4, "big") for s in old + new]
    assert buffer.stats.strays == len(strays) and buffer.stats.restarts == 1
    assert not [e for e in events if isinstance(e, Gap | Late | Duplicate)]


def test_a_stray_before_the_stream_is_dropped_not_taken_for_its_start() -> None:
    # The very first packet is far from what follows (a spoofed packet, or one of the port's previous
    # session): one packet is no numbering (RFC 3550 A.1), so it is the stray, not the stream.
    buffer = ReorderBuffer()
    events = _run(buffer, [40_000, *range(100, 150)])
    assert [e for e in events if not isinstance(e, Delivered)] == [Stray(40_000)]
    assert [e.index for e in events if isinstance(e, Delivered)] == list(range(100, 150))
    # Control: two packets in sequence before the jump are a numbering, and the jump a restart.
    events = _run(ReorderBuffer(), [40_000, 40_001, *range(100, 150)])
    assert [e for e in events if not isinstance(e, Delivered)] == [Restart(40_001, 40_001, 65636, 100)]


def test_a_stray_expiring_during_the_startup_hold_is_reported() -> None:
    # The first packet, then a stray, then only repeats of the first for longer than a stray is kept:
    # the stray's expiry is reported even though the startup hold is still waiting.
    buffer = ReorderBuffer()
    events = buffer.push(_packet(500)) + buffer.push(_packet(30_000))
    for _ in range(MAX_MISORDER + 1):
        events += buffer.push(_packet(500))
    assert events.count(Stray(30_000)) == 1 and buffer.stats.strays == 1
    assert events.count(Duplicate(500)) == MAX_MISORDER + 1
