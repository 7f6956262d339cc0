"""RFC 4571 and `$`-interleaved TCP framing: split and coalesced reads, detection, garbage, bounds."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gb28181.framing import (
    Framing,
    FramingError,
    StreamDeframer,
    TcpFrame,
    frame_interleaved,
    frame_rfc4571,
)
from drivers.gb28181.rtp import RtpPacket, parse_rtp


def _packets(count: int, seed: int = 3) -> list[bytes]:
    rng = random.Random(seed)
    return [RtpPacket(payload_type=96, sequence=i, timestamp=i * 3600, ssrc=7,
                      payload=rng.randbytes(rng.choice([0, 1, 100, 1400, 9300]))).to_bytes()
            for i in range(count)]


def _cut(stream: bytes, rng: random.Random) -> list[bytes]:
    reads, at = [], 0
    while at < len(stream):
        size = rng.choice([1, 2, 3, 5, 13, 1500, 65536])
        reads.append(stream[at:at + size])
        at += size
    return reads


@pytest.mark.parametrize("framing", [Framing.RFC4571, Framing.INTERLEAVED])
@pytest.mark.parametrize("declared", [True, False])
def test_split_and_coalesced_reads_give_back_every_packet(framing: Framing, declared: bool) -> None:
    packets = _packets(60)
    frame = frame_rfc4571 if framing is Framing.RFC4571 else frame_interleaved
    stream = b"".join(frame(p) for p in packets)
    deframer = StreamDeframer(framing if declared else Framing.AUTO)
    frames: list[TcpFrame] = []
    for read in _cut(stream, random.Random(framing.value)):
        frames += deframer.feed(read)
    assert [f.payload for f in frames] == packets
    assert deframer.framing is framing and deframer.buffered_bytes == 0 and deframer.frames == 60
    assert {f.channel for f in frames} == ({None} if framing is Framing.RFC4571 else {0})
    assert parse_rtp(frames[5].payload).sequence == 5


def test_a_9_kib_rfc4571_packet_is_not_mistaken_for_interleaved() -> None:
    packet = RtpPacket(payload_type=96, sequence=1, timestamp=0, ssrc=7, payload=bytes(0x2400)).to_bytes()
    stream = frame_rfc4571(packet)
    assert stream[0] == 0x24  # the length starts with '$'
    deframer = StreamDeframer()
    assert [f.payload for f in deframer.feed(stream)] == [packet]
    assert deframer.framing is Framing.RFC4571


def test_a_truncated_last_frame_stays_buffered() -> None:
    stream = frame_rfc4571(_packets(1)[0] + b"")
    deframer = StreamDeframer(Framing.RFC4571)
    assert deframer.feed(stream[:-1]) == [] and deframer.buffered_bytes == len(stream) - 1


@pytest.mark.parametrize(("framing", "garbage", "complaint"), [
    (Framing.RFC4571, b"\x00\x20" + b"GET / HTTP/1.1\r\n" * 2, "not start an RTP version 2"),
    (Framing.RFC4571, b"\x00\x04\x80\x60\x00\x01", "shorter than an RTP header"),
    (Framing.INTERLEAVED, b"#\x00\x00\x20" + bytes(32), "expected '\\$'"),
    (Framing.AUTO, b"HTTP/1.1 200 OK\r\n\r\n", "not start an RTP version 2"),
])
def test_garbage_is_a_framing_error_and_the_deframer_stays_failed(
        framing: Framing, garbage: bytes, complaint: str) -> None:
    frame = frame_interleaved if framing is Framing.INTERLEAVED else frame_rfc4571
    good = frame(_packets(1)[0])
    deframer = StreamDeframer(framing)
    assert len(deframer.feed(good)) == 1  # control: the same deframer took a good frame
    with pytest.raises(FramingError, match=complaint):
        deframer.feed(garbage)
    with pytest.raises(FramingError):
        deframer.feed(good)  # no guessing where the next frame starts


def test_the_frame_size_is_bounded() -> None:
    deframer = StreamDeframer(Framing.RFC4571, max_frame_bytes=2000)
    big = RtpPacket(payload_type=96, sequence=1, timestamp=0, ssrc=7, payload=bytes(3000)).to_bytes()
    with pytest.raises(FramingError, match="exceeds 2000"):
        deframer.feed(frame_rfc4571(big)[:100])  # refused from its length, before the bytes are held
    with pytest.raises(FramingError):
        frame_rfc4571(bytes(70000))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=10), st.sampled_from(list(Framing)))
def test_fuzzed_streams_raise_only_framing_error_and_hold_at_most_one_frame(
        reads: list[bytes], framing: Framing) -> None:
    deframer = StreamDeframer(framing, max_frame_bytes=1000)
    with contextlib.suppress(FramingError):
        for read in reads:
            for frame in deframer.feed(read):
                assert 12 <= len(frame.payload) <= 1000
            assert deframer.buffered_bytes <= 1000 + 4 + 300
