"""Which in-process reader a file is for, told from its first bytes (never from its name). Pure."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, BinaryIO

from edge.ingest.media.errors import NotUnderstood
from edge.ingest.media.jpeg import jpeg_facts
from edge.ingest.media.mp4 import mp4_facts
from edge.ingest.media.wav import wav_facts

PARSER = "in-process"


class MediaKind(StrEnum):
    MP4 = "mp4"
    JPEG = "jpeg"
    WAV = "wav"


def sniff(head: bytes) -> MediaKind | None:
    if head[4:8] == b"ftyp":
        return MediaKind.MP4
    if head[:3] == b"\xff\xd8\xff":
        return MediaKind.JPEG
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return MediaKind.WAV
    return None


_READERS = {MediaKind.MP4: mp4_facts, MediaKind.JPEG: jpeg_facts, MediaKind.WAV: wav_facts}


def read_facts(f: BinaryIO, size: int) -> tuple[MediaKind, dict[str, Any]]:
    """The kind and ffprobe-equivalent facts of the first `size` bytes of `f`; raises NotUnderstood
    when no in-process reader can vouch for them."""
    f.seek(0)
    kind = sniff(f.read(12))
    if kind is None:
        raise NotUnderstood("not an MP4, JPEG or WAV file")
    facts = _READERS[kind](f, size)
    facts["parser"] = PARSER
    return kind, facts
