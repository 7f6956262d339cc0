"""Media facts of an MP4/MOV file from its `moov` box, as ffprobe's summary gives them. Pure, bounded.

Only box headers are walked and only the few small boxes that carry the facts are read (mvhd, hdlr,
stsd with its codec configuration); sample tables are never loaded, so the cost does not grow with
the recording's length. Understood: one `moov` with an `mvhd` and tracks whose handler is `vide`
(H.264 `avc1`/`avc3`, H.265 `hvc1`/`hev1`, picture size from the SPS equal to the sample entry's) or
`soun` (AAC-LC `mp4a`); not fragmented. Anything else raises NotUnderstood and ffprobe answers.

What ffprobe reports and how it is matched here (ffmpeg's mov demuxer):

* container: `mov,mp4,m4a,3gp,3g2,mj2`, the demuxer's name, for every ISO-BMFF file;
* duration: the movie header's duration rescaled to microseconds, printed with %f;
* creation_time: the movie header's creation time (seconds since 1904) as UTC with microseconds;
* streams, in track order: type from the handler, codec from the sample entry, width and height as
  the decoder outputs them (the SPS size minus its cropping window), AAC sample rate and channel
  count from the AudioSpecificConfig.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from edge.custody.errors import IsoBmffError
from edge.custody.isobmff import iter_top_level_boxes
from edge.ingest.media.codecs import aac_rate_and_channels, h264_picture_size, hevc_picture_size
from edge.ingest.media.errors import NotUnderstood
from edge.ingest.media.reader import ffprobe_milliseconds, read_exact, rescale_to_microseconds

CONTAINER = "mov,mp4,m4a,3gp,3g2,mj2"
MAX_CHILD_BOXES = 4096  # inside one container box
MAX_TRACKS = 64
MAX_SMALL_BOX = 64 * 1024  # mvhd, hdlr, stsd: a few hundred bytes in real files
SECONDS_1904_TO_1970 = 2082844800
UNKNOWN_DURATION_32 = 0xFFFFFFFF
_VIDEO_CODECS = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc"}
# MPEG-4 objectTypeIndication values ffmpeg maps to its "aac" codec (ISO 14496-1, 13818-7).
_AAC_OBJECT_TYPES = {0x40, 0x66, 0x67, 0x68}
_SAMPLE_TABLE_BOXES = {b"stsd", b"stts", b"stsc"}
_SOUND_ENTRY_BOXES_AT = {0: 36, 1: 52}


@dataclass(frozen=True)
class _Child:
    type: bytes
    payload_offset: int
    payload_size: int


def _children(f: BinaryIO, start: int, end: int) -> Iterator[_Child]:
    """The boxes inside [start, end): headers only, at most MAX_CHILD_BOXES."""
    offset = start
    count = 0
    while offset < end:
        count += 1
        if count > MAX_CHILD_BOXES:
            raise NotUnderstood(f"offset {offset}: more than {MAX_CHILD_BOXES} boxes in one container")
        if end - offset < 8:
            raise NotUnderstood(f"offset {offset}: {end - offset} stray bytes inside a container box")
        size, kind = struct.unpack(">I4s", read_exact(f, offset, 8, 8))
        header = 8
        if size == 1:
            if end - offset < 16:
                raise NotUnderstood(f"offset {offset}: 64-bit box size cut off")
            (size,) = struct.unpack(">Q", read_exact(f, offset + 8, 8, 8))
            header = 16
        elif size == 0:
            raise NotUnderstood(f"offset {offset}: box {kind!r} extends to the end of its container")
        if size < header or offset + size > end:
            raise NotUnderstood(f"offset {offset}: box {kind!r} of {size} bytes does not fit its container")
        yield _Child(kind, offset + header, size - header)
        offset += size


def _only(children: list[_Child], kind: bytes, where: str) -> _Child:
    found = [c for c in children if c.type == kind]
    if len(found) != 1:
        raise NotUnderstood(f"{where}: expected one {kind.decode()} box, found {len(found)}")
    return found[0]


def _payload(f: BinaryIO, child: _Child) -> bytes:
    return read_exact(f, child.payload_offset, child.payload_size, MAX_SMALL_BOX)


def _movie_header(data: bytes) -> tuple[int, int, int]:
    """(creation_time, timescale, duration) of an mvhd payload."""
    version = data[0] if data else -1
    if version == 0 and len(data) >= 20:
        creation, _, timescale, duration = struct.unpack(">IIII", data[4:20])
        if duration == UNKNOWN_DURATION_32:
            raise NotUnderstood("the movie header says the duration is unknown")
    elif version == 1 and len(data) >= 32:
        creation, _, timescale, duration = struct.unpack(">QQIQ", data[4:32])
    else:
        raise NotUnderstood(f"movie header version {version} of {len(data)} bytes")
    if timescale == 0 or duration == 0:
        raise NotUnderstood(f"movie header timescale {timescale}, duration {duration}")
    return creation, timescale, duration


def _creation_time(seconds: int) -> str | None:
    """ffmpeg's creation_time tag for an mvhd creation time (None: ffmpeg sets no tag)."""
    if seconds == 0:
        return None
    if seconds >= SECONDS_1904_TO_1970:
        seconds -= SECONDS_1904_TO_1970
    try:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    except OverflowError:
        raise NotUnderstood(f"creation time {seconds} s is past what a calendar holds") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + ".000000Z"


def _descriptor(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, payload offset, payload length) of an MPEG-4 descriptor with an expandable length."""
    if offset >= len(data):
        raise NotUnderstood("esds ends before a descriptor")
    tag = data[offset]
    length = 0
    position = offset + 1
    for _ in range(4):
        if position >= len(data):
            raise NotUnderstood("esds ends inside a descriptor length")
        byte = data[position]
        position += 1
        length = (length << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    if position + length > len(data):
        raise NotUnderstood(f"descriptor {tag} claims {length} bytes, the esds holds {len(data) - position}")
    return tag, position, length


def _aac_config(esds: bytes) -> bytes:
    """The AudioSpecificConfig in an esds payload (after its version and flags)."""
    tag, position, _ = _descriptor(esds, 4)
    if tag != 0x03:
        raise NotUnderstood(f"esds starts with descriptor tag {tag}, expected an ES descriptor (3)")
    if position + 3 > len(esds):
        raise NotUnderstood("ES descriptor cut off")
    flags = esds[position + 2]
    position += 3
    if flags & 0x80:  # streamDependenceFlag
        position += 2
    if flags & 0x40:  # URL_Flag
        if position >= len(esds):
            raise NotUnderstood("ES descriptor URL cut off")
        position += 1 + esds[position]
    if flags & 0x20:  # OCRstreamFlag
        position += 2
    tag, position, length = _descriptor(esds, position)
    if tag != 0x04 or length < 13:
        raise NotUnderstood(f"expected a decoder config descriptor (4), found tag {tag} of {length} bytes")
    object_type = esds[position]
    if object_type not in _AAC_OBJECT_TYPES:
        raise NotUnderstood(f"mp4a object type 0x{object_type:02x} (only AAC is read in-process)")
    tag, position, length = _descriptor(esds, position + 13)
    if tag != 0x05:
        raise NotUnderstood(f"expected decoder specific info (5), found tag {tag}")
    return esds[position : position + length]


def _avc_sps(config: bytes) -> bytes:
    if len(config) < 8 or config[0] != 1:
        raise NotUnderstood("avcC is not configuration version 1")
    if config[5] & 0x1F != 1:
        raise NotUnderstood(f"avcC holds {config[5] & 0x1F} sequence parameter sets (one is read in-process)")
    (length,) = struct.unpack(">H", config[6:8])
    if 8 + length > len(config):
        raise NotUnderstood("avcC sequence parameter set cut off")
    return config[8 : 8 + length]


def _hevc_sps(config: bytes) -> bytes:
    if len(config) < 23 or config[0] != 1:
        raise NotUnderstood("hvcC is not configuration version 1")
    position = 23
    found: list[bytes] = []
    for _ in range(config[22]):
        if position + 3 > len(config):
            raise NotUnderstood("hvcC array cut off")
        nal_type = config[position] & 0x3F
        (count,) = struct.unpack(">H", config[position + 1 : position + 3])
        position += 3
        for _ in range(count):
            if position + 2 > len(config):
                raise NotUnderstood("hvcC NAL unit length cut off")
            (length,) = struct.unpack(">H", config[position : position + 2])
            position += 2
            if position + length > len(config):
                raise NotUnderstood("hvcC NAL unit cut off")
            if nal_type == 33:
                found.append(config[position : position + length])
            position += length
    if len(found) != 1:
        raise NotUnderstood(f"hvcC holds {len(found)} sequence parameter sets (one is read in-process)")
    return found[0]


def _sample_entry_boxes(entry: bytes, start: int) -> dict[bytes, bytes]:
    """The boxes after a sample entry's fixed fields (each at most once)."""
    boxes: dict[bytes, bytes] = {}
    position = start
    while position < len(entry):
        if len(entry) - position < 8:
            break  # some writers pad sample entries with a few zero bytes
        size, kind = struct.unpack(">I4s", entry[position : position + 8])
        if size < 8 or position + size > len(entry):
            raise NotUnderstood(f"sample entry box {kind!r} of {size} bytes does not fit")
        if kind in boxes:
            raise NotUnderstood(f"sample entry holds two {kind.decode(errors='replace')} boxes")
        boxes[kind] = entry[position + 8 : position + size]
        position += size
    return boxes


def _stream(handler: bytes, stsd: bytes) -> dict[str, Any]:
    if len(stsd) < 16:
        raise NotUnderstood("sample description cut off")
    (entries,) = struct.unpack(">I", stsd[4:8])
    if entries != 1:
        raise NotUnderstood(f"{entries} sample descriptions in one track (one is read in-process)")
    size, fourcc = struct.unpack(">I4s", stsd[8:16])
    if size < 16 or 8 + size > len(stsd):
        raise NotUnderstood(f"sample entry of {size} bytes does not fit its description")
    entry = stsd[8 : 8 + size]
    if handler == b"vide":
        codec = _VIDEO_CODECS.get(fourcc)
        if codec is None or len(entry) < 86:
            raise NotUnderstood(f"video sample entry {fourcc!r}")
        width, height = struct.unpack(">HH", entry[32:36])
        boxes = _sample_entry_boxes(entry, 86)
        if codec == "h264":
            if b"avcC" not in boxes:
                raise NotUnderstood("avc1 sample entry without avcC")
            decoded = h264_picture_size(_avc_sps(boxes[b"avcC"]))
        else:
            if b"hvcC" not in boxes:
                raise NotUnderstood("hvc1 sample entry without hvcC")
            decoded = hevc_picture_size(_hevc_sps(boxes[b"hvcC"]))
        if decoded != (width, height):
            raise NotUnderstood(
                f"the sample entry says {width}x{height}, the sequence parameter set "
                f"{decoded[0]}x{decoded[1]}"
            )
        return {"type": "video", "codec": codec, "width": width, "height": height}
    if handler == b"soun":
        if fourcc != b"mp4a" or len(entry) < 52:
            raise NotUnderstood(f"audio sample entry {fourcc!r}")
        (version,) = struct.unpack(">H", entry[16:18])
        # QuickTime sound description version 1 adds four 32-bit fields; version 2 is another layout.
        if version not in _SOUND_ENTRY_BOXES_AT:
            raise NotUnderstood(f"QuickTime sound description version {version}")
        (rate_fixed,) = struct.unpack(">I", entry[32:36])
        boxes = _sample_entry_boxes(entry, _SOUND_ENTRY_BOXES_AT[version])
        if b"esds" not in boxes and b"wave" in boxes:  # QuickTime keeps it in a 'wave' box
            boxes = _sample_entry_boxes(boxes[b"wave"], 0)
        if b"esds" not in boxes:
            raise NotUnderstood("mp4a sample entry without esds")
        rate, channels = aac_rate_and_channels(_aac_config(boxes[b"esds"]))
        if rate != rate_fixed >> 16:
            raise NotUnderstood(
                f"the sample entry says {rate_fixed >> 16} Hz, the AAC configuration {rate} Hz"
            )
        return {"type": "audio", "codec": "aac", "sample_rate": rate, "channels": channels}
    raise NotUnderstood(f"track handler {handler!r} (only video and sound are read in-process)")


def _track(f: BinaryIO, trak: _Child) -> dict[str, Any]:
    end = trak.payload_offset + trak.payload_size
    mdia = _only(list(_children(f, trak.payload_offset, end)), b"mdia", "trak")
    mdia_children = list(_children(f, mdia.payload_offset, mdia.payload_offset + mdia.payload_size))
    hdlr = _payload(f, _only(mdia_children, b"hdlr", "mdia"))
    if len(hdlr) < 12:
        raise NotUnderstood("handler box cut off")
    minf = _only(mdia_children, b"minf", "mdia")
    stbl = _only(
        list(_children(f, minf.payload_offset, minf.payload_offset + minf.payload_size)), b"stbl", "minf"
    )
    tables = list(_children(f, stbl.payload_offset, stbl.payload_offset + stbl.payload_size))
    kinds = {c.type for c in tables}
    # ffmpeg calls a track without these "broken"; its report is not ours to guess.
    missing = [k.decode() for k in _SAMPLE_TABLE_BOXES if k not in kinds]
    if missing or not kinds & {b"stsz", b"stz2"} or not kinds & {b"stco", b"co64"}:
        raise NotUnderstood(f"sample table without {', '.join(missing) or 'sizes or chunk offsets'}")
    return _stream(hdlr[8:12], _payload(f, _only(tables, b"stsd", "stbl")))


def mp4_facts(f: BinaryIO, size: int) -> dict[str, Any]:
    """ffprobe's summary of an ISO-BMFF file, or NotUnderstood."""
    try:
        top = list(iter_top_level_boxes(f, size))
    except IsoBmffError as exc:
        raise NotUnderstood(f"not a clean ISO-BMFF file: {exc}") from None
    if not top or top[0].type != "ftyp":
        raise NotUnderstood("the file does not start with ftyp")
    if any(box.type in ("moof", "mfra") for box in top):
        raise NotUnderstood("a fragmented MP4")
    movies = [box for box in top if box.type == "moov"]
    if len(movies) != 1:
        raise NotUnderstood(f"{len(movies)} moov boxes")
    moov = movies[0]
    children = list(_children(f, moov.payload_offset, moov.end))
    if any(c.type in (b"mvex", b"cmov") for c in children):
        raise NotUnderstood("a fragmented or compressed movie box")
    creation, timescale, duration = _movie_header(_payload(f, _only(children, b"mvhd", "moov")))
    tracks = [c for c in children if c.type == b"trak"]
    if not tracks or len(tracks) > MAX_TRACKS:
        raise NotUnderstood(f"{len(tracks)} tracks")
    facts: dict[str, Any] = {
        "container": CONTAINER,
        "duration_ms": ffprobe_milliseconds(rescale_to_microseconds(duration, timescale)),
        "streams": [_track(f, trak) for trak in tracks],
    }
    created = _creation_time(creation)
    if created is not None:
        facts["creation_time"] = created
    return facts
