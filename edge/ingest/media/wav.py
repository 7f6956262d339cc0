"""Media facts of a WAV file from its RIFF chunks, as ffprobe's summary gives them. Pure, bounded.

Understood: a RIFF/WAVE file whose `fmt ` chunk (before `data`) describes integer PCM (8, 16, 24 or
32 bits), IEEE float (32 or 64 bits), A-law or mu-law, also as WAVE_FORMAT_EXTENSIBLE, and whose
`data` chunk lies wholly inside the file. ffmpeg's wav demuxer then counts
`data size * 8 / (channels * bits)` samples, so the duration is exact. Anything else (RF64,
compressed formats, unusual valid-bit counts, a data chunk longer than the file) raises
NotUnderstood and ffprobe answers.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

from edge.ingest.media.errors import NotUnderstood
from edge.ingest.media.reader import ffprobe_milliseconds, read_exact, rescale_to_microseconds

CONTAINER = "wav"
MAX_CHUNKS = 1024
MAX_FMT_BYTES = 1024
EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_* GUIDs after their first four bytes (which hold the plain format tag).
MEDIASUBTYPE_BASE = bytes.fromhex("000010008000" "00aa00389b71")
_PCM_CODECS = {
    (1, 8): "pcm_u8",
    (1, 16): "pcm_s16le",
    (1, 24): "pcm_s24le",
    (1, 32): "pcm_s32le",
    (3, 32): "pcm_f32le",
    (3, 64): "pcm_f64le",
    (6, 8): "pcm_alaw",
    (7, 8): "pcm_mulaw",
}


def _format(chunk: bytes) -> tuple[int, int, int, int]:
    """(format tag, channels, sample rate, bits per sample) as ffmpeg's wav demuxer takes them."""
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", chunk[:16])
    if tag != EXTENSIBLE:
        return tag, channels, rate, bits
    if len(chunk) < 40:
        raise NotUnderstood("WAVE_FORMAT_EXTENSIBLE fmt chunk cut off")
    _, valid_bits, mask = struct.unpack("<HHI", chunk[16:24])
    subformat = chunk[24:40]
    if subformat[4:] != MEDIASUBTYPE_BASE:
        raise NotUnderstood(f"WAVE_FORMAT_EXTENSIBLE subformat {subformat.hex()}")
    if valid_bits not in (0, bits):
        # ffmpeg picks the codec by the valid bits and reads the data as if packed that way.
        raise NotUnderstood(f"{valid_bits} valid bits in {bits}-bit samples")
    if mask.bit_count() != channels:
        raise NotUnderstood(f"channel mask 0x{mask:x} for {channels} channels")
    (tag,) = struct.unpack("<I", subformat[:4])
    return tag, channels, rate, bits


def wav_facts(f: BinaryIO, size: int) -> dict[str, Any]:
    """ffprobe's summary of a WAV file, or NotUnderstood."""
    if size < 12:
        raise NotUnderstood("shorter than a RIFF header")
    riff, _, wave = struct.unpack("<4sI4s", read_exact(f, 0, 12, 12))
    if riff != b"RIFF" or wave != b"WAVE":
        raise NotUnderstood("not a RIFF/WAVE file")
    position = 12
    fmt: tuple[int, int, int, int] | None = None
    data: tuple[int, int] | None = None
    for _ in range(MAX_CHUNKS):
        if position + 8 > size:
            break
        kind, length = struct.unpack("<4sI", read_exact(f, position, 8, 8))
        body = position + 8
        if kind == b"fmt ":
            if fmt is not None or data is not None:
                raise NotUnderstood("a fmt chunk after another fmt or the data chunk")
            if not 16 <= length <= MAX_FMT_BYTES:
                raise NotUnderstood(f"fmt chunk of {length} bytes")
            fmt = _format(read_exact(f, body, length, MAX_FMT_BYTES))
        elif kind == b"data":
            if fmt is None:
                raise NotUnderstood("a data chunk before the fmt chunk")
            if data is not None:
                raise NotUnderstood("a second data chunk")
            if length == 0 or body + length > size:
                raise NotUnderstood(f"data chunk of {length} bytes in a {size}-byte file")
            data = (body, length)
        position = body + length + (length & 1)
    else:
        raise NotUnderstood(f"more than {MAX_CHUNKS} chunks")
    if fmt is None or data is None:
        raise NotUnderstood("no fmt or no data chunk")
    tag, channels, rate, bits = fmt
    codec = _PCM_CODECS.get((tag, bits))
    if codec is None or channels == 0 or rate == 0:
        raise NotUnderstood(f"format tag {tag}, {bits} bits, {channels} channels at {rate} Hz")
    samples = data[1] * 8 // (channels * bits)
    if samples == 0:
        raise NotUnderstood("no whole sample in the data chunk")
    return {
        "container": CONTAINER,
        "duration_ms": ffprobe_milliseconds(rescale_to_microseconds(samples, rate)),
        "streams": [{"type": "audio", "codec": codec, "sample_rate": rate, "channels": channels}],
    }
