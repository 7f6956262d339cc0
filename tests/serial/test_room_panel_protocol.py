"""The room panel line codec (drivers/serial/room_panel_protocol.py): every message round-trips, and
hostile lines (bad checksums, junk, overlong, out-of-range values) are refused with what was wrong; the
NAK-able ones (checksum good) say so, the rest are dropped silently."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from drivers.serial.dock_protocol import LineFramer, crc16
from drivers.serial.room_panel_protocol import (
    MAX_LINE_BYTES,
    BootEvent,
    Button,
    ButtonEvent,
    IdentityQuery,
    IdentityReply,
    Lamp,
    LampReply,
    Message,
    NakReason,
    NakReply,
    PanelProtocolError,
    PingCommand,
    PingReply,
    Reading,
    ReadingEvent,
    ReadingQuery,
    ReadingReply,
    SetLampCommand,
    decode_line,
    new_framer,
)


def _line(payload: str) -> bytes:
    return b"$" + payload.encode() + b"*" + b"%04X" % crc16(payload.encode()) + b"\r\n"


MESSAGES: list[Message] = [
    PingCommand(1), IdentityQuery(65535), ReadingQuery(7), *(SetLampCommand(3, lamp) for lamp in Lamp),
    PingReply(1, 0), PingReply(2, 65535), IdentityReply(4, 1, "PANEL-01", "fw-2.1", True),
    IdentityReply(4, 1, "PANEL-01", "fw-2.1", False), LampReply(9, Lamp.BLINK),
    ReadingReply(5, Reading(-400, 0)), ReadingReply(5, Reading(1250, 1000)), ReadingReply(6, None),
    NakReply(8, "LAMP", NakReason.VALUE), NakReply(8, "?", NakReason.SYNTAX),
    *(ButtonEvent(10 + n, button) for n, button in enumerate(Button)),
    ReadingEvent(20, Reading(-15, 455)), BootEvent(1, "PANEL-01", "fw-2.1"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    data = message.to_bytes()
    assert data.startswith(b"$") and data.endswith(b"\r\n") and len(data) <= MAX_LINE_BYTES
    assert decode_line(data) == message
    assert decode_line(data[:-2]) == message  # without terminator, as the framer hands lines over


def test_known_frames_on_the_wire() -> None:
    # Written out by hand from ROOM_PANEL_PROTOCOL.md: CRC-16/CCITT-FALSE over the bytes between $ and *.
    assert SetLampCommand(12, Lamp.STEADY).to_bytes() == _line("12,LAMP,STEADY")
    assert ButtonEvent(3, Button.MARK).to_bytes() == _line("3,BTN,MARK")
    assert ReadingEvent(4, Reading(-15, 455)).to_bytes() == _line("4,CLIM,-15,455")
    assert crc16(b"123456789") == 0x29B1  # the CRC's published check value


@pytest.mark.parametrize(
    "line",
    [
        b"$12,LAMP,STEADY*0000",  # wrong checksum
        _line("12,LAMP,STEADY")[:-8] + b"*12G4",  # checksum not hex
        b"12,LAMP,STEADY*1234",  # no '$'
        b"$12,LAMP,STEADY",  # no checksum
        b"$12,LA\x00MP*1234",  # control byte
        "$12,LAMP,亮*1234".encode(),  # not ASCII
        _line("123456,PING"),  # seq out of range
        _line("1,BTN,START,EXTRA"),
        _line("1,BTN,PANIC"),  # not a button
        _line("0,BTN,START"),  # events are numbered from 1
        _line("1,CLIM,-401,500"),  # colder than the sensor can measure
        _line("1,CLIM,200,1001"),  # more than 100 %RH
        _line("1,CLIM,20.5,50"),  # tenths are integers on the wire
        _line("2,ACK,ENV,,500"),  # half a reading
        _line("2,ACK,FOO"),
        _line("0,BOOT,1,bad serial!,fw"),
        b"$" + b"1,PING," + b"A" * 100 + b"*0000",  # longer than a frame may be
    ],
)
def test_hostile_lines_are_refused(line: bytes) -> None:
    with pytest.raises(PanelProtocolError):
        decode_line(line)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [("5,LAMP,PURPLE", NakReason.VALUE), ("5,LAMP", NakReason.SYNTAX), ("5,DANCE", NakReason.UNKNOWN),
     ("5,PING,1", NakReason.SYNTAX)],
)
def test_a_bad_command_with_a_good_checksum_is_nakable(payload: str, reason: NakReason) -> None:
    with pytest.raises(PanelProtocolError) as caught:
        decode_line(_line(payload))
    assert (caught.value.seq, caught.value.reason) == (5, reason)
    # Control: a damaged frame carries no reason (the receiver stays silent: the seq cannot be trusted).
    with pytest.raises(PanelProtocolError) as damaged:
        decode_line(_line(payload)[:-6] + b"0000")
    assert damaged.value.reason is None


def test_the_framer_keeps_frames_from_noise_and_drops_overlong_lines() -> None:
    framer = new_framer()
    good = [ButtonEvent(1, Button.START).to_bytes(), PingReply(2, 1).to_bytes()]
    stream = b"\x00\xffnoise" + good[0] + b"$" + b"X" * 500 + b"\r\n" + b"\r\n$3,BT" + good[1]
    lines = [line for size in (1, 3, 7) for line in _feed(framer, stream, size)]
    assert [decode_line(line) for line in lines] == [decode_line(g) for g in good] * 3
    assert framer.overlong_lines == 3 and framer.truncated_lines == 3
    assert framer.pending_bytes == 0


def _feed(framer: LineFramer, data: bytes, size: int) -> list[bytes]:
    lines: list[bytes] = []
    for start in range(0, len(data), size):
        lines += framer.feed(data[start : start + size])
    return lines


@pytest.mark.parametrize(
    "make",
    [lambda: Reading(-401, 0), lambda: Reading(0, 1001), lambda: ButtonEvent(0, Button.STOP),
     lambda: IdentityReply(1, 1, "has space", "fw", True), lambda: BootEvent(1, "P", "fw", seq=3)],
)
def test_messages_cannot_be_built_illegal(make: Callable[[], object]) -> None:
    with pytest.raises(PanelProtocolError):
        make()
