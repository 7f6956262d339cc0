"""Dock line protocol codec: round trips, CRC, and hostile input (every byte from the board may be wrong)."""

from __future__ import annotations

import random

import pytest
from dock_helpers import frame

from drivers.serial.dock_protocol import (
    MAX_LINE_BYTES,
    BayLed,
    BayState,
    BootEvent,
    ChargeEvent,
    DockError,
    DockProtocolError,
    IdentityQuery,
    IdentityReply,
    InsertedEvent,
    LedReply,
    Message,
    NakReason,
    NakReply,
    PingCommand,
    PingReply,
    RemovedEvent,
    SetLedCommand,
    StatusQuery,
    StatusReply,
    crc16,
    decode_line,
    next_seq,
)


def _crc16_bitwise(data: bytes) -> int:
    """Independent reference: CRC-16/CCITT-FALSE the way an MCU computes it without a table."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def test_crc_is_ccitt_false() -> None:
    assert crc16(b"123456789") == 0x29B1  # the catalogue check value
    rng = random.Random(5)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        assert crc16(data) == _crc16_bitwise(data)


def test_crc_catches_what_xor_misses() -> None:
    # NMEA XOR cannot tell these apart; a swapped bay number lights the wrong bay.
    good = frame("5,LED,12,DONE")
    swapped = good.replace(b"12", b"21")
    with pytest.raises(DockProtocolError, match="bad checksum"):
        decode_line(swapped)


ALL_BAYS_WIDEST = tuple(BayState(True, BayLed.ATTENTION, 15, 100) for _ in range(32))

ROUND_TRIPS: list[Message] = [
    PingCommand(0),
    PingCommand(65535),
    IdentityQuery(7),
    StatusQuery(8),
    *(SetLedCommand(9, bay, led) for bay, led in zip((1, 17, 32, *range(2, 12)), BayLed, strict=True)),
    PingReply(1, 0),
    PingReply(65535, 65535),
    IdentityReply(2, 1, 32, "DK-2024:0001/A.b_c+d", "fw-1.2.3"),
    StatusReply(3, 12, (BayState(False, BayLed.OFF, 0, None),)),
    StatusReply(3, 12, (BayState(True, BayLed.COPYING, 3, None), BayState(True, BayLed.DONE, 10, 0))),
    StatusReply(65535, 65535, ALL_BAYS_WIDEST),
    *(LedReply(4, 5, led) for led in BayLed),
    *(NakReply(5, "LED", reason) for reason in NakReason),
    NakReply(5, "?", NakReason.SYNTAX),
    InsertedEvent(1, 1, None),
    InsertedEvent(2, 32, 0),
    InsertedEvent(65535, 3, 100),
    RemovedEvent(4, 9),
    ChargeEvent(5, 9, 42),
    BootEvent(1, 8, "SIMDOCK-0001", "simdock-1.0"),
]


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=repr)
def test_round_trip(message: Message) -> None:
    line = message.to_bytes()
    assert line.startswith(b"$") and line.endswith(b"\r\n")
    assert len(line) <= MAX_LINE_BYTES
    assert decode_line(line) == message
    assert decode_line(line[:-2]) == message  # as the framer hands it over
    assert decode_line(line[:-2] + b"\n") == message  # bare LF terminator
    lower = line[:-6] + line[-6:-2].lower() + b"\r\n"
    assert decode_line(lower) == message  # hex case is not significant


def test_widest_status_fits_in_one_frame() -> None:
    line = StatusReply(65535, 65535, ALL_BAYS_WIDEST).to_bytes()
    assert len(line) == 254 <= MAX_LINE_BYTES


def test_known_encodings() -> None:
    # Pin the wire format so a change in the codec cannot silently change what firmware must parse.
    assert PingCommand(1).to_bytes() == b"$1,PING*0744\r\n"
    assert SetLedCommand(3, 12, BayLed.DONE).to_bytes() == b"$3,LED,12,DONE*6FDA\r\n"
    assert InsertedEvent(9, 1, None).to_bytes() == b"$9,INS,1,*204E\r\n"
    status = StatusReply(4, 7, (BayState(True, BayLed.COPYING, 3, 85), BayState(False, BayLed.IDLE, 2, None)))
    assert status.to_bytes().startswith(b"$4,ACK,STA,7,2,1C385,0I2*")


def test_next_seq_wraps_past_zero() -> None:
    assert next_seq(0) == 1
    assert next_seq(41) == 42
    assert next_seq(65535) == 1


# (line, what the message must say, NAK reason or None when the frame must be dropped silently)
HOSTILE: list[tuple[bytes, str, NakReason | None]] = [
    (b"", "empty line", None),
    (b"\r\n", "empty line", None),
    (b"PING*0000", "expected '$' at start", None),
    (b"$1,PING", "no '*'", None),
    (b"$1,PING*12", "4 hex digits", None),
    (b"$1,PING*ZZZZ", "4 hex digits", None),
    (b"$1,PING*07440", "4 hex digits", None),
    (b"$1,PING*0000", "bad checksum: expected 0744, got 0000", None),
    (b"$1,PING\xc3\xa9*0000", "non-ASCII byte 0xC3 at offset 7", None),
    (b"$1,PI\x00NG*0000", "control byte 0x00 at offset 5", None),
    (b"$1,PING\r*0744", "control byte 0x0D", None),
    (frame("1,VER," + "A" * 300), "limit 256", None),
    (b"$1,P$NG*0000", "stray '$'", None),
    (b"$1,P*NG*0000", "stray '*'", None),
    (frame("x,PING"), "sequence number must be decimal", None),
    (frame("65536,PING"), "sequence number must be decimal", None),
    (frame("-1,PING"), "sequence number must be decimal", None),
    (frame(",PING"), "sequence number must be decimal", None),
    (frame("1"), "missing command", NakReason.SYNTAX),
    (frame("1,"), "missing command", NakReason.SYNTAX),
    (frame("1,FOO"), "unknown command 'FOO'", NakReason.UNKNOWN),
    (frame("1,led,1,DONE"), "unknown command 'led'", NakReason.UNKNOWN),
    (frame("1,PING,extra"), "expected 0 argument(s), got 1", NakReason.SYNTAX),
    (frame("1,LED,0,DONE"), "bay must be 1..32, got 0", NakReason.RANGE),
    (frame("1,LED,33,DONE"), "bay must be 1..32, got 33", NakReason.RANGE),
    (frame("1,LED,99999,DONE"), "bay must be 1..32", NakReason.RANGE),
    (frame("1,LED,03,DONE"), "bay must be a decimal number, got '03'", NakReason.SYNTAX),
    (frame("1,LED, 3,DONE"), "bay must be a decimal number", NakReason.SYNTAX),
    (frame("1,LED,3,BLINK"), "LED state must be one of", NakReason.VALUE),
    (frame("1,LED,3,done"), "LED state must be one of", NakReason.VALUE),
    (frame("1,LED,3"), "expected 2 argument(s), got 1", NakReason.SYNTAX),
    (frame("1,LED,3,DONE,x"), "expected 2 argument(s), got 3", NakReason.SYNTAX),
    (frame("1,ACK"), "ACK without", NakReason.SYNTAX),
    (frame("1,ACK,FOO"), "ACK of 'FOO'", NakReason.SYNTAX),
    (frame("1,ACK,PING"), "expected 1 argument(s), got 0", NakReason.SYNTAX),
    (frame("1,ACK,PING,70000"), "event_seq must be 0..65535, got 70000", NakReason.VALUE),
    (frame("1,ACK,LED,3,DONE,x"), "expected 2 argument(s)", NakReason.SYNTAX),
    (frame("1,ACK,VER,1,8,bad serial!,fw"), "board serial must be", NakReason.VALUE),
    (frame("1,ACK,VER,1,8,S" + "x" * 40 + ",fw"), "board serial must be 1..32", NakReason.VALUE),
    (frame("1,ACK,VER,1,8,S,"), "firmware must be", NakReason.VALUE),
    (frame("1,ACK,VER,0,8,S,fw"), "protocol version must be 1..999", NakReason.VALUE),
    (frame("1,ACK,VER,1,0,S,fw"), "bay count must be 1..32, got 0", NakReason.RANGE),
    (frame("1,ACK,STA,5"), "expected 2 argument(s), got 1", NakReason.SYNTAX),
    (frame("1,ACK,STA,5,3,0I0,1C385"), "expected 5 argument(s), got 4", NakReason.SYNTAX),
    (frame("1,ACK,STA,5,1,0I0,1C385"), "expected 3 argument(s), got 4", NakReason.SYNTAX),
    (frame("1,ACK,STA,5,33"), "bay count must be 1..32, got 33", NakReason.RANGE),
    (frame("1,ACK,STA,5,2,0I0,1X385"), "bay 2: LED letter must be one of", NakReason.VALUE),
    (frame("1,ACK,STA,5,2,0I0,0C385"), "bay 2: an empty bay has no charge", NakReason.VALUE),
    (frame("1,ACK,STA,5,2,0I0,1C3101"), "bay 2: charge percent must be 0..100", NakReason.VALUE),
    (frame("1,ACK,STA,5,2,0I0,1C3085"), "leading zeros", NakReason.VALUE),
    (frame("1,ACK,STA,5,2,0I0,2C3"), "bay status token must be", NakReason.VALUE),
    (frame("1,ACK,STA,5,2,0I0,1c3"), "bay status token must be", NakReason.VALUE),
    (frame("1,ACK,STA,5,2,0I0,"), "bay 2: bay status token must be", NakReason.VALUE),
    (frame("1,NAK,LED,WHY"), "NAK reason must be one of", NakReason.VALUE),
    (frame("1,NAK,led,BUSY"), "NAK command must be", NakReason.SYNTAX),
    (frame("1,NAK,LED"), "expected 2 argument(s), got 1", NakReason.SYNTAX),
    (frame("1,INS,3,101"), "charge percent must be 0..100, got 101", NakReason.VALUE),
    (frame("1,INS,3,-5"), "charge percent must be a decimal number", NakReason.SYNTAX),
    (frame("1,INS,3"), "expected 2 argument(s), got 1", NakReason.SYNTAX),
    (frame("1,CHG,3,"), "charge percent must be a decimal number, got ''", NakReason.SYNTAX),
    (frame("1,REM,40"), "bay must be 1..32, got 40", NakReason.RANGE),
    (frame("1,REM"), "expected 1 argument(s), got 0", NakReason.SYNTAX),
    (frame("5,BOOT,1,8,S,fw"), "BOOT must carry event number 0, got 5", NakReason.VALUE),
    (frame("0,BOOT,1,0,S,fw"), "bay count must be 1..32, got 0", NakReason.RANGE),
]


@pytest.mark.parametrize(("line", "message", "reason"), HOSTILE, ids=[repr(h[0][:40]) for h in HOSTILE])
def test_hostile_line_is_refused_with_a_precise_error(
    line: bytes, message: str, reason: NakReason | None
) -> None:
    with pytest.raises(DockProtocolError) as caught:
        decode_line(line)
    assert message in str(caught.value)
    assert caught.value.reason is reason
    assert isinstance(caught.value, DockError)
    if reason is not None:
        # Enough to NAK: the sequence number and a command token that is itself legal on the wire.
        assert caught.value.seq is not None
        assert caught.value.command is not None
        NakReply(caught.value.seq, caught.value.command, reason).to_bytes()


def test_unknown_command_echo_is_sanitised() -> None:
    with pytest.raises(DockProtocolError) as caught:
        decode_line(frame("4,led,1,DONE"))
    assert (caught.value.seq, caught.value.command) == (4, "?")
    with pytest.raises(DockProtocolError) as caught:
        decode_line(frame("4,FOO"))
    assert (caught.value.seq, caught.value.command) == (4, "FOO")


@pytest.mark.parametrize(
    "build",
    [
        lambda: SetLedCommand(1, 0, BayLed.IDLE),
        lambda: SetLedCommand(1, 33, BayLed.IDLE),
        lambda: SetLedCommand(70000, 1, BayLed.IDLE),
        lambda: SetLedCommand(1, 1, "IDLE"),  # type: ignore[arg-type]
        lambda: BayState(False, BayLed.OFF, 0, 50),
        lambda: BayState(True, BayLed.OFF, 16, 50),
        lambda: BayState(True, BayLed.OFF, 0, 101),
        lambda: StatusReply(1, 1, ()),
        lambda: IdentityReply(1, 1, 8, "has space", "fw"),
        lambda: IdentityReply(1, 1, 8, "S,1", "fw"),
        lambda: NakReply(1, "LED,1", NakReason.BUSY),
        lambda: ChargeEvent(1, 1, None),  # type: ignore[arg-type]
        lambda: BootEvent(1, 33, "S", "fw"),
    ],
)
def test_messages_refuse_to_be_built_invalid(build: object) -> None:
    assert callable(build)
    with pytest.raises(DockProtocolError):
        build()


def _mutate(line: bytes, rng: random.Random) -> bytes:
    data = bytearray(line)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        position = rng.randrange(len(data)) if data else 0
        if op == 0 and data:
            data[position] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            del data[position]
        elif op == 2:
            data.insert(position, rng.randrange(256))
        else:
            data = data[: rng.randrange(len(data) + 1)]
    return bytes(data)


def test_fuzzed_lines_only_ever_raise_dock_protocol_error() -> None:
    rng = random.Random(947)
    originals = [message.to_bytes() for message in ROUND_TRIPS]
    accepted = 0
    for _ in range(5000):
        line = _mutate(rng.choice(originals), rng)
        try:
            message = decode_line(line)
        except DockProtocolError:
            continue
        # Anything that decodes re-encodes to the same frame: the decoder accepts nothing ambiguous.
        accepted += 1
        body = line.rstrip(b"\n").rstrip(b"\r")
        assert message.to_bytes()[:-2].upper() == body.upper()
    for _ in range(2000):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
        with pytest.raises(DockProtocolError):
            decode_line(b"$" + noise)
    assert accepted < 100  # mutations that survive are only truncated terminators


def test_crc_fuzz_every_single_bit_flip_is_caught() -> None:
    line = StatusReply(3, 12, ALL_BAYS_WIDEST[:8]).to_bytes()[:-2]
    for position in range(1, line.rindex(b"*")):
        for bit in range(7):  # bit 7 would make it non-ASCII, refused earlier
            mutated = bytearray(line)
            mutated[position] ^= 1 << bit
            with pytest.raises(DockProtocolError):
                decode_line(bytes(mutated))
