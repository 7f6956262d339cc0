"""ISO-BMFF (MP4/MOV) top-level box parsing, and the evidence-edge manifest box.

Only box headers are read, through a seekable binary file object, so memory stays bounded whatever the
file size; the number of boxes is capped so a hostile file cannot make us walk millions of tiny boxes.

The sealed evidence file is the original bytes followed by one top-level ``uuid`` box::

    size (4 bytes, big-endian; or 1 plus an 8-byte largesize) | "uuid" | EVIDENCE_BOX_UUID | payload

where the payload is the canonical JSON of the signed manifest. Players skip unknown top-level boxes,
and the original stays an exact prefix whose SHA-256 the manifest carries.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from edge.custody.errors import IsoBmffError

__all__ = [
    "EVIDENCE_BOX_NAME",
    "EVIDENCE_BOX_UUID",
    "MAX_BOXES",
    "Box",
    "evidence_box",
    "find_evidence_box",
    "iter_top_level_boxes",
    "seal_decision",
    "top_level_boxes",
]

EVIDENCE_BOX_NAME = "https://evidence-edge.invalid/iso-bmff/evidence-manifest/v1"
# uuid5(NAMESPACE_URL, EVIDENCE_BOX_NAME). Written out so that no edit of the name can change it: sealed
# files in archives carry these bytes forever (a test checks the derivation).
EVIDENCE_BOX_UUID: bytes = uuid.UUID("7a704b9c-636c-5d00-94e7-d45fb719a8a1").bytes
MAX_BOXES = 100_000

# Files from old QuickTime writers have no ftyp; these are the boxes such files start with.
_LEGACY_FIRST_TYPES = frozenset({"moov", "mdat", "wide", "free", "skip"})


@dataclass(frozen=True)
class Box:
    type: str
    offset: int
    size: int  # whole box including header; for a size-0 box, the bytes up to end of file
    header_size: int
    usertype: bytes | None
    extends_to_eof: bool = False  # declared with size 0 ("to end of file")

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def payload_offset(self) -> int:
        return self.offset + self.header_size

    @property
    def payload_size(self) -> int:
        return self.size - self.header_size

    @property
    def is_evidence_box(self) -> bool:
        return self.type == "uuid" and self.usertype == EVIDENCE_BOX_UUID


def _read_at(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    chunks: list[bytes] = []
    remaining = length
    while remaining:
        chunk = f.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    data = b"".join(chunks)
    if len(data) != length:
        raise IsoBmffError(
            f"offset {offset}: expected {length} bytes, the file ended after {len(data)} "
            f"(shorter than the size it was opened with)"
        )
    return data


def iter_top_level_boxes(f: BinaryIO, file_size: int, *, max_boxes: int = MAX_BOXES) -> Iterator[Box]:
    """Yield the top-level boxes of the first ``file_size`` bytes of ``f``.

    Raises :class:`IsoBmffError` naming the offset at the first invalid or truncated box.
    """
    offset = 0
    count = 0
    while offset < file_size:
        count += 1
        if count > max_boxes:
            raise IsoBmffError(f"offset {offset}: more than {max_boxes} top-level boxes; refusing to "
                               "walk further")
        remaining = file_size - offset
        if remaining < 8:
            raise IsoBmffError(f"offset {offset}: expected an 8-byte box header, found {remaining} "
                               "trailing bytes")
        header = _read_at(f, offset, min(remaining, 32))
        size32, type_bytes = struct.unpack(">I4s", header[:8])
        if not all(0x20 <= byte <= 0x7E for byte in type_bytes):
            raise IsoBmffError(f"offset {offset}: expected a 4-character box type, found bytes "
                               f"{type_bytes.hex()}")
        box_type = type_bytes.decode("ascii")
        header_size = 8
        extends_to_eof = False
        if size32 == 1:
            if len(header) < 16:
                raise IsoBmffError(f"offset {offset}: box {box_type!r} declares a 64-bit size but "
                                   "the file ends")
            (size,) = struct.unpack(">Q", header[8:16])
            header_size = 16
        elif size32 == 0:
            size = remaining
            extends_to_eof = True
        else:
            size = size32
        usertype: bytes | None = None
        if box_type == "uuid":
            if len(header) < header_size + 16:
                raise IsoBmffError(f"offset {offset}: uuid box ends inside its 16-byte user type")
            usertype = header[header_size:header_size + 16]
            header_size += 16
        if size < header_size:
            raise IsoBmffError(
                f"offset {offset}: box {box_type!r} declares size {size}, smaller than its "
                f"{header_size}-byte header"
            )
        if size > remaining:
            raise IsoBmffError(
                f"offset {offset}: box {box_type!r} declares {size} bytes but only {remaining} remain "
                f"(truncated file)"
            )
        yield Box(box_type, offset, size, header_size, usertype, extends_to_eof)
        offset += size


def top_level_boxes(f: BinaryIO, file_size: int, *, max_boxes: int = MAX_BOXES) -> list[Box]:
    """All top-level boxes; raises :class:`IsoBmffError` on truncated or invalid boxes."""
    return list(iter_top_level_boxes(f, file_size, max_boxes=max_boxes))


def seal_decision(f: BinaryIO, file_size: int) -> tuple[bool, str]:
    """``(True, "")`` when appending a top-level uuid box is safe, else ``(False, reason)``."""
    if file_size == 0:
        return False, "the file is empty (0 bytes)"
    first: Box | None = None
    last: Box | None = None
    ours: Box | None = None
    has_moov = False
    try:
        for box in iter_top_level_boxes(f, file_size):
            if first is None:
                first = box
            last = box
            has_moov = has_moov or box.type == "moov"
            if ours is None and box.is_evidence_box:
                ours = box
    except IsoBmffError as exc:
        return False, f"not a clean ISO-BMFF file: {exc}"
    assert first is not None and last is not None
    if first.type != "ftyp" and first.type not in _LEGACY_FIRST_TYPES:
        return False, (
            f"the first box is {first.type!r}; expected 'ftyp' (or moov/mdat of an old QuickTime file)"
        )
    if not has_moov:
        return False, "there is no moov box: the recording was not finalised and would not play"
    if last.extends_to_eof:
        return False, (
            f"the last box {last.type!r} is declared to extend to end of file (size 0); "
            "an appended box would fall inside it"
        )
    if last.type == "mfra":
        return False, (
            "the file ends with an mfra box, which players locate from the end of the file (fragmented MP4)"
        )
    if ours is not None:
        # A sealed file brought back onto a recorder, or a forged box: a second box would make the
        # first one (which verifiers read) describe the wrong prefix. The file is kept as it is.
        return False, (
            f"the file already carries an evidence-edge box (top level, offset {ours.offset}): a sealed "
            "file brought back or a forged box; the whole file is the original, sealed by sidecar only"
        )
    return True, ""


def evidence_box(payload: bytes) -> bytes:
    """A top-level uuid box with the evidence-edge user type around ``payload``."""
    size = 8 + 16 + len(payload)
    if size <= 0xFFFFFFFF:
        return struct.pack(">I4s", size, b"uuid") + EVIDENCE_BOX_UUID + payload
    return struct.pack(">I4sQ", 1, b"uuid", size + 8) + EVIDENCE_BOX_UUID + payload


def find_evidence_box(f: BinaryIO, file_size: int) -> Box | None:
    """The last top-level box when it is an evidence-edge box, else None.

    Raises :class:`IsoBmffError` when the file does not parse as ISO-BMFF.
    """
    last: Box | None = None
    for box in iter_top_level_boxes(f, file_size):
        last = box
    if last is not None and last.is_evidence_box:
        return last
    return None
