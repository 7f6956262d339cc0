"""Room panel line protocol (recording lamp, START/STOP/MARK buttons, optional temperature/humidity
sensor): a pure codec, no I/O.

Wire format and rationale: `ROOM_PANEL_PROTOCOL.md` next to this file. The framing is the dock bay
controller's (`$seq,CMD,args*CRC16\\r\\n`, the same `LineFramer` and CRC-16/CCITT-FALSE), so one firmware
library and one test rig serve both boards. Every message is a frozen dataclass that checks itself on
construction; `decode_line` turns one received line into a message or raises `PanelProtocolError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, TypeVar

from drivers.serial.dock_protocol import LineFramer, crc16, next_seq

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 96  # whole frame: '$' .. '\r\n'
MAX_SEQ = 65535
MAX_TEXT_CHARS = 32
# Tenths: -40.0 .. 125.0 degC (the range of the common SHT3x/AM2302 sensors), 0.0 .. 100.0 %RH.
MIN_TEMPERATURE_DC = -400
MAX_TEMPERATURE_DC = 1250
MAX_HUMIDITY_DPCT = 1000

_TOKEN_RE = re.compile(r"[A-Z]{1,8}")
_TEXT_RE = re.compile(rf"[A-Za-z0-9._:/+\-]{{1,{MAX_TEXT_CHARS}}}")
_UNSIGNED_RE = re.compile(r"[0-9]{1,5}")
_SIGNED_RE = re.compile(r"-?[0-9]{1,4}")
_HEX4_RE = re.compile(rb"[0-9A-Fa-f]{4}")
_E = TypeVar("_E", bound=StrEnum)


class PanelError(Exception):
    """Base of every room panel error (codec and driver)."""


class NakReason(StrEnum):
    SYNTAX = "SYNTAX"
    UNKNOWN = "UNKNOWN"
    VALUE = "VALUE"
    NOSENSOR = "NOSENSOR"  # ENV asked of a panel without a sensor


class PanelProtocolError(PanelError, ValueError):
    """A line that is not a legal frame. `reason` (and `seq`, `command`) are set only when the frame's
    checksum was good, so the receiver may NAK it; otherwise the line is dropped silently."""

    def __init__(
        self, message: str, *, seq: int | None = None, command: str | None = None,
        reason: NakReason | None = None,
    ) -> None:
        super().__init__(message)
        self.seq = seq
        self.command = command
        self.reason = reason


class Lamp(StrEnum):
    """What the recording lamp shows (patterns: ROOM_PANEL_PROTOCOL.md section 5)."""

    OFF = "OFF"  # no session
    STEADY = "STEADY"  # every source of the session records
    BLINK = "BLINK"  # a session, and at least one source is not recording (a gap)
    REFUSE = "REFUSE"  # a button press was refused; the host shows it briefly, then the state again


class Button(StrEnum):
    START = "START"
    STOP = "STOP"
    MARK = "MARK"


@dataclass(frozen=True)
class Reading:
    """One sensor reading in tenths (the wire's unit: integers, no locale, no float rounding)."""

    temperature_dc: int
    humidity_dpct: int

    def __post_init__(self) -> None:
        if not MIN_TEMPERATURE_DC <= self.temperature_dc <= MAX_TEMPERATURE_DC:
            raise PanelProtocolError(
                f"temperature must be {MIN_TEMPERATURE_DC}..{MAX_TEMPERATURE_DC} tenths of a degree, "
                f"got {self.temperature_dc}"
            )
        if not 0 <= self.humidity_dpct <= MAX_HUMIDITY_DPCT:
            raise PanelProtocolError(f"humidity must be 0..{MAX_HUMIDITY_DPCT} tenths of a percent, "
                                     f"got {self.humidity_dpct}")

    @property
    def temperature_c(self) -> float:
        return self.temperature_dc / 10

    @property
    def humidity_percent(self) -> float:
        return self.humidity_dpct / 10

    def fields(self) -> tuple[str, str]:
        return str(self.temperature_dc), str(self.humidity_dpct)


def _check_seq(seq: int) -> None:
    if not 0 <= seq <= MAX_SEQ:
        raise PanelProtocolError(f"seq must be 0..{MAX_SEQ}, got {seq}")


def _check_text(value: str, name: str) -> None:
    if not _TEXT_RE.fullmatch(value):
        raise PanelProtocolError(
            f"{name} must be 1..{MAX_TEXT_CHARS} of A-Z a-z 0-9 . _ : / + -, got {value!r}"
        )


def _frame(seq: int, command: str, *fields: str) -> bytes:
    payload = ",".join((str(seq), command, *fields)).encode("ascii")
    line = b"$" + payload + b"*" + b"%04X" % crc16(payload) + b"\r\n"
    if len(line) > MAX_LINE_BYTES:  # only reachable through a bug in a message class
        raise PanelProtocolError(f"frame would be {len(line)} bytes, limit {MAX_LINE_BYTES}")
    return line


# -- host -> panel ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PingCommand:
    COMMAND: ClassVar[str] = "PING"
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, self.COMMAND)


@dataclass(frozen=True)
class IdentityQuery:
    COMMAND: ClassVar[str] = "VER"
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, self.COMMAND)


@dataclass(frozen=True)
class SetLampCommand:
    COMMAND: ClassVar[str] = "LAMP"
    seq: int
    lamp: Lamp

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        Lamp(self.lamp)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, self.COMMAND, self.lamp.value)


@dataclass(frozen=True)
class ReadingQuery:
    COMMAND: ClassVar[str] = "ENV"
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, self.COMMAND)


HostCommand = PingCommand | IdentityQuery | SetLampCommand | ReadingQuery

# -- panel -> host: replies (echo the command's seq) -----------------------------------------------------


@dataclass(frozen=True)
class PingReply:
    seq: int
    event_seq: int  # the number of the last event the panel generated

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_seq(self.event_seq)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, "ACK", "PING", str(self.event_seq))


@dataclass(frozen=True)
class IdentityReply:
    seq: int
    protocol: int
    panel_serial: str
    firmware: str
    has_sensor: bool

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        if not 1 <= self.protocol <= 99:
            raise PanelProtocolError(f"protocol must be 1..99, got {self.protocol}")
        _check_text(self.panel_serial, "panel serial")
        _check_text(self.firmware, "firmware")

    def to_bytes(self) -> bytes:
        return _frame(self.seq, "ACK", "VER", str(self.protocol), self.panel_serial, self.firmware,
                      "1" if self.has_sensor else "0")


@dataclass(frozen=True)
class LampReply:
    seq: int
    lamp: Lamp

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        Lamp(self.lamp)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, "ACK", "LAMP", self.lamp.value)


@dataclass(frozen=True)
class ReadingReply:
    seq: int
    reading: Reading | None  # None: the sensor did not answer the panel (the fields are empty)

    def __post_init__(self) -> None:
        _check_seq(self.seq)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, "ACK", "ENV", *(self.reading.fields() if self.reading else ("", "")))


@dataclass(frozen=True)
class NakReply:
    seq: int
    command: str
    reason: NakReason

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        if self.command != "?" and not _TOKEN_RE.fullmatch(self.command):
            raise PanelProtocolError(f"NAK command must be a token or '?', got {self.command!r}")

    def to_bytes(self) -> bytes:
        return _frame(self.seq, "NAK", self.command, self.reason.value)


PanelReply = PingReply | IdentityReply | LampReply | ReadingReply | NakReply

# -- panel -> host: events (the panel's event number) ---------------------------------------------------


@dataclass(frozen=True)
class ButtonEvent:
    COMMAND: ClassVar[str] = "BTN"
    seq: int
    button: Button

    def __post_init__(self) -> None:
        if not 1 <= self.seq <= MAX_SEQ:
            raise PanelProtocolError(f"event number must be 1..{MAX_SEQ}, got {self.seq}")
        Button(self.button)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, self.COMMAND, self.button.value)


@dataclass(frozen=True)
class ReadingEvent:
    COMMAND: ClassVar[str] = "CLIM"
    seq: int
    reading: Reading

    def __post_init__(self) -> None:
        if not 1 <= self.seq <= MAX_SEQ:
            raise PanelProtocolError(f"event number must be 1..{MAX_SEQ}, got {self.seq}")

    def to_bytes(self) -> bytes:
        return _frame(self.seq, self.COMMAND, *self.reading.fields())


@dataclass(frozen=True)
class BootEvent:
    COMMAND: ClassVar[str] = "BOOT"
    protocol: int
    panel_serial: str
    firmware: str
    seq: int = 0

    def __post_init__(self) -> None:
        if self.seq != 0:
            raise PanelProtocolError(f"BOOT carries event number 0, got {self.seq}")
        if not 1 <= self.protocol <= 99:
            raise PanelProtocolError(f"protocol must be 1..99, got {self.protocol}")
        _check_text(self.panel_serial, "panel serial")
        _check_text(self.firmware, "firmware")

    def to_bytes(self) -> bytes:
        return _frame(0, self.COMMAND, str(self.protocol), self.panel_serial, self.firmware)


PanelEvent = ButtonEvent | ReadingEvent | BootEvent
Message = HostCommand | PanelReply | PanelEvent

# -- decoding --------------------------------------------------------------------------------------------


def _split(line: bytes) -> tuple[int, str, list[str]]:
    body = line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line
    if len(body) + 2 > MAX_LINE_BYTES:
        raise PanelProtocolError(f"line is {len(body) + 2} bytes with terminator, limit {MAX_LINE_BYTES}")
    for offset, byte in enumerate(body):
        if not 0x20 <= byte <= 0x7E:
            raise PanelProtocolError(f"byte 0x{byte:02X} at offset {offset}, expected printable ASCII")
    if body[:1] != b"$":
        raise PanelProtocolError("expected '$' at the start of the frame")
    star = body.rfind(b"*")
    if star < 0:
        raise PanelProtocolError("no '*' before the checksum")
    payload, crc_text = body[1:star], body[star + 1 :]
    if not _HEX4_RE.fullmatch(crc_text):
        raise PanelProtocolError(f"checksum must be 4 hex digits after '*', got {crc_text.decode()!r}")
    if b"$" in payload or b"*" in payload:
        raise PanelProtocolError("stray '$' or '*' inside the frame")
    expected, received = crc16(payload), int(crc_text, 16)
    if expected != received:
        raise PanelProtocolError(f"bad checksum: expected {expected:04X}, got {received:04X}")
    fields = payload.decode("ascii").split(",")
    if not _UNSIGNED_RE.fullmatch(fields[0]) or int(fields[0]) > MAX_SEQ:
        raise PanelProtocolError(f"sequence number must be decimal 0..{MAX_SEQ}, got {fields[0]!r}")
    seq = int(fields[0])
    if len(fields) < 2 or not _TOKEN_RE.fullmatch(fields[1]):
        raise PanelProtocolError(f"frame {seq}: missing or malformed command", seq=seq, command="?",
                                 reason=NakReason.SYNTAX)
    return seq, fields[1], fields[2:]


def _count(seq: int, command: str, args: list[str], count: int) -> None:
    if len(args) != count:
        raise PanelProtocolError(f"frame {seq}: {command} takes {count} field(s), got {len(args)}",
                                 seq=seq, command=command, reason=NakReason.SYNTAX)


def _enum(kind: type[_E], seq: int, command: str, text: str) -> _E:
    try:
        return kind(text)
    except ValueError:
        raise PanelProtocolError(
            f"frame {seq}: {command}: {text[:16]!r} is not one of {', '.join(kind)}",
            seq=seq, command=command, reason=NakReason.VALUE,
        ) from None


def _reading(seq: int, command: str, temperature: str, humidity: str) -> Reading:
    if not _SIGNED_RE.fullmatch(temperature) or not _UNSIGNED_RE.fullmatch(humidity):
        raise PanelProtocolError(f"frame {seq}: {command}: reading must be integers in tenths, got "
                                 f"{temperature[:8]!r}, {humidity[:8]!r}")
    return Reading(int(temperature), int(humidity))


def _decode_ack(seq: int, args: list[str]) -> PanelReply:
    if not args:
        raise PanelProtocolError(f"frame {seq}: ACK without the command it answers")
    what, rest = args[0], args[1:]
    if what == "PING":
        _count(seq, "ACK", rest, 1)
        if not _UNSIGNED_RE.fullmatch(rest[0]):
            raise PanelProtocolError(f"frame {seq}: event number {rest[0][:8]!r} is not a number")
        return PingReply(seq, int(rest[0]))
    if what == "VER":
        _count(seq, "ACK", rest, 4)
        if not _UNSIGNED_RE.fullmatch(rest[0]) or rest[3] not in ("0", "1"):
            raise PanelProtocolError(f"frame {seq}: identity fields malformed")
        return IdentityReply(seq, int(rest[0]), rest[1], rest[2], rest[3] == "1")
    if what == "LAMP":
        _count(seq, "ACK", rest, 1)
        return LampReply(seq, _enum(Lamp, seq, "ACK", rest[0]))
    if what == "ENV":
        _count(seq, "ACK", rest, 2)
        if rest == ["", ""]:
            return ReadingReply(seq, None)
        return ReadingReply(seq, _reading(seq, "ACK", rest[0], rest[1]))
    raise PanelProtocolError(f"frame {seq}: ACK for unknown command {what[:16]!r}")


def decode_line(line: bytes) -> Message:
    """Decode one frame (with or without `\\r\\n`) into a message, or raise `PanelProtocolError`."""
    seq, command, args = _split(line)
    try:
        if command == "PING":
            _count(seq, command, args, 0)
            return PingCommand(seq)
        if command == "VER":
            _count(seq, command, args, 0)
            return IdentityQuery(seq)
        if command == "ENV":
            _count(seq, command, args, 0)
            return ReadingQuery(seq)
        if command == "LAMP":
            _count(seq, command, args, 1)
            return SetLampCommand(seq, _enum(Lamp, seq, command, args[0]))
        if command == "ACK":
            return _decode_ack(seq, args)
        if command == "NAK":
            if len(args) != 2 or not (args[0] == "?" or _TOKEN_RE.fullmatch(args[0])):
                raise PanelProtocolError(f"frame {seq}: NAK takes a command and a reason")
            return NakReply(seq, args[0], _enum(NakReason, seq, "NAK", args[1]))
        if command == "BTN":
            _count(seq, command, args, 1)
            return ButtonEvent(seq, _enum(Button, seq, command, args[0]))
        if command == "CLIM":
            _count(seq, command, args, 2)
            return ReadingEvent(seq, _reading(seq, command, args[0], args[1]))
        if command == "BOOT":
            _count(seq, command, args, 3)
            if not _UNSIGNED_RE.fullmatch(args[0]):
                raise PanelProtocolError(f"frame {seq}: BOOT protocol {args[0][:8]!r} is not a number")
            return BootEvent(int(args[0]), args[1], args[2], seq)
    except PanelProtocolError as exc:
        if exc.reason is None and command in ("PING", "VER", "ENV", "LAMP"):
            raise PanelProtocolError(str(exc), seq=seq, command=command, reason=NakReason.VALUE) from None
        raise
    raise PanelProtocolError(f"frame {seq}: unknown command {command!r}", seq=seq, command=command,
                             reason=NakReason.UNKNOWN)


def new_framer() -> LineFramer:
    return LineFramer(MAX_LINE_BYTES)


__all__ = [
    "MAX_LINE_BYTES",
    "PROTOCOL_VERSION",
    "BootEvent",
    "Button",
    "ButtonEvent",
    "HostCommand",
    "IdentityQuery",
    "IdentityReply",
    "Lamp",
    "LampReply",
    "Message",
    "NakReason",
    "NakReply",
    "PanelError",
    "PanelEvent",
    "PanelProtocolError",
    "PanelReply",
    "PingCommand",
    "PingReply",
    "Reading",
    "ReadingEvent",
    "ReadingQuery",
    "ReadingReply",
    "SetLampCommand",
    "decode_line",
    "new_framer",
    "next_seq",
]
