"""Dock bay controller line protocol: a pure codec, no I/O.

Wire format and rationale: `DOCK_PROTOCOL.md` next to this file. Every message is a frozen dataclass that
validates itself on construction, so `to_bytes()` can only produce legal frames; `decode_line()` turns one
received line into a message or raises `DockProtocolError` saying what was expected and what came.
`LineFramer` cuts an arbitrary byte stream into candidate lines.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

# Version 2 added the LED patterns that tell error classes apart (DENIED .. RECEIPT), version 3 the pattern
# of a bouncing bay (BOUNCING). An older board knows only the states of its version: the host shows it the
# nearest one it knows (`led_for_protocol`). Version 4 added the bay power cycle (PWR): a board of an earlier
# version answers it NAK UNKNOWN.
PROTOCOL_VERSION = 4
SUPPORTED_PROTOCOLS = frozenset({1, 2, 3, 4})
POWER_CYCLE_PROTOCOL = 4
MIN_POWER_OFF_MS = 100
MAX_POWER_OFF_MS = 10000
MAX_LINE_BYTES = 256  # whole frame: '$' .. '\r\n'
MAX_BAYS = 32
MAX_SEQ = 65535
MAX_TEXT_CHARS = 32
FRAME_START = b"$"
TERMINATOR = b"\r\n"

_TOKEN_RE = re.compile(r"[A-Z]{1,8}")
_TEXT_RE = re.compile(rf"[A-Za-z0-9._:/+\-]{{1,{MAX_TEXT_CHARS}}}")
_DECIMAL_RE = re.compile(r"[0-9]{1,5}")
_HEX4_RE = re.compile(rb"[0-9A-Fa-f]{4}")
_STATUS_TOKEN_RE = re.compile(r"([01])([A-Z])([0-9A-F])([0-9]{0,3})")


class DockError(Exception):
    """Base of every dock bay controller error (codec and driver)."""


class NakReason(StrEnum):
    """Why the board refused a command (the `<reason>` of a NAK frame)."""

    SYNTAX = "SYNTAX"
    UNKNOWN = "UNKNOWN"
    RANGE = "RANGE"
    VALUE = "VALUE"
    BUSY = "BUSY"


class DockProtocolError(DockError, ValueError):
    """A frame or message is not what the protocol allows.

    `reason` is set only when the frame's integrity was proven (CRC good) and its sequence number read:
    then the receiver may answer with `NAK <command> <reason>` using `seq`. With `reason` None the frame
    must be dropped silently.
    """

    def __init__(
        self, message: str, *, seq: int | None = None, command: str | None = None,
        reason: NakReason | None = None,
    ) -> None:
        super().__init__(message)
        self.seq = seq
        self.command = command
        self.reason = reason


class BayLed(StrEnum):
    """State of one bay's LED, as the host sets it. What each looks like: `LED_PATTERNS`."""

    OFF = "OFF"
    IDLE = "IDLE"
    COPYING = "COPYING"
    DONE = "DONE"
    ERROR = "ERROR"
    ATTENTION = "ATTENTION"
    # Protocol 2: one pattern per error class an officer acts on differently.
    DENIED = "DENIED"  # recorder not on the station's allow-list
    PASSWORD = "PASSWORD"  # the recorder refused the station's password (or locked itself)
    FULL = "FULL"  # the station's disk is full; the recorder was left untouched
    PULLED = "PULLED"  # removed before the docking ended
    PARTIAL = "PARTIAL"  # some files could not be acquired; the rest are safe
    RECEIPT = "RECEIPT"  # every file safe here; erased from the recorder after the central's receipt
    # Protocol 3.
    BOUNCING = "BOUNCING"  # the bay's presence switch keeps toggling: its events are only counted


LED_LETTERS: dict[BayLed, str] = {
    BayLed.OFF: "O",
    BayLed.IDLE: "I",
    BayLed.COPYING: "C",
    BayLed.DONE: "D",
    BayLed.ERROR: "E",
    BayLed.ATTENTION: "A",
    BayLed.DENIED: "N",
    BayLed.PASSWORD: "P",
    BayLed.FULL: "F",
    BayLed.PULLED: "L",
    BayLed.PARTIAL: "S",
    BayLed.RECEIPT: "R",
    BayLed.BOUNCING: "B",
}
_LED_BY_LETTER: dict[str, BayLed] = {letter: led for led, letter in LED_LETTERS.items()}

# The states each protocol version knows; a board NAKs (VALUE) a state of a later version.
PROTOCOL_1_LEDS = frozenset(
    {BayLed.OFF, BayLed.IDLE, BayLed.COPYING, BayLed.DONE, BayLed.ERROR, BayLed.ATTENTION}
)
PROTOCOL_2_LEDS = frozenset(BayLed) - {BayLed.BOUNCING}
LEDS_BY_PROTOCOL: dict[int, frozenset[BayLed]] = {
    1: PROTOCOL_1_LEDS, 2: PROTOCOL_2_LEDS, 3: frozenset(BayLed), 4: frozenset(BayLed)
}
# What an older board shows instead of a state it does not know: a protocol 1 board red for every failure,
# amber for "safe, but not finished"; a protocol 1 or 2 board amber ATTENTION ("needs a person") for a
# bouncing bay, as the host showed before protocol 3.
_OLDER_FALLBACK: dict[BayLed, BayLed] = {
    BayLed.DENIED: BayLed.ERROR,
    BayLed.PASSWORD: BayLed.ERROR,
    BayLed.FULL: BayLed.ERROR,
    BayLed.PULLED: BayLed.ERROR,
    BayLed.PARTIAL: BayLed.ERROR,
    BayLed.RECEIPT: BayLed.ATTENTION,
    BayLed.BOUNCING: BayLed.ATTENTION,
}


def led_for_protocol(led: BayLed, protocol: int) -> BayLed:
    """The state to send a board of `protocol` for `led`: itself, or the nearest state it knows."""
    if protocol not in LEDS_BY_PROTOCOL:
        raise DockProtocolError(f"protocol version must be one of {sorted(LEDS_BY_PROTOCOL)}, got {protocol}")
    if led in LEDS_BY_PROTOCOL[protocol]:
        return led
    return _OLDER_FALLBACK[led]


class LedColour(StrEnum):
    OFF = "off"
    WHITE = "white"
    BLUE = "blue"
    GREEN = "green"
    AMBER = "amber"
    RED = "red"


@dataclass(frozen=True)
class LedPattern:
    """How a state looks: a colour and a rhythm. `rhythm_ms` alternates on and off times in
    milliseconds, starting with on, repeated; empty means steady (or dark for OFF). Firmware must show
    exactly these (they are in DOCK_PROTOCOL.md) and the dock screen's legend animates the same table,
    so an officer can match the bay to the screen."""

    colour: LedColour
    rhythm_ms: tuple[int, ...]
    rhythm: str  # the rhythm in words, for documentation and the legend

    def __post_init__(self) -> None:
        if len(self.rhythm_ms) % 2 or any(not 50 <= ms <= 5000 for ms in self.rhythm_ms):
            raise DockProtocolError(f"rhythm must be on/off pairs of 50..5000 ms, got {self.rhythm_ms}")

    @property
    def period_ms(self) -> int:
        return sum(self.rhythm_ms)


_STEADY: tuple[int, ...] = ()
_SLOW = (500, 500)  # 1 Hz
_FAST = (125, 125)  # 4 Hz: urgent, reads as a flicker from across a room
_DOUBLE = (150, 150, 150, 1050)  # two flashes, then a pause
_HEARTBEAT = (250, 1750)  # a short flash every two seconds: calm, nothing to do
_TRIPLE = (150, 150, 150, 150, 150, 1050)  # three flashes, then a pause: no other state has this rhythm

# Every red or amber pattern differs from the others of its colour by rhythm, and every pattern from
# every other by colour or rhythm, so that an officer who does not tell red from green apart still
# tells the states apart (tests/serial/test_dock_protocol.py checks both).
LED_PATTERNS: dict[BayLed, LedPattern] = {
    BayLed.OFF: LedPattern(LedColour.OFF, _STEADY, "dark"),
    BayLed.IDLE: LedPattern(LedColour.WHITE, _STEADY, "steady"),
    BayLed.COPYING: LedPattern(LedColour.BLUE, _SLOW, "slow blink, 1 Hz"),
    BayLed.DONE: LedPattern(LedColour.GREEN, _STEADY, "steady"),
    BayLed.RECEIPT: LedPattern(LedColour.GREEN, _HEARTBEAT, "short flash every 2 s"),
    BayLed.ATTENTION: LedPattern(LedColour.AMBER, _STEADY, "steady"),
    BayLed.FULL: LedPattern(LedColour.AMBER, _FAST, "fast blink, 4 Hz"),
    BayLed.PARTIAL: LedPattern(LedColour.AMBER, _DOUBLE, "double flash"),
    # A rhythm of its own, so that it reads as "this bay is faulty" whatever colours the officer sees.
    BayLed.BOUNCING: LedPattern(LedColour.AMBER, _TRIPLE, "triple flash"),
    BayLed.ERROR: LedPattern(LedColour.RED, _STEADY, "steady"),
    BayLed.DENIED: LedPattern(LedColour.RED, _FAST, "fast blink, 4 Hz"),
    BayLed.PASSWORD: LedPattern(LedColour.RED, _DOUBLE, "double flash"),
    BayLed.PULLED: LedPattern(LedColour.RED, _SLOW, "slow blink, 1 Hz"),
}


class Command(StrEnum):
    """Command tokens (second field of every frame)."""

    PING = "PING"
    VER = "VER"
    STA = "STA"
    LED = "LED"
    ACK = "ACK"
    NAK = "NAK"
    INS = "INS"
    REM = "REM"
    CHG = "CHG"
    BOOT = "BOOT"
    PWR = "PWR"  # protocol 4


HOST_COMMANDS = frozenset({Command.PING, Command.VER, Command.STA, Command.LED, Command.PWR})


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): the frame checksum."""
    return binascii.crc_hqx(data, 0xFFFF)


def next_seq(seq: int) -> int:
    """The number after `seq` in both sequence spaces: 1..65535, wrapping to 1 (0 means 'none yet')."""
    return 1 if seq >= MAX_SEQ else seq + 1


def _frame(seq: int, command: Command, *fields: str) -> bytes:
    payload = ",".join((str(seq), command.value, *fields)).encode("ascii")
    line = b"$" + payload + b"*" + b"%04X" % crc16(payload) + TERMINATOR
    if len(line) > MAX_LINE_BYTES:  # only reachable through a bug in a message class
        raise DockProtocolError(f"frame would be {len(line)} bytes, limit {MAX_LINE_BYTES}")
    return line


# -- construction checks (raise DockProtocolError so callers see one hierarchy) -------------------------


def _check_seq(seq: int, name: str = "seq") -> None:
    if not 0 <= seq <= MAX_SEQ:
        raise DockProtocolError(f"{name} must be 0..{MAX_SEQ}, got {seq}")


def _check_bay(bay: int) -> None:
    if not 1 <= bay <= MAX_BAYS:
        raise DockProtocolError(f"bay must be 1..{MAX_BAYS}, got {bay}")


def _check_bay_count(bays: int) -> None:
    if not 1 <= bays <= MAX_BAYS:
        raise DockProtocolError(f"bay count must be 1..{MAX_BAYS}, got {bays}")


def _check_charge(charge_percent: int | None, *, optional: bool) -> None:
    if charge_percent is None:
        if not optional:
            raise DockProtocolError("charge percent is required here, got none")
        return
    if not 0 <= charge_percent <= 100:
        raise DockProtocolError(f"charge percent must be 0..100, got {charge_percent}")


def _check_text(value: str, name: str) -> None:
    if not _TEXT_RE.fullmatch(value):
        raise DockProtocolError(
            f"{name} must be 1..{MAX_TEXT_CHARS} of [A-Za-z0-9._:/+-], got {value!r}"
        )


def _charge_text(charge_percent: int | None) -> str:
    return "" if charge_percent is None else str(charge_percent)


# -- host -> board --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PingCommand:
    COMMAND: ClassVar[Command] = Command.PING
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.PING)


@dataclass(frozen=True)
class IdentityQuery:
    COMMAND: ClassVar[Command] = Command.VER
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.VER)


@dataclass(frozen=True)
class StatusQuery:
    COMMAND: ClassVar[Command] = Command.STA
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.STA)


@dataclass(frozen=True)
class SetLedCommand:
    COMMAND: ClassVar[Command] = Command.LED
    seq: int
    bay: int
    led: BayLed

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_bay(self.bay)
        if not isinstance(self.led, BayLed):
            raise DockProtocolError(f"led must be a BayLed, got {self.led!r}")

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.LED, str(self.bay), self.led.value)


def _check_power_off(off_ms: int) -> None:
    if not MIN_POWER_OFF_MS <= off_ms <= MAX_POWER_OFF_MS:
        raise DockProtocolError(
            f"power-off time must be {MIN_POWER_OFF_MS}..{MAX_POWER_OFF_MS} ms, got {off_ms}")


@dataclass(frozen=True)
class PowerCycleCommand:
    """Protocol 4: cut the bay's power (charger and the USB connector's VBUS) for `off_ms`, then restore it.
    To the recorder it is an unplug and a plug; the presence switch does not move."""

    COMMAND: ClassVar[Command] = Command.PWR
    seq: int
    bay: int
    off_ms: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_bay(self.bay)
        _check_power_off(self.off_ms)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.PWR, str(self.bay), str(self.off_ms))


# -- board -> host replies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PingReply:
    COMMAND: ClassVar[Command] = Command.ACK
    seq: int
    event_seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_seq(self.event_seq, "event_seq")

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.ACK, Command.PING.value, str(self.event_seq))


@dataclass(frozen=True)
class IdentityReply:
    COMMAND: ClassVar[Command] = Command.ACK
    seq: int
    protocol: int
    bays: int
    board_serial: str
    firmware: str

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        if not 1 <= self.protocol <= 999:
            raise DockProtocolError(f"protocol version must be 1..999, got {self.protocol}")
        _check_bay_count(self.bays)
        _check_text(self.board_serial, "board serial")
        _check_text(self.firmware, "firmware")

    def to_bytes(self) -> bytes:
        return _frame(
            self.seq, Command.ACK, Command.VER.value, str(self.protocol), str(self.bays),
            self.board_serial, self.firmware,
        )


@dataclass(frozen=True)
class BayState:
    """One bay in a status reply; its number is its position (1-based) in `StatusReply.bays`."""

    present: bool
    led: BayLed
    insertions: int  # recorders inserted since board power-up, modulo 16
    charge_percent: int | None

    def __post_init__(self) -> None:
        if not 0 <= self.insertions <= 15:
            raise DockProtocolError(f"insertion counter must be 0..15, got {self.insertions}")
        _check_charge(self.charge_percent, optional=True)
        if not self.present and self.charge_percent is not None:
            raise DockProtocolError(f"an empty bay has no charge, got {self.charge_percent}")

    def to_token(self) -> str:
        return (
            f"{'1' if self.present else '0'}{LED_LETTERS[self.led]}{self.insertions:X}"
            f"{_charge_text(self.charge_percent)}"
        )

    @classmethod
    def from_token(cls, token: str) -> BayState:
        match = _STATUS_TOKEN_RE.fullmatch(token)
        if match is None:
            raise DockProtocolError(
                f"bay status token must be <0|1><LED letter><hex digit>[charge], got {token!r}"
            )
        present_text, letter, insertions_text, charge_text = match.groups()
        led = _LED_BY_LETTER.get(letter)
        if led is None:
            raise DockProtocolError(
                f"LED letter must be one of {''.join(_LED_BY_LETTER)}, got {letter!r} in {token!r}"
            )
        charge = None
        if charge_text:
            if len(charge_text) > 1 and charge_text.startswith("0"):
                raise DockProtocolError(f"charge must not have leading zeros, got {charge_text!r}")
            charge = int(charge_text)
        return cls(present_text == "1", led, int(insertions_text, 16), charge)


@dataclass(frozen=True)
class StatusReply:
    COMMAND: ClassVar[Command] = Command.ACK
    seq: int
    event_seq: int
    bays: tuple[BayState, ...]

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_seq(self.event_seq, "event_seq")
        _check_bay_count(len(self.bays))

    def to_bytes(self) -> bytes:
        return _frame(
            self.seq, Command.ACK, Command.STA.value, str(self.event_seq), str(len(self.bays)),
            *(bay.to_token() for bay in self.bays),
        )


@dataclass(frozen=True)
class LedReply:
    COMMAND: ClassVar[Command] = Command.ACK
    seq: int
    bay: int
    led: BayLed

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_bay(self.bay)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.ACK, Command.LED.value, str(self.bay), self.led.value)


@dataclass(frozen=True)
class PowerCycleReply:
    """The bay's power is off now; it comes back `off_ms` later (the ACK does not wait for that)."""

    COMMAND: ClassVar[Command] = Command.ACK
    seq: int
    bay: int
    off_ms: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_bay(self.bay)
        _check_power_off(self.off_ms)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.ACK, Command.PWR.value, str(self.bay), str(self.off_ms))


@dataclass(frozen=True)
class NakReply:
    COMMAND: ClassVar[Command] = Command.NAK
    seq: int
    command: str  # the refused command token as received, or "?"
    reason: NakReason

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        if self.command != "?" and not _TOKEN_RE.fullmatch(self.command):
            raise DockProtocolError(f"NAK command must be A-Z 1..8 or '?', got {self.command!r}")

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.NAK, self.command, self.reason.value)


# -- board -> host events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InsertedEvent:
    COMMAND: ClassVar[Command] = Command.INS
    seq: int
    bay: int
    charge_percent: int | None

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_bay(self.bay)
        _check_charge(self.charge_percent, optional=True)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.INS, str(self.bay), _charge_text(self.charge_percent))


@dataclass(frozen=True)
class RemovedEvent:
    COMMAND: ClassVar[Command] = Command.REM
    seq: int
    bay: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_bay(self.bay)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.REM, str(self.bay))


@dataclass(frozen=True)
class ChargeEvent:
    COMMAND: ClassVar[Command] = Command.CHG
    seq: int
    bay: int
    charge_percent: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_bay(self.bay)
        _check_charge(self.charge_percent, optional=False)

    def to_bytes(self) -> bytes:
        return _frame(self.seq, Command.CHG, str(self.bay), str(self.charge_percent))


@dataclass(frozen=True)
class BootEvent:
    COMMAND: ClassVar[Command] = Command.BOOT
    seq: ClassVar[int] = 0  # BOOT always carries event number 0: numbering restarts after it
    protocol: int
    bays: int
    board_serial: str
    firmware: str

    def __post_init__(self) -> None:
        if not 1 <= self.protocol <= 999:
            raise DockProtocolError(f"protocol version must be 1..999, got {self.protocol}")
        _check_bay_count(self.bays)
        _check_text(self.board_serial, "board serial")
        _check_text(self.firmware, "firmware")

    def to_bytes(self) -> bytes:
        return _frame(
            0, Command.BOOT, str(self.protocol), str(self.bays), self.board_serial, self.firmware
        )


HostCommand = PingCommand | IdentityQuery | StatusQuery | SetLedCommand | PowerCycleCommand
BoardReply = PingReply | IdentityReply | StatusReply | LedReply | PowerCycleReply | NakReply
BoardEvent = InsertedEvent | RemovedEvent | ChargeEvent | BootEvent
Message = HostCommand | BoardReply | BoardEvent


# -- decoding -------------------------------------------------------------------------------------------


class _Fields:
    """Argument fields of one CRC-verified frame, with errors that carry what a NAK needs."""

    def __init__(self, seq: int, command: str, args: list[str]) -> None:
        self.seq = seq
        self.command = command
        self.args = args

    def error(self, message: str, reason: NakReason) -> DockProtocolError:
        return DockProtocolError(
            f"{self.command} frame {self.seq}: {message}", seq=self.seq, command=self.command, reason=reason
        )

    def expect_count(self, low: int, high: int | None = None) -> None:
        high = low if high is None else high
        count = len(self.args)
        if not low <= count <= high:
            wanted = str(low) if low == high else f"{low}..{high}"
            raise self.error(f"expected {wanted} argument(s), got {count}: {self.args!r}", NakReason.SYNTAX)

    def number(self, index: int, name: str, low: int, high: int, reason: NakReason) -> int:
        text = self.args[index]
        if not _DECIMAL_RE.fullmatch(text) or (len(text) > 1 and text.startswith("0")):
            raise self.error(f"{name} must be a decimal number, got {text!r}", NakReason.SYNTAX)
        value = int(text)
        if not low <= value <= high:
            raise self.error(f"{name} must be {low}..{high}, got {value}", reason)
        return value

    def bay(self, index: int) -> int:
        return self.number(index, "bay", 1, MAX_BAYS, NakReason.RANGE)

    def charge(self, index: int, *, optional: bool) -> int | None:
        if optional and self.args[index] == "":
            return None
        return self.number(index, "charge percent", 0, 100, NakReason.VALUE)

    def text(self, index: int, name: str) -> str:
        value = self.args[index]
        if not _TEXT_RE.fullmatch(value):
            raise self.error(
                f"{name} must be 1..{MAX_TEXT_CHARS} of [A-Za-z0-9._:/+-], got {value!r}", NakReason.VALUE
            )
        return value

    def led(self, index: int) -> BayLed:
        text = self.args[index]
        try:
            return BayLed(text)
        except ValueError:
            known = ", ".join(led.value for led in BayLed)
            raise self.error(f"LED state must be one of {known}, got {text!r}", NakReason.VALUE) from None


def _strip_terminator(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def _split_frame(line: bytes) -> tuple[int, str, list[str]]:
    body = _strip_terminator(line)
    if len(body) + len(TERMINATOR) > MAX_LINE_BYTES:
        raise DockProtocolError(
            f"line is {len(body) + len(TERMINATOR)} bytes with terminator, limit {MAX_LINE_BYTES}"
        )
    if not body:
        raise DockProtocolError("empty line, expected a '$' frame")
    for offset, byte in enumerate(body):
        if not 0x20 <= byte <= 0x7E:
            kind = "non-ASCII" if byte > 0x7F else "control"
            raise DockProtocolError(f"{kind} byte 0x{byte:02X} at offset {offset}, expected printable ASCII")
    if body[:1] != FRAME_START:
        raise DockProtocolError(f"expected '$' at start of frame, got {body[:1].decode()!r}")
    star = body.rfind(b"*")
    if star < 0:
        raise DockProtocolError("no '*' before the checksum")
    payload, crc_text = body[1:star], body[star + 1 :]
    if not _HEX4_RE.fullmatch(crc_text):
        raise DockProtocolError(f"checksum must be 4 hex digits after '*', got {crc_text.decode()!r}")
    for stray in (b"$", b"*"):
        if stray in payload:
            offset = payload.index(stray) + 1
            raise DockProtocolError(f"stray {stray.decode()!r} inside the frame at offset {offset}")
    expected = crc16(payload)
    received = int(crc_text, 16)
    if expected != received:
        raise DockProtocolError(f"bad checksum: expected {expected:04X}, got {received:04X}")
    fields = payload.decode("ascii").split(",")
    seq_text = fields[0]
    if not _DECIMAL_RE.fullmatch(seq_text) or int(seq_text) > MAX_SEQ:
        raise DockProtocolError(f"sequence number must be decimal 0..{MAX_SEQ}, got {seq_text!r}")
    seq = int(seq_text)
    if len(fields) < 2 or fields[1] == "":
        raise DockProtocolError(
            f"frame {seq}: missing command", seq=seq, command="?", reason=NakReason.SYNTAX
        )
    return seq, fields[1], fields[2:]


def decode_line(line: bytes) -> Message:
    """Decode one frame (with or without its `\\r\\n`) into a message, or raise `DockProtocolError`."""
    seq, command_text, args = _split_frame(line)
    try:
        command = Command(command_text)
    except ValueError:
        echo = command_text if _TOKEN_RE.fullmatch(command_text) else "?"
        raise DockProtocolError(
            f"frame {seq}: unknown command {command_text!r}", seq=seq, command=echo, reason=NakReason.UNKNOWN
        ) from None
    fields = _Fields(seq, command.value, args)
    decoder = _DECODERS[command]
    return decoder(fields)


def _decode_ping(f: _Fields) -> Message:
    f.expect_count(0)
    return PingCommand(f.seq)


def _decode_ver(f: _Fields) -> Message:
    f.expect_count(0)
    return IdentityQuery(f.seq)


def _decode_sta(f: _Fields) -> Message:
    f.expect_count(0)
    return StatusQuery(f.seq)


def _decode_led(f: _Fields) -> Message:
    f.expect_count(2)
    bay, led = f.bay(0), f.led(1)
    return SetLedCommand(f.seq, bay, led)


def _decode_pwr(f: _Fields) -> Message:
    f.expect_count(2)
    bay = f.bay(0)
    return PowerCycleCommand(f.seq, bay, f.number(1, "power-off ms", MIN_POWER_OFF_MS, MAX_POWER_OFF_MS,
                                                  NakReason.VALUE))


def _decode_ack(f: _Fields) -> Message:
    if not f.args:
        raise f.error("ACK without the acknowledged command", NakReason.SYNTAX)
    acked, rest = f.args[0], _Fields(f.seq, Command.ACK.value, f.args[1:])
    if acked == Command.PING:
        rest.expect_count(1)
        return PingReply(f.seq, rest.number(0, "event_seq", 0, MAX_SEQ, NakReason.VALUE))
    if acked == Command.VER:
        rest.expect_count(4)
        protocol = rest.number(0, "protocol version", 1, 999, NakReason.VALUE)
        bays = rest.number(1, "bay count", 1, MAX_BAYS, NakReason.RANGE)
        serial, firmware = rest.text(2, "board serial"), rest.text(3, "firmware")
        return IdentityReply(f.seq, protocol, bays, serial, firmware)
    if acked == Command.STA:
        if len(rest.args) < 2:
            rest.expect_count(2)
        event_seq = rest.number(0, "event_seq", 0, MAX_SEQ, NakReason.VALUE)
        bays = rest.number(1, "bay count", 1, MAX_BAYS, NakReason.RANGE)
        rest.expect_count(2 + bays)
        states = []
        for index, token in enumerate(rest.args[2:], start=1):
            try:
                states.append(BayState.from_token(token))
            except DockProtocolError as exc:
                raise rest.error(f"bay {index}: {exc}", NakReason.VALUE) from None
        return StatusReply(f.seq, event_seq, tuple(states))
    if acked == Command.LED:
        rest.expect_count(2)
        bay, led = rest.bay(0), rest.led(1)
        return LedReply(f.seq, bay, led)
    if acked == Command.PWR:
        rest.expect_count(2)
        bay = rest.bay(0)
        return PowerCycleReply(f.seq, bay, rest.number(1, "power-off ms", MIN_POWER_OFF_MS, MAX_POWER_OFF_MS,
                                                       NakReason.VALUE))
    raise f.error(f"ACK of {acked!r}, expected one of PING, VER, STA, LED, PWR", NakReason.SYNTAX)


def _decode_nak(f: _Fields) -> Message:
    f.expect_count(2)
    refused, reason_text = f.args
    if refused != "?" and not _TOKEN_RE.fullmatch(refused):
        raise f.error(f"NAK command must be A-Z 1..8 or '?', got {refused!r}", NakReason.SYNTAX)
    try:
        reason = NakReason(reason_text)
    except ValueError:
        known = ", ".join(r.value for r in NakReason)
        raise f.error(f"NAK reason must be one of {known}, got {reason_text!r}", NakReason.VALUE) from None
    return NakReply(f.seq, refused, reason)


def _decode_ins(f: _Fields) -> Message:
    f.expect_count(2)
    bay, charge = f.bay(0), f.charge(1, optional=True)
    return InsertedEvent(f.seq, bay, charge)


def _decode_rem(f: _Fields) -> Message:
    f.expect_count(1)
    return RemovedEvent(f.seq, f.bay(0))


def _decode_chg(f: _Fields) -> Message:
    f.expect_count(2)
    bay, charge = f.bay(0), f.charge(1, optional=False)
    assert charge is not None
    return ChargeEvent(f.seq, bay, charge)


def _decode_boot(f: _Fields) -> Message:
    f.expect_count(4)
    if f.seq != 0:
        raise f.error(f"BOOT must carry event number 0, got {f.seq}", NakReason.VALUE)
    protocol = f.number(0, "protocol version", 1, 999, NakReason.VALUE)
    bays = f.number(1, "bay count", 1, MAX_BAYS, NakReason.RANGE)
    serial, firmware = f.text(2, "board serial"), f.text(3, "firmware")
    return BootEvent(protocol, bays, serial, firmware)


_DECODERS: dict[Command, Callable[[_Fields], Message]] = {
    Command.PING: _decode_ping,
    Command.VER: _decode_ver,
    Command.STA: _decode_sta,
    Command.LED: _decode_led,
    Command.ACK: _decode_ack,
    Command.NAK: _decode_nak,
    Command.INS: _decode_ins,
    Command.REM: _decode_rem,
    Command.CHG: _decode_chg,
    Command.BOOT: _decode_boot,
    Command.PWR: _decode_pwr,
}


# -- framing --------------------------------------------------------------------------------------------


class LineFramer:
    """Cuts a byte stream into candidate frames: from a `$` up to `\\n`, terminator removed.

    Bytes outside a frame are junk. A `$` inside an unfinished frame means the earlier one lost its end:
    the partial frame is dropped (`truncated_lines`) and the new one started. A frame longer than
    `max_line_bytes` is dropped (`overlong_lines`) and everything up to the next `$` skipped. Memory is
    bounded by `max_line_bytes` whatever arrives. Counters only grow; `discarded_bytes` counts every byte
    that did not end up in a yielded line (terminators excluded).
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self.lines = 0
        self.discarded_bytes = 0
        self.truncated_lines = 0
        self.overlong_lines = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Take any chunk of received bytes; return the complete lines it finished, in order."""
        return list(self._feed(chunk))

    def _feed(self, chunk: bytes) -> Iterator[bytes]:
        view = memoryview(chunk)
        position = 0
        # Limit of bytes a frame may hold before its '\n' ('\r' included).
        body_limit = self.max_line_bytes - 1
        while position < len(view):
            if not self._in_frame:
                start = chunk.find(FRAME_START, position)
                if start < 0:
                    self._discard_outside(view[position:])
                    return
                self._discard_outside(view[position:start])
                self._in_frame = True
                self._buffer = bytearray(FRAME_START)
                position = start + 1
                continue
            newline = chunk.find(b"\n", position)
            restart = chunk.find(FRAME_START, position)
            if restart >= 0 and (newline < 0 or restart < newline):
                self._take(view[position:restart], body_limit)
                if len(self._buffer) > body_limit:
                    self.overlong_lines += 1
                else:
                    self.truncated_lines += 1
                self.discarded_bytes += len(self._buffer)
                self._reset()
                position = restart
                continue
            end = len(view) if newline < 0 else newline
            self._take(view[position:end], body_limit)
            if newline < 0:
                return
            position = newline + 1
            if len(self._buffer) > body_limit:
                self.overlong_lines += 1
                self.discarded_bytes += len(self._buffer)
            else:
                self.lines += 1
                yield bytes(self._buffer[:-1] if self._buffer.endswith(b"\r") else self._buffer)
            self._reset()

    def _take(self, data: memoryview, body_limit: int) -> None:
        """Append frame bytes, but keep at most one byte past the limit: enough to know it is over-long."""
        room = body_limit + 1 - len(self._buffer)
        if room > 0:
            self._buffer += data[:room]
        self.discarded_bytes += max(0, len(data) - max(room, 0))

    def _discard_outside(self, data: memoryview) -> None:
        # Line terminators between frames are not junk: a lone "\r\n" is what a frame ends with.
        self.discarded_bytes += len(bytes(data).replace(b"\r", b"").replace(b"\n", b""))

    def _reset(self) -> None:
        self._buffer = bytearray()
        self._in_frame = False
