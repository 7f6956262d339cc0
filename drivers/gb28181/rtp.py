"""RTP (RFC 3550) as GB/T 28181 devices send it: header codec, sequence unwrap, reorder buffer. Pure, no I/O.

`parse_rtp(data)` reads one packet (version 2; CSRC list, header extension and padding honoured, since some
devices set the X bit: srs-gb28181 #52) into an `RtpPacket`, or raises `RtpError` naming what was wrong;
`RtpPacket.to_bytes()` writes it back. A packet's payload may be empty (header only, or all of it padding:
RFC 6263's keepalive): it is a valid packet with a place in the numbering, and what it means (no media) is
the receiver's call. `SequenceUnwrapper` extends 16-bit sequence numbers across wrap-around.
`ReorderBuffer` puts packets that UDP reordered back in order within a bounded window and says what it could
not: every lost range is reported as a `Gap`, every repeated packet as a `Duplicate`, every packet that came
after its place was given up as `Late`; nothing is delivered twice or out of order, so a recording's gaps are
known, never silently spliced. A jump of the numbering far ahead or behind (RFC 3550 A.1: MAX_DROPOUT,
MAX_MISORDER) is believed only when a following packet near it confirms it: then it is a `Restart` (devices
renumber when their encoder or the file sent changes), never a loss count; a lone packet far off (spoofed, an
old session's, corrupted) is held aside and dropped as a `Stray`, and the genuine stream goes on.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

RTP_VERSION = 2
HEADER_BYTES = 12
MAX_DROPOUT = 3000  # RFC 3550 A.1: a jump ahead up to this is loss, beyond it a restart or a stray
MAX_MISORDER = 100  # RFC 3550 A.1: a packet up to this far behind is reordered, beyond: restart or stray
MAX_PACKET_BYTES = 65535  # what one UDP datagram or one RFC 4571 frame can carry
SEQUENCE_MODULO = 1 << 16
_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """Bytes that are not an RTP packet; the message says what was wrong."""


@dataclass(frozen=True)
class RtpExtension:
    """The header extension (RFC 3550 §5.3.1): a profile-defined 16-bit id and whole 32-bit words."""

    profile: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.profile <= 0xFFFF:
            raise RtpError(f"extension profile {self.profile} does not fit 16 bits")
        if len(self.data) % 4 or len(self.data) > 4 * 0xFFFF:
            raise RtpError(f"extension of {len(self.data)} bytes is not a whole number of words up to 65535")


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet. `padding_bytes` counts the padding at the end (0: no P bit), including its count
    byte; `payload` excludes it."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding_bytes: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} is outside 0..127")
        if not 0 <= self.sequence < SEQUENCE_MODULO:
            raise RtpError(f"sequence number {self.sequence} does not fit 16 bits")
        words = (("timestamp", self.timestamp), ("SSRC", self.ssrc), *(("CSRC", c) for c in self.csrcs))
        for name, value in words:
            if not 0 <= value <= 0xFFFFFFFF:
                raise RtpError(f"{name} {value} does not fit 32 bits")
        if len(self.csrcs) > 15:
            raise RtpError(f"{len(self.csrcs)} CSRCs, at most 15")
        if not 0 <= self.padding_bytes <= 255:
            raise RtpError(f"{self.padding_bytes} padding bytes, at most 255")

    def to_bytes(self) -> bytes:
        first = (RTP_VERSION << 6) | (0x20 if self.padding_bytes else 0) | (0x10 if self.extension else 0)
        first |= len(self.csrcs)
        parts = [_HEADER.pack(first, (0x80 if self.marker else 0) | self.payload_type, self.sequence,
                              self.timestamp, self.ssrc)]
        parts += [struct.pack("!I", c) for c in self.csrcs]
        if self.extension is not None:
            parts.append(struct.pack("!HH", self.extension.profile, len(self.extension.data) // 4))
            parts.append(self.extension.data)
        parts.append(self.payload)
        if self.padding_bytes:
            parts.append(bytes(self.padding_bytes - 1) + bytes([self.padding_bytes]))
        data = b"".join(parts)
        if len(data) > MAX_PACKET_BYTES:
            raise RtpError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_BYTES}")
        return data


def parse_rtp(data: bytes) -> RtpPacket:
    """One RTP packet from one datagram or one TCP frame."""
    if len(data) < HEADER_BYTES:
        raise RtpError(f"{len(data)} bytes, an RTP header needs {HEADER_BYTES}")
    if len(data) > MAX_PACKET_BYTES:
        raise RtpError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_BYTES}")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    version = first >> 6
    if version != RTP_VERSION:
        raise RtpError(f"RTP version {version}, expected {RTP_VERSION}")
    csrc_count = first & 0x0F
    offset = HEADER_BYTES + 4 * csrc_count
    if len(data) < offset:
        raise RtpError(f"{csrc_count} CSRCs announced but the packet has {len(data)} bytes")
    csrcs = struct.unpack_from(f"!{csrc_count}I", data, HEADER_BYTES)
    extension = None
    if first & 0x10:
        if len(data) < offset + 4:
            raise RtpError("extension bit set but no extension header")
        profile, words = struct.unpack_from("!HH", data, offset)
        end = offset + 4 + 4 * words
        if len(data) < end:
            raise RtpError(f"extension of {words} words runs past the packet's {len(data)} bytes")
        extension = RtpExtension(profile, bytes(data[offset + 4:end]))
        offset = end
    end = len(data)
    padding = 0
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or end - padding < offset:
            raise RtpError(f"padding count {padding} does not fit the packet")
        end -= padding
    return RtpPacket(payload_type=second & 0x7F, marker=bool(second & 0x80), sequence=sequence,
                     timestamp=timestamp, ssrc=ssrc, payload=bytes(data[offset:end]), csrcs=tuple(csrcs),
                     extension=extension, padding_bytes=padding)


def sequence_delta(newer: int, older: int) -> int:
    """The signed distance from 16-bit sequence number `older` to `newer`, the shorter way round."""
    return ((newer - older + SEQUENCE_MODULO // 2) % SEQUENCE_MODULO) - SEQUENCE_MODULO // 2


class SequenceUnwrapper:
    """Extends 16-bit sequence numbers to a monotonic count across wrap-around, relative to the highest
    seen: a packet up to 32767 behind it is earlier (reordered), otherwise later."""

    def __init__(self) -> None:
        self._highest: int | None = None

    @property
    def highest(self) -> int | None:
        return self._highest

    def rebase(self, extended: int) -> None:
        """The numbering restarted: `extended` is the extended number of its packet unwrapped next."""
        self._highest = extended

    def unwrap(self, sequence: int) -> int:
        if not 0 <= sequence < SEQUENCE_MODULO:
            raise RtpError(f"sequence number {sequence} does not fit 16 bits")
        if self._highest is None:
            self._highest = sequence
            return sequence
        extended = self._highest + sequence_delta(sequence, self._highest % SEQUENCE_MODULO)
        self._highest = max(self._highest, extended)
        return extended


@dataclass(frozen=True)
class Delivered:
    """The next packet in order; `index` is its extended (unwrapped) sequence number."""

    index: int
    packet: RtpPacket


@dataclass(frozen=True)
class Gap:
    """Sequence numbers `first..last` (extended, inclusive) never came and were given up."""

    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Duplicate:
    """A packet with a sequence number already buffered or delivered: dropped."""

    index: int


@dataclass(frozen=True)
class Late:
    """A packet that came after its place had been given up as lost: dropped, never spliced in."""

    index: int


@dataclass(frozen=True)
class Restart:
    """The sender's numbering jumped from sequence number `previous_sequence` (the last of the old numbering,
    extended `previous`) to `sequence`, and a following packet confirmed it: the new numbering is delivered
    from extended number `first` on (after every number of the old one). Not a loss count: whether packets
    were lost at the jump cannot be known from the numbers (a loss of more than MAX_DROPOUT packets looks the
    same), so the caller records it as a discontinuity of its own."""

    previous: int
    previous_sequence: int
    first: int
    sequence: int


@dataclass(frozen=True)
class Stray:
    """A packet far from the stream's numbering (sequence number `sequence`) that no following packet
    confirmed as a restart: dropped (a spoofed or corrupted packet, or one of an old session)."""

    sequence: int


ReorderEvent = Delivered | Gap | Duplicate | Late | Restart | Stray


@dataclass
class ReorderStats:
    """Every packet received ends as exactly one of delivered, duplicates, late, strays (or is still held)."""

    received: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    late: int = 0
    strays: int = 0
    restarts: int = 0


class ReorderBuffer:
    """Puts one stream's RTP packets back in sequence order within a window of `window` sequence numbers.

    `push(packet)` returns what became certain: packets delivered in order, and the `Gap`, `Duplicate` and
    `Late` reports. A missing packet is waited for until a packet `window` or more ahead of it has come (at
    most `window` packets held); then it is reported lost and delivery continues. The stream's first
    packets are held until 8 (or `window`, if fewer) have come, so that a reordered start is put right
    too; a packet from before that start, come later, is `Late` (never seen, so not a duplicate).

    A packet more than max(MAX_DROPOUT, window) ahead of the highest number seen, or more than
    max(MAX_MISORDER, window) behind it, is held aside (at most `PROBATION_PACKETS`, each for at most
    MAX_MISORDER packets received): when another such packet comes within `PROBATION_PACKETS` numbers of
    one held aside, the numbering restarted there (`Restart`): what is held of the old numbering is
    delivered with its holes reported, and the new numbering is delivered after it. A packet held aside that
    nothing confirms is dropped as a `Stray`. A packet of the old numbering reordered behind a restart is
    `Late`. If the stream's first packet is the one far off (the startup hold has only it), it is the
    stray, and the confirmed numbering is the stream's start (RFC 3550 A.1 takes a source as valid after
    two packets in sequence).

    `flush()` (end of stream or an idle timeout) delivers what is held, reporting the holes between, and
    drops what is held aside as strays. Memory: at most `window` packets, `PROBATION_PACKETS` held aside
    and the last `remembered` given-up ranges (to tell a late packet from a duplicate)."""

    PROBATION_PACKETS = 8

    def __init__(self, *, window: int = 64, remembered: int = 64) -> None:
        if not 1 <= window < SEQUENCE_MODULO // 2:
            raise ValueError(f"window must be 1..{SEQUENCE_MODULO // 2 - 1}")
        self._window = window
        self._startup = min(window, 8)
        self._unwrapper = SequenceUnwrapper()
        self._held: dict[int, RtpPacket] = {}
        self._next: int | None = None
        self._given_up: deque[Gap] = deque(maxlen=remembered)
        self._start: int | None = None  # the extended number the current numbering was delivered from
        self._max_ahead = max(MAX_DROPOUT, window)
        self._max_behind = max(MAX_MISORDER, window)
        # Packets far from the numbering, waiting for a second one to confirm a restart: (received count
        # when it came, packet), oldest first.
        self._aside: deque[tuple[int, RtpPacket]] = deque()
        self._previous: tuple[int, int] | None = None  # the old numbering's last (sequence, extended number)
        self.stats = ReorderStats()

    @property
    def held(self) -> int:
        return len(self._held) + len(self._aside)

    def push(self, packet: RtpPacket) -> list[ReorderEvent]:
        self.stats.received += 1
        events: list[ReorderEvent] = []
        self._expire_aside(events)
        highest = self._unwrapper.highest
        if highest is not None:
            delta = sequence_delta(packet.sequence, highest % SEQUENCE_MODULO)
            if delta >= self._max_ahead or delta < -self._max_behind:
                self._far_off(packet, events)
                return events
        index = self._unwrapper.unwrap(packet.sequence)
        if self._next is None:
            # The first packets may come reordered too: hold a few before deciding where the stream starts.
            if index in self._held:
                self.stats.duplicates += 1
                return [*events, Duplicate(index)]
            self._held[index] = packet
            if len(self._held) < self._startup:
                return events
            self._next = min(self._held)
        elif index < self._next:
            assert self._start is not None
            if index < self._start or any(gap.first <= index <= gap.last for gap in self._given_up):
                self.stats.late += 1
                return [*events, Late(index)]
            self.stats.duplicates += 1
            return [*events, Duplicate(index)]
        elif index in self._held:
            self.stats.duplicates += 1
            return [*events, Duplicate(index)]
        else:
            self._held[index] = packet
        if self._start is None:
            self._start = self._next
        self._deliver(events)
        while self._held and max(self._held) - self._next >= self._window:
            self._skip_to(min(self._held), events)
            self._deliver(events)
        return events

    def flush(self) -> list[ReorderEvent]:
        """Deliver everything held, in order, reporting the holes between (the stream ended or went idle);
        drop what is held aside as strays."""
        events: list[ReorderEvent] = []
        self._deliver_held(events)
        while self._aside:
            self._drop_stray(self._aside.popleft()[1], events)
        return events

    def _deliver_held(self, events: list[ReorderEvent]) -> None:
        if self._next is None and self._held:
            self._next = self._start = min(self._held)
        while self._held:
            self._skip_to(min(self._held), events)
            self._deliver(events)

    def _far_off(self, packet: RtpPacket, events: list[ReorderEvent]) -> None:
        """A packet far from the numbering: old numbering's, a restart's first or second, or a stray."""
        if self._previous is not None:
            previous_sequence, previous = self._previous
            behind = sequence_delta(packet.sequence, previous_sequence)
            if -self._max_behind <= behind <= 0:  # the old numbering, reordered behind the restart
                self.stats.late += 1
                events.append(Late(previous + behind))
                return
        if any(p.sequence == packet.sequence for _, p in self._aside):
            self._drop_stray(packet, events)  # a repeat of one held aside: it confirms nothing
            return
        near = [p for _, p in self._aside
                if 0 < abs(sequence_delta(packet.sequence, p.sequence)) <= self.PROBATION_PACKETS]
        if near:
            self._restart(packet, near, events)
            return
        if len(self._aside) >= self.PROBATION_PACKETS:
            self._drop_stray(self._aside.popleft()[1], events)
        self._aside.append((self.stats.received, packet))

    def _restart(self, packet: RtpPacket, near: list[RtpPacket], events: list[ReorderEvent]) -> None:
        """`packet` confirms the numbering restarted near the packets `near` held aside."""
        for _, other in self._aside:
            if all(other is not p for p in near):
                self._drop_stray(other, events)
        self._aside.clear()
        group = sorted([*near, packet], key=lambda p: sequence_delta(p.sequence, packet.sequence))
        if self._next is None and len(self._held) == 1:
            # The stream's very first packet was the one far off, and nothing confirmed it (RFC 3550 A.1:
            # a source is valid after two packets in sequence): it was the stray, this is the stream.
            self._drop_stray(self._held.popitem()[1], events)
            self._unwrapper = SequenceUnwrapper()
            for member in group:
                self._held[self._unwrapper.unwrap(member.sequence)] = member
            if len(self._held) >= self._startup:
                self._next = self._start = min(self._held)
                self._deliver(events)
            return
        self._deliver_held(events)
        highest = self._unwrapper.highest
        assert highest is not None and self._next is not None
        first = highest + 1 + (group[0].sequence - highest - 1) % SEQUENCE_MODULO
        previous = self._next - 1
        events.append(Restart(previous, previous % SEQUENCE_MODULO, first, group[0].sequence))
        self.stats.restarts += 1
        self._previous = (previous % SEQUENCE_MODULO, previous)
        self._unwrapper.rebase(first)
        self._next = self._start = first
        for member in group:
            self._held[self._unwrapper.unwrap(member.sequence)] = member
        self._deliver(events)

    def _expire_aside(self, events: list[ReorderEvent]) -> None:
        while self._aside and self.stats.received - self._aside[0][0] > MAX_MISORDER:
            self._drop_stray(self._aside.popleft()[1], events)

    def _drop_stray(self, packet: RtpPacket, events: list[ReorderEvent]) -> None:
        self.stats.strays += 1
        events.append(Stray(packet.sequence))

    def _deliver(self, events: list[ReorderEvent]) -> None:
        assert self._next is not None
        while self._next in self._held:
            events.append(Delivered(self._next, self._held.pop(self._next)))
            self.stats.delivered += 1
            self._next += 1

    def _skip_to(self, index: int, events: list[ReorderEvent]) -> None:
        assert self._next is not None
        if index > self._next:
            gap = Gap(self._next, index - 1)
            self._given_up.append(gap)
            self.stats.lost += gap.count
            events.append(gap)
            self._next = index
