"""G.711 µ-law <-> A-law, sample by sample: pure, two 256-byte tables.

A GB/T 28181 camera may switch its sound from one law to the other mid-stream (a new PSM, stream type 0x90
<-> 0x91). The raw sound pipe of a room's ffmpeg run has one format for the whole run, so the agent writes
what the camera sends in the other law converted: each sample decoded to 16-bit linear and encoded again
(ITU-T G.711), exactly as ffmpeg's pcm_mulaw/pcm_alaw decoders and encoders do (tests compare every code
with ffmpeg's own conversion), so the recording holds the sound received, not silence in its place.
"""

from __future__ import annotations

from collections.abc import Callable

from drivers.gb28181.ps import Codec

_SIGN_BIT = 0x80
_QUANT_MASK = 0x0F
_SEG_MASK = 0x70
_SEG_SHIFT = 4
_ULAW_BIAS = 0x84
_ALAW_MASK = 0xD5  # the bits A-law inverts
_ULAW_MASK = 0xFF  # ... and µ-law


def alaw_to_linear(code: int) -> int:
    value = code ^ 0x55
    step = value & _QUANT_MASK
    segment = (value & _SEG_MASK) >> _SEG_SHIFT
    linear = (step + step + 1 + 32) << (segment + 2) if segment else (step + step + 1) << 3
    return linear if value & _SIGN_BIT else -linear


def ulaw_to_linear(code: int) -> int:
    value = ~code & 0xFF
    linear = ((value & _QUANT_MASK) << 3) + _ULAW_BIAS
    linear <<= (value & _SEG_MASK) >> _SEG_SHIFT
    return _ULAW_BIAS - linear if value & _SIGN_BIT else linear - _ULAW_BIAS


def _encoder(decode: Callable[[int], int], mask: int) -> list[int]:
    """The law's code for each 14-bit linear value (a 16-bit sample >> 2), as ffmpeg builds it: each
    code from the midpoint between its value and the next smaller one's."""
    table = [0] * 16384
    table[8192] = mask
    at = 1
    for code in range(127):
        lower, upper = decode(code ^ mask), decode((code + 1) ^ mask)
        bound = (lower + upper + 4) >> 3
        while at < bound:
            table[8192 - at] = code ^ (mask ^ _SIGN_BIT)
            table[8192 + at] = code ^ mask
            at += 1
    while at < 8192:
        table[8192 - at] = 127 ^ (mask ^ _SIGN_BIT)
        table[8192 + at] = 127 ^ mask
        at += 1
    table[0] = table[1]
    return table


def _converter(decode: Callable[[int], int], encoder: list[int]) -> bytes:
    return bytes(encoder[(decode(code) + 32768) >> 2] for code in range(256))


_LINEAR_TO_ALAW = _encoder(alaw_to_linear, _ALAW_MASK)
_LINEAR_TO_ULAW = _encoder(ulaw_to_linear, _ULAW_MASK)
ULAW_TO_ALAW = _converter(ulaw_to_linear, _LINEAR_TO_ALAW)
ALAW_TO_ULAW = _converter(alaw_to_linear, _LINEAR_TO_ULAW)
_TABLES = {(Codec.G711U, Codec.G711A): ULAW_TO_ALAW, (Codec.G711A, Codec.G711U): ALAW_TO_ULAW}


def convertible(source: Codec, target: Codec) -> bool:
    """`source` sound can be written as `target` (the same law, or the other G.711 law)."""
    return source is target or (source, target) in _TABLES


def convert(data: bytes, source: Codec, target: Codec) -> bytes:
    """`data` (G.711 in `source`'s law) in `target`'s law."""
    if source is target:
        return data
    return data.translate(_TABLES[(source, target)])
