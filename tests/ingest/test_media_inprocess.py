"""The in-process media readers give exactly ffprobe's summary, or step aside; hostile bytes cannot
make them read much, loop long, or fail any other way."""

from __future__ import annotations

import io
import random
import shutil
import struct
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from edge.ingest.facts import media_facts_and_seal
from edge.ingest.media import NotUnderstood, read_facts
from edge.ingest.media.bits import BitReader
from edge.ingest.media.codecs import h264_picture_size
from edge.ingest.mediainfo import media_facts
from simulators.recorder.media import make_jpg, make_mp4, make_wav

from .conftest import LEFT_TO_FFPROBE, UNDERSTOOD


class CountingFile(io.RawIOBase):
    """A read-only file that counts what is asked of it, and refuses any single read over a bound."""

    def __init__(self, data: bytes | Path, max_read: int = 64 * 1024) -> None:
        self.f: BinaryIO = open(data, "rb") if isinstance(data, Path) else io.BytesIO(data)  # noqa: SIM115
        self.max_read = max_read
        self.reads = 0
        self.bytes_read = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        assert 0 <= size <= self.max_read, f"a read of {size} bytes"
        self.reads += 1
        data = self.f.read(size)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        self.f.close()
        super().close()


def facts_of(path: Path) -> dict[str, Any]:
    with CountingFile(path) as f:
        _, facts = read_facts(f, path.stat().st_size)  # type: ignore[arg-type]
    assert facts.pop("parser") == "in-process"
    return facts


def ffprobe_facts(path: Path, tmp_path: Path) -> dict[str, Any]:
    """ffprobe's summary of the bytes as the pipeline stores them: a name without an extension."""
    part = tmp_path / "copy.part"
    shutil.copyfile(path, part)
    facts = media_facts(part)
    assert facts.pop("parser") == "ffprobe", facts
    return facts


@pytest.mark.parametrize("name", sorted(UNDERSTOOD))
def test_in_process_facts_are_ffprobe_facts(
    name: str, understood_media: dict[str, Path], tmp_path: Path
) -> None:
    path = understood_media[name]
    assert facts_of(path) == ffprobe_facts(path, tmp_path)


def test_recorder_media_from_the_simulator_reads_the_same(tmp_path: Path) -> None:
    created = datetime(2026, 11, 20, 8, 1, 2)
    make_mp4(tmp_path / "clip.mp4", size_bytes=2_500_000, seed=3, creation_time=created)
    make_jpg(tmp_path / "photo.jpg", seed=4)
    make_wav(tmp_path / "voice.wav", seconds=1.7, seed=5)
    for name in ("clip.mp4", "photo.jpg", "voice.wav"):
        mine = facts_of(tmp_path / name)
        assert mine == ffprobe_facts(tmp_path / name, tmp_path), name
    assert facts_of(tmp_path / "clip.mp4")["creation_time"] == "2026-11-20T08:01:02.000000Z"


@pytest.mark.parametrize("name", sorted(LEFT_TO_FFPROBE))
def test_what_is_not_fully_understood_goes_to_ffprobe(
    name: str, ffprobe_media: dict[str, Path], tmp_path: Path
) -> None:
    path = ffprobe_media[name]
    with pytest.raises(NotUnderstood), CountingFile(path) as f:
        read_facts(f, path.stat().st_size)  # type: ignore[arg-type]
    part = tmp_path / "item.part"
    shutil.copyfile(path, part)
    facts, _ = media_facts_and_seal(part, part.stat().st_size, path.suffix.lstrip("."))
    assert facts["parser"] == "ffprobe"
    assert part.stat().st_size == path.stat().st_size, "the placeholder box is gone again"


def test_an_understood_mp4_is_sealable_without_running_ffprobe(
    understood_media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_ffprobe(path: Path, **kwargs: object) -> dict[str, Any]:
        raise AssertionError("ffprobe ran")

    monkeypatch.setattr("edge.ingest.facts.media_facts", no_ffprobe)
    part = tmp_path / "item.part"
    shutil.copyfile(understood_media["h264-1080p-cropped-aac48k.mp4"], part)
    facts, not_embedded = media_facts_and_seal(part, part.stat().st_size, "mp4")
    assert not_embedded is None and facts["parser"] == "in-process"
    facts, not_embedded = media_facts_and_seal(part, part.stat().st_size, "jpg")
    assert not_embedded == "not an ISO-BMFF file (.jpg)"


# -- hostile bytes ---------------------------------------------------------------------------------


def outcome(data: bytes) -> dict[str, Any] | None:
    """The facts, or None when refused; any other exception fails the test. Reads stay small."""
    with CountingFile(data) as f:
        try:
            _, facts = read_facts(f, len(data))  # type: ignore[arg-type]
        except NotUnderstood:
            facts = None
        assert f.reads <= 20_000, f"{f.reads} reads"
    return facts


@pytest.mark.parametrize("name", sorted(UNDERSTOOD))
def test_truncated_files_are_refused_never_misread(name: str, understood_media: dict[str, Path]) -> None:
    data = understood_media[name].read_bytes()
    whole = outcome(data)
    assert whole is not None
    cuts = sorted({*range(0, len(data), max(1, len(data) // 60)), *range(len(data) - 64, len(data))})
    for cut in cuts:
        got = outcome(data[:cut])
        # Only a cut exactly between two boxes after the last one that matters can still read the same.
        assert got is None or got == whole, (cut, got)


@pytest.mark.parametrize("name", sorted(UNDERSTOOD))
def test_flipped_bytes_in_headers_never_raise_anything_else(
    name: str, understood_media: dict[str, Path]
) -> None:
    data = understood_media[name].read_bytes()
    rng = random.Random(name)
    # Headers are where readers look: the first and last 4 KiB (moov at the end, faststart at the start).
    spots = [*range(min(4096, len(data))), *range(max(0, len(data) - 4096), len(data))]
    for _ in range(300):
        mutated = bytearray(data)
        for spot in rng.sample(spots, 3):
            mutated[spot] ^= 1 << rng.randrange(8)
        outcome(bytes(mutated))


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")


def mvhd(duration: int = 1000) -> bytes:
    return box(b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, 1000, duration) + bytes(80))


def movie(*children: bytes) -> bytes:
    return FTYP + box(b"moov", b"".join(children))


def video_track(stbl: bytes) -> bytes:
    handler = box(b"hdlr", bytes(8) + b"vide" + bytes(12))
    return box(b"trak", box(b"mdia", handler + box(b"minf", box(b"stbl", stbl))))


SOF_16X16 = b"\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"
SOF_0X0 = b"\xff\xc0\x00\x0b\x08\x00\x00\x00\x00\x01\x01\x11\x00"
SOS = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
FMT_16K_MONO = b"fmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)

HOSTILE: dict[str, bytes] = {
    "moov child claims 2**63 bytes": movie(struct.pack(">I4sQ", 1, b"trak", 1 << 63)),
    "moov of 200k empty boxes": movie(mvhd(), box(b"free", b"") * 200_000),
    "stsd claims 2 GiB": movie(mvhd(), video_track(struct.pack(">I4s", 0x7FFFFFF0, b"stsd"))),
    "mvhd with unknown duration": movie(
        box(b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, 1000, 0xFFFFFFFF) + bytes(80))
    ),
    "mvhd timescale 0": movie(box(b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, 0, 5) + bytes(80))),
    "jpeg segment runs past the end": b"\xff\xd8\xff\xe0\xff\xff" + bytes(100),
    "jpeg of 100k empty comments": b"\xff\xd8" + b"\xff\xfe\x00\x02" * 100_000 + b"\xff\xd9",
    "jpeg frame of size 0": b"\xff\xd8" + SOF_0X0 + SOS + b"\x12\xff\xd9",
    "jpeg scan without EOI": b"\xff\xd8" + SOF_16X16 + SOS + b"\xff\x00" * 50_000,
    "jpeg with data after EOI": b"\xff\xd8" + SOF_16X16 + SOS + b"\x12\xff\xd9\xff\xd8",
    "jpeg scan before the frame header": b"\xff\xd8" + SOS + b"\x12\xff\xd9",
    "wav data claims 4 GiB": b"RIFF\x00\x00\x00\x00WAVE" + FMT_16K_MONO + b"data\xff\xff\xff\xff" + bytes(64),
    "wav of 100k empty chunks": b"RIFF\x00\x00\x00\x00WAVE" + b"junk\x00\x00\x00\x00" * 100_000,
    "wav fmt claims 1 GiB": b"RIFF\x00\x00\x00\x00WAVEfmt \x00\x00\x00\x40" + bytes(64),
    "wav data before fmt": b"RIFF\x00\x00\x00\x00WAVEdata\x04\x00\x00\x00\x00\x00\x00\x00" + FMT_16K_MONO,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_headers_are_refused_with_small_bounded_reads(name: str) -> None:
    data = HOSTILE[name]
    with CountingFile(data) as f:
        with pytest.raises(NotUnderstood):
            read_facts(f, len(data))  # type: ignore[arg-type]
        # Whatever the headers claim, the readers look at headers only (the JPEG scan excepted).
        assert f.bytes_read <= max(256 * 1024, 2 * len(data) if name.startswith("jpeg") else 0), f.bytes_read


def test_a_huge_sparse_file_costs_a_few_header_reads(
    tmp_path: Path, understood_media: dict[str, Path]
) -> None:
    """A 64 GiB file (sparse) whose mdat spans almost all of it: only box headers are read."""
    source = understood_media["h264-baseline-ntsc-faststart.mp4"].read_bytes()
    moov_at = source.index(b"moov") - 4
    (moov_size,) = struct.unpack(">I", source[moov_at : moov_at + 4])
    head = source[: moov_at + moov_size]  # ftyp (+free) + moov, faststart
    path = tmp_path / "huge.mp4"
    mdat_size = 64 << 30
    with path.open("wb") as f:
        f.write(head + struct.pack(">I4sQ", 1, b"mdat", mdat_size))
        f.truncate(len(head) + mdat_size)
    with CountingFile(path) as f:
        _, facts = read_facts(f, path.stat().st_size)  # type: ignore[arg-type]
        assert f.bytes_read < 256 * 1024
    assert facts["streams"][0]["codec"] == "h264"


def exp_golomb_bomb() -> bytes:
    """An H.264 SPS whose seq_parameter_set_id is an exp-Golomb code with 40 leading zeros."""
    return bytes([0x67, 66, 0, 30, 0, 0, 0, 0, 0, 1, 0xFF])


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (exp_golomb_bomb, "longer than 32 bits"),
        (lambda: bytes([0x67, 66, 0]), "not an H.264"),
        (lambda: bytes([0x68, 66, 0, 30, 0xFF]), "not an H.264"),
    ],
)
def test_parameter_sets_that_lie_are_refused(make: Callable[[], bytes], problem: str) -> None:
    with pytest.raises(NotUnderstood, match=problem):
        h264_picture_size(make())


def test_the_bit_reader_never_reads_past_its_bytes() -> None:
    reader = BitReader(b"\x80")
    assert reader.bits(1) == 1
    with pytest.raises(NotUnderstood):
        reader.bits(8)
