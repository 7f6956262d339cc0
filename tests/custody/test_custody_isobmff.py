"""ISO-BMFF box parsing on real ffmpeg MP4s and on hostile headers."""

from __future__ import annotations

import io
import itertools
import random
import struct
import uuid
from pathlib import Path

import pytest

from edge.custody.errors import IsoBmffError
from edge.custody.isobmff import (
    EVIDENCE_BOX_NAME,
    EVIDENCE_BOX_UUID,
    MAX_BOXES,
    Box,
    evidence_box,
    find_evidence_box,
    seal_decision,
    top_level_boxes,
)


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41")
MOOV = box(b"moov", box(b"mvhd", bytes(100)))
MDAT = box(b"mdat", bytes(64))


def parse(data: bytes) -> list[Box]:
    return top_level_boxes(io.BytesIO(data), len(data))


def decide(data: bytes) -> tuple[bool, str]:
    return seal_decision(io.BytesIO(data), len(data))


def test_evidence_box_uuid_is_the_documented_uuid5() -> None:
    assert uuid.uuid5(uuid.NAMESPACE_URL, EVIDENCE_BOX_NAME).bytes == EVIDENCE_BOX_UUID
    assert len(EVIDENCE_BOX_UUID) == 16


@pytest.mark.parametrize(
    ("variant", "types"),
    [
        ("plain", ["ftyp", "free", "mdat", "moov"]),
        ("faststart", ["ftyp", "moov", "free", "mdat"]),
        ("fragmented", ["ftyp", "moov", "moof", "mdat", "mfra"]),
    ],
)
def test_real_mp4_boxes(mp4_dir: Path, variant: str, types: list[str]) -> None:
    path = mp4_dir / f"{variant}.mp4"
    size = path.stat().st_size
    with path.open("rb") as f:
        boxes = top_level_boxes(f, size)
    assert [b.type for b in boxes] == types
    assert boxes[0].offset == 0
    assert all(a.end == b.offset for a, b in itertools.pairwise(boxes))
    assert boxes[-1].end == size
    assert not any(b.extends_to_eof for b in boxes)


@pytest.mark.parametrize(("variant", "ok"), [("plain", True), ("faststart", True), ("fragmented", False)])
def test_seal_decision_on_real_mp4s(mp4_dir: Path, variant: str, ok: bool) -> None:
    path = mp4_dir / f"{variant}.mp4"
    with path.open("rb") as f:
        decision, reason = seal_decision(f, path.stat().st_size)
    assert decision is ok
    assert (reason == "") is ok
    if not ok:
        assert "mfra" in reason


def test_truncated_mp4_is_not_sealable(mp4_dir: Path) -> None:
    data = (mp4_dir / "plain.mp4").read_bytes()[:-100]
    ok, reason = decide(data)
    assert not ok
    assert "truncated" in reason and "'moov'" in reason


def test_zero_byte_file_is_not_sealable() -> None:
    assert decide(b"") == (False, "the file is empty (0 bytes)")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xd8\xff\xe0" + bytes(100), "not a clean ISO-BMFF"),  # a JPEG
        (b"RIFF" + bytes(100), "not a clean ISO-BMFF"),
        (box(b"wxyz") + MOOV, "first box is 'wxyz'"),
        (FTYP + MDAT, "no moov"),
        (FTYP + MOOV + struct.pack(">I4s", 0, b"mdat") + bytes(40), "size 0"),
        (FTYP + MOOV + MDAT + box(b"mfra", bytes(8)), "mfra"),
        (FTYP + MOOV + MDAT + evidence_box(b"{}"), "already carries an evidence-edge box"),
        # Not last: a box appended after ours (a forged or re-docked file) must not hide it.
        (FTYP + MOOV + evidence_box(b"{}") + MDAT, "already carries an evidence-edge box (top level, offset"),
        (FTYP + MOOV + MDAT + evidence_box(b"{}") + box(b"free", bytes(8)), "already carries an evidence"),
        (FTYP + MOOV + MDAT + b"\x00" * 7, "7 trailing bytes"),
    ],
)
def test_seal_decision_reasons(data: bytes, reason: str) -> None:
    ok, why = decide(data)
    assert not ok
    assert reason in why


def test_old_quicktime_without_ftyp_is_sealable() -> None:
    assert decide(box(b"wide") + MDAT + MOOV) == (True, "")
    assert decide(MOOV + MDAT) == (True, "")


def test_size_zero_last_box_is_parsed_as_to_eof() -> None:
    data = FTYP + struct.pack(">I4s", 0, b"mdat") + bytes(40)
    boxes = parse(data)
    assert boxes[-1].extends_to_eof and boxes[-1].size == 48 and boxes[-1].end == len(data)


def test_largesize_boxes_are_parsed() -> None:
    big = struct.pack(">I4sQ", 1, b"mdat", 16 + 10) + bytes(10)
    boxes = parse(FTYP + big + MOOV)
    assert [(b.type, b.header_size, b.size) for b in boxes] == [
        ("ftyp", 8, len(FTYP)),
        ("mdat", 16, 26),
        ("moov", 8, len(MOOV)),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (FTYP + struct.pack(">I4sQ", 1, b"mdat", 2**63) + bytes(8), "only 24 remain"),
        (FTYP + struct.pack(">I4sQ", 1, b"mdat", 2**64 - 1), "only 16 remain"),
        (FTYP + struct.pack(">I4sQ", 1, b"mdat", 8), "smaller than its 16-byte header"),
        (FTYP + struct.pack(">I4sQ", 1, b"mdat", 0), "smaller than its 16-byte header"),
        (FTYP + struct.pack(">I4s", 1, b"mdat") + b"\x00\x00", "64-bit size but the file ends"),
        (FTYP + struct.pack(">I4s", 4, b"free") + bytes(20), "smaller than its 8-byte header"),
        (FTYP + struct.pack(">I4s", 7, b"free"), "smaller than its 8-byte header"),
        (FTYP + struct.pack(">I4s", 0xFFFFFFFF, b"mdat"), "declares 4294967295 bytes"),
        (FTYP + struct.pack(">I4s", 20, b"uuid") + bytes(30), "smaller than its 24-byte header"),
        (FTYP + struct.pack(">I4s", 100, b"uuid") + bytes(4), "ends inside its 16-byte user type"),
        (FTYP + struct.pack(">I4s", 16, b"\x00\x01\x02\x03") + bytes(8), "4-character box type"),
        (FTYP + b"\x00\x00\x00", "3 trailing bytes"),
    ],
)
def test_hostile_headers_raise_iso_bmff_error_naming_the_offset(data: bytes, message: str) -> None:
    with pytest.raises(IsoBmffError, match=message) as info:
        parse(data)
    assert str(info.value).startswith(f"offset {len(FTYP)}:")


def test_box_count_is_capped() -> None:
    data = FTYP + box(b"free") * MAX_BOXES
    with pytest.raises(IsoBmffError, match=f"more than {MAX_BOXES} top-level boxes"):
        parse(data)
    assert len(top_level_boxes(io.BytesIO(data[: len(FTYP) + 8 * 10]), len(FTYP) + 80)) == 11


def test_stream_shorter_than_declared_size() -> None:
    data = FTYP + MOOV
    with pytest.raises(IsoBmffError, match="file ended"):
        top_level_boxes(io.BytesIO(data[: len(FTYP) + 4]), len(data))


def test_evidence_box_layout_and_lookup() -> None:
    payload = b'{"item":"x"}'
    ours = evidence_box(payload)
    assert struct.unpack(">I", ours[:4])[0] == len(ours) == 24 + len(payload)
    assert ours[4:8] == b"uuid" and ours[8:24] == EVIDENCE_BOX_UUID and ours[24:] == payload
    data = FTYP + MOOV + MDAT + ours
    found = find_evidence_box(io.BytesIO(data), len(data))
    assert found is not None and found.is_evidence_box
    assert (found.offset, found.payload_offset, found.payload_size) == (
        len(data) - len(ours),
        len(data) - len(payload),
        len(payload),
    )
    assert find_evidence_box(io.BytesIO(data[: -len(ours)]), len(data) - len(ours)) is None
    foreign = struct.pack(">I4s", 24, b"uuid") + bytes(16)
    assert find_evidence_box(io.BytesIO(data + foreign), len(data) + 24) is None
    assert find_evidence_box(io.BytesIO(b""), 0) is None


def test_random_header_corruption_never_escapes_as_another_error(mp4_dir: Path) -> None:
    original = (mp4_dir / "plain.mp4").read_bytes()
    offsets = [b.offset for b in parse(original)]
    rng = random.Random(947)
    for _ in range(400):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            at = rng.choice(offsets) + rng.randrange(16)
            data[at] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        try:
            boxes = parse(bytes(data))
        except IsoBmffError:
            continue
        assert sum(b.size for b in boxes) == len(data)
        decide(bytes(data))
