"""Pelco-D, the PTZ camera control protocol of RS-485 dome and PTZ cameras: a pure codec, no I/O.

A frame is seven bytes::

    0xFF  address  command1  command2  data1  data2  checksum

`address` is the camera's (1..255; 0 is not a camera), `checksum` the sum of bytes 2 to 6 (address to
data2) modulo 256. In a standard command `command2` holds one bit per motion (pan right 0x02, pan left
0x04, tilt up 0x08, tilt down 0x10, zoom tele 0x20, zoom wide 0x40), `data1` the pan speed and `data2`
the tilt speed (0x00..0x3F; 0xFF is "turbo" pan on cameras that have it); all motion bits clear is
stop. Extended commands have bit 0 of `command2` set: set preset (0x03), clear preset (0x05) and go to
preset (0x07), each with the preset number in `data2`. The values are those of the published command
tables (cited in tests/serial/test_pelco_d.py, which checks this codec against them).

The bus carries no acknowledgement for these commands: a camera that gets a frame with a wrong
checksum, or one addressed to another camera, ignores it. `PelcoDFramer` finds frames in a byte stream
that may hold noise; `decode_frame` turns one frame into a `PtzCommand` saying what it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

SYNC = 0xFF
FRAME_BYTES = 7
MAX_SPEED = 0x3F
TURBO_PAN_SPEED = 0xFF
MAX_ADDRESS = 0xFF
MAX_PRESET = 0xFF

# command2 bits of a standard command
PAN_RIGHT = 0x02
PAN_LEFT = 0x04
TILT_UP = 0x08
TILT_DOWN = 0x10
ZOOM_TELE = 0x20
ZOOM_WIDE = 0x40
# command2 of the extended commands used here (command1 0x00, data1 0x00, data2 the preset)
SET_PRESET = 0x03
CLEAR_PRESET = 0x05
GO_TO_PRESET = 0x07
EXTENDED_BIT = 0x01


class PelcoDError(ValueError):
    """A frame or command that Pelco-D does not allow; the message says what was expected and what came."""


class PtzAction(StrEnum):
    STOP = "stop"
    MOVE = "move"  # any combination of pan, tilt and zoom bits
    SET_PRESET = "set_preset"
    CLEAR_PRESET = "clear_preset"
    GO_TO_PRESET = "go_to_preset"
    OTHER = "other"  # a well-formed frame this codec does not interpret (focus, iris, auxiliaries...)


def checksum(address: int, command1: int, command2: int, data1: int, data2: int) -> int:
    """The Pelco-D checksum: bytes 2..6 summed, modulo 256."""
    return (address + command1 + command2 + data1 + data2) % 256


@dataclass(frozen=True)
class PelcoDFrame:
    address: int
    command1: int
    command2: int
    data1: int
    data2: int

    def __post_init__(self) -> None:
        if not 1 <= self.address <= MAX_ADDRESS:
            raise PelcoDError(f"camera address must be 1..{MAX_ADDRESS}, got {self.address}")
        for name in ("command1", "command2", "data1", "data2"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFF:
                raise PelcoDError(f"{name} must be one byte (0..255), got {value}")

    @property
    def checksum(self) -> int:
        return checksum(self.address, self.command1, self.command2, self.data1, self.data2)

    def to_bytes(self) -> bytes:
        return bytes((SYNC, self.address, self.command1, self.command2, self.data1, self.data2,
                      self.checksum))

    @classmethod
    def from_bytes(cls, data: bytes) -> PelcoDFrame:
        """One whole frame; PelcoDError for a wrong length, sync byte, address 0 or checksum."""
        if len(data) != FRAME_BYTES:
            raise PelcoDError(f"a Pelco-D frame is {FRAME_BYTES} bytes, got {len(data)}")
        if data[0] != SYNC:
            raise PelcoDError(f"a Pelco-D frame starts with the sync byte 0xFF, got 0x{data[0]:02X}")
        expected = checksum(*data[1:6])
        if data[6] != expected:
            raise PelcoDError(f"checksum 0x{data[6]:02X} does not match the frame's 0x{expected:02X}")
        return cls(data[1], data[2], data[3], data[4], data[5])


def _speed(value: int, name: str, *, turbo: bool = False) -> int:
    if 0 <= value <= MAX_SPEED or (turbo and value == TURBO_PAN_SPEED):
        return value
    allowed = f"0..{MAX_SPEED}" + (f" or {TURBO_PAN_SPEED} (turbo)" if turbo else "")
    raise PelcoDError(f"{name} must be {allowed}, got {value}")


def _preset(value: int) -> int:
    if not 1 <= value <= MAX_PRESET:
        raise PelcoDError(f"preset must be 1..{MAX_PRESET}, got {value}")
    return value


def stop(address: int) -> PelcoDFrame:
    return PelcoDFrame(address, 0x00, 0x00, 0x00, 0x00)


def move(
    address: int, *, pan: int = 0, tilt: int = 0, zoom: int = 0, pan_speed: int = 0x20, tilt_speed: int = 0x20
) -> PelcoDFrame:
    """Start moving: `pan` -1 left / +1 right, `tilt` +1 up / -1 down, `zoom` +1 tele (in) / -1 wide
    (out), 0 for none. The camera goes on until the next command (`stop`)."""
    for name, value in (("pan", pan), ("tilt", tilt), ("zoom", zoom)):
        if value not in (-1, 0, 1):
            raise PelcoDError(f"{name} must be -1, 0 or 1, got {value}")
    bits = (
        (PAN_RIGHT if pan > 0 else PAN_LEFT if pan < 0 else 0)
        | (TILT_UP if tilt > 0 else TILT_DOWN if tilt < 0 else 0)
        | (ZOOM_TELE if zoom > 0 else ZOOM_WIDE if zoom < 0 else 0)
    )
    if not bits:
        raise PelcoDError("a move needs a direction (pan, tilt or zoom): use stop() to stop")
    return PelcoDFrame(
        address, 0x00, bits,
        _speed(pan_speed, "pan speed", turbo=True) if pan else 0x00,
        _speed(tilt_speed, "tilt speed") if tilt else 0x00,
    )


def pan_left(address: int, speed: int = 0x20) -> PelcoDFrame:
    return move(address, pan=-1, pan_speed=speed)


def pan_right(address: int, speed: int = 0x20) -> PelcoDFrame:
    return move(address, pan=1, pan_speed=speed)


def tilt_up(address: int, speed: int = 0x20) -> PelcoDFrame:
    return move(address, tilt=1, tilt_speed=speed)


def tilt_down(address: int, speed: int = 0x20) -> PelcoDFrame:
    return move(address, tilt=-1, tilt_speed=speed)


def zoom_in(address: int) -> PelcoDFrame:
    return move(address, zoom=1)


def zoom_out(address: int) -> PelcoDFrame:
    return move(address, zoom=-1)


def set_preset(address: int, preset: int) -> PelcoDFrame:
    return PelcoDFrame(address, 0x00, SET_PRESET, 0x00, _preset(preset))


def clear_preset(address: int, preset: int) -> PelcoDFrame:
    return PelcoDFrame(address, 0x00, CLEAR_PRESET, 0x00, _preset(preset))


def go_to_preset(address: int, preset: int) -> PelcoDFrame:
    return PelcoDFrame(address, 0x00, GO_TO_PRESET, 0x00, _preset(preset))


@dataclass(frozen=True)
class PtzCommand:
    """What a frame asks a camera to do. `pan`, `tilt`, `zoom` as in `move`; `preset` for presets."""

    address: int
    action: PtzAction
    pan: int = 0
    tilt: int = 0
    zoom: int = 0
    pan_speed: int = 0
    tilt_speed: int = 0
    preset: int | None = None


_PRESET_ACTIONS = {
    SET_PRESET: PtzAction.SET_PRESET,
    CLEAR_PRESET: PtzAction.CLEAR_PRESET,
    GO_TO_PRESET: PtzAction.GO_TO_PRESET,
}


def decode_frame(frame: PelcoDFrame) -> PtzCommand:
    """The command a valid frame carries. Contradicting bits (left and right together) are `OTHER`."""
    address, command1, command2 = frame.address, frame.command1, frame.command2
    if command2 & EXTENDED_BIT:
        action = _PRESET_ACTIONS.get(command2)
        if action is None or command1 != 0 or frame.data1 != 0 or frame.data2 == 0:
            return PtzCommand(address, PtzAction.OTHER)
        return PtzCommand(address, action, preset=frame.data2)
    if command1 != 0 or command2 & 0x80:  # focus, iris, camera on/off, auto-scan: not interpreted here
        return PtzCommand(address, PtzAction.OTHER)
    if command2 == 0:
        return PtzCommand(address, PtzAction.STOP)
    pan = _direction(command2, PAN_RIGHT, PAN_LEFT)
    tilt = _direction(command2, TILT_UP, TILT_DOWN)
    zoom = _direction(command2, ZOOM_TELE, ZOOM_WIDE)
    if pan is None or tilt is None or zoom is None:
        return PtzCommand(address, PtzAction.OTHER)
    return PtzCommand(address, PtzAction.MOVE, pan, tilt, zoom,
                      frame.data1 if pan else 0, frame.data2 if tilt else 0)


def _direction(bits: int, plus: int, minus: int) -> int | None:
    if bits & plus and bits & minus:
        return None
    return 1 if bits & plus else -1 if bits & minus else 0


class PelcoDFramer:
    """Cuts a byte stream into checksum-valid frames. Bytes before a sync byte are noise; a candidate
    whose checksum fails is dropped one byte at a time (0xFF also occurs inside frames, as turbo speed or
    a checksum, so the next sync byte may be inside the rejected candidate). Memory: at most 6 bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.frames = 0
        self.rejected_candidates = 0  # a sync byte not followed by a valid frame (checksum, address 0)
        self.noise_bytes = 0

    def feed(self, chunk: bytes) -> list[PelcoDFrame]:
        self._buffer += chunk
        frames: list[PelcoDFrame] = []
        while True:
            start = self._buffer.find(SYNC)
            if start < 0:
                self.noise_bytes += len(self._buffer)
                self._buffer.clear()
                return frames
            if start:
                self.noise_bytes += start
                del self._buffer[:start]
            if len(self._buffer) < FRAME_BYTES:
                return frames
            candidate = bytes(self._buffer[:FRAME_BYTES])
            try:
                frame = PelcoDFrame.from_bytes(candidate)
            except PelcoDError:
                self.rejected_candidates += 1
                self.noise_bytes += 1
                del self._buffer[:1]
                continue
            self.frames += 1
            frames.append(frame)
            del self._buffer[:FRAME_BYTES]
