"""Card readers on a serial line: a pure codec for the two ASCII framings cheap readers send.

No I/O. The documentation of the framings, with their worked examples, is `CARD_READER_PROTOCOL.md` next
to this file. In short:

* **STX frame** (RDM6300 / RDM630-style 125 kHz EM4100 modules and the USB-serial readers built on them):
  ``0x02`` + 10 ASCII hex digits (version byte + 32-bit tag id) + 2 ASCII hex digits of checksum (XOR of
  the 5 data bytes) + ``0x03``; 14 bytes, no line end.
* **hex line** (many 13.56 MHz ISO 14443 USB-serial readers in "serial output" mode): the UID as ASCII hex
  digits (8, 10, 14 or 20) ending in CR LF (or a bare CR or LF); no checksum, so a line is believed only
  when it is well formed.

Every byte may be line noise. The decoder takes any chunking, resynchronises on STX and on line ends,
bounds its memory (a frame longer than the longest legal one is dropped), and counts what it dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ETX",
    "MAX_LINE_BYTES",
    "STX",
    "UID_HEX_LENGTHS",
    "CardFrameDecoder",
    "CardFraming",
    "CardRead",
    "CardReaderProtocolError",
    "encode_hex_line",
    "encode_stx_frame",
    "xor_checksum",
]

STX = 0x02
ETX = 0x03
CR = 0x0D
LF = 0x0A
STX_DATA_HEX = 10  # version byte + 4-byte id
STX_FRAME_BYTES = 14  # STX + 10 + 2 + ETX
UID_HEX_LENGTHS = (8, 10, 14, 20)  # 4-, 5- (EM4100), 7- and 10-byte UIDs
MAX_LINE_BYTES = max(UID_HEX_LENGTHS)
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")


class CardReaderProtocolError(ValueError):
    """Bytes for a reader frame that break the framing (used by the encoders; the decoder counts)."""


class CardFraming(StrEnum):
    STX_FRAME = "stx"
    HEX_LINE = "hex-line"


@dataclass(frozen=True)
class CardRead:
    """One card the reader saw: its UID as upper-case hex digits, and the framing it came in."""

    uid: str
    framing: CardFraming


def xor_checksum(data: bytes) -> int:
    result = 0
    for byte in data:
        result ^= byte
    return result


def _check_uid(uid: str, lengths: tuple[int, ...]) -> bytes:
    raw = uid.encode("ascii", errors="replace")
    if len(raw) not in lengths or not set(raw) <= _HEX_DIGITS:
        expected = " or ".join(str(n) for n in lengths)
        raise CardReaderProtocolError(f"card UID: expected {expected} hex digits, got {uid[:40]!r}")
    return raw.upper()


def encode_stx_frame(uid: str) -> bytes:
    """The 14-byte STX frame of a 10-hex-digit EM4100 UID."""
    raw = _check_uid(uid, (STX_DATA_HEX,))
    checksum = xor_checksum(bytes.fromhex(raw.decode("ascii")))
    return bytes((STX,)) + raw + b"%02X" % checksum + bytes((ETX,))


def encode_hex_line(uid: str) -> bytes:
    return _check_uid(uid, UID_HEX_LENGTHS) + b"\r\n"


class CardFrameDecoder:
    """Cuts a reader's byte stream into card reads.

    A frame starts at STX (an STX frame) or at a hex digit (a hex line) and ends at ETX or a line end. A
    byte that cannot continue the frame (a foreign byte, a digit too many, a line end inside an STX frame)
    drops it (`bad_frames`), and so does a wrong checksum or length; after a foreign byte everything up to
    the next frame boundary (STX, ETX, CR, LF) is skipped (`junk_bytes`), so that the tail of a mangled
    frame or of line noise is never taken for a UID. Memory: at most 20 bytes. Counters only grow.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._in_stx = False
        self._skipping = False
        self.reads = 0
        self.bad_frames = 0  # frames that started and were wrong (checksum, length, a foreign byte)
        self.junk_bytes = 0  # bytes skipped outside any frame

    def feed(self, chunk: bytes) -> list[CardRead]:
        out: list[CardRead] = []
        for byte in chunk:
            read = self._byte(byte)
            if read is not None:
                out.append(read)
        return out

    def _abandon(self) -> None:
        if self._buffer or self._in_stx:
            self.bad_frames += 1
        self._buffer.clear()
        self._in_stx = False

    def _byte(self, byte: int) -> CardRead | None:
        if byte == STX:
            self._abandon()  # an earlier frame lost its end
            self._skipping = False
            self._in_stx = True
            return None
        if byte in (CR, LF, ETX):
            if self._skipping:
                self._skipping = False
                return None
            if self._in_stx:
                if byte == ETX:
                    return self._end_stx()
                self._abandon()
                return None
            if byte == ETX:
                if self._buffer:
                    self._abandon()
                else:
                    self.junk_bytes += 1
                return None
            return self._end_line() if self._buffer else None  # CR LF: the LF ends nothing
        if self._skipping:
            self.junk_bytes += 1
            return None
        limit = STX_DATA_HEX + 2 if self._in_stx else MAX_LINE_BYTES
        if byte in _HEX_DIGITS and len(self._buffer) < limit:
            self._buffer.append(byte)
            return None
        if self._buffer or self._in_stx:
            self._abandon()
        self.junk_bytes += 1
        self._skipping = True
        return None

    def _end_stx(self) -> CardRead | None:
        text = self._buffer.decode("ascii").upper()
        self._buffer.clear()
        self._in_stx = False
        if len(text) != STX_DATA_HEX + 2:
            self.bad_frames += 1
            return None
        data = bytes.fromhex(text[:STX_DATA_HEX])
        if xor_checksum(data) != int(text[STX_DATA_HEX:], 16):
            self.bad_frames += 1
            return None
        self.reads += 1
        return CardRead(text[:STX_DATA_HEX], CardFraming.STX_FRAME)

    def _end_line(self) -> CardRead | None:
        text = self._buffer.decode("ascii").upper()
        self._buffer.clear()
        if len(text) not in UID_HEX_LENGTHS:
            self.bad_frames += 1
            return None
        self.reads += 1
        return CardRead(text, CardFraming.HEX_LINE)
