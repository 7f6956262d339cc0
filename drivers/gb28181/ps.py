"""MPEG-PS (ISO/IEC 13818-1 program stream) demuxer for GB/T 28181 media: incremental, bounded, pure.

GB/T 28181 devices send video as a program stream over RTP (Annex C.1): one PS pack per video frame, a system
header and a program stream map (PSM) before each key frame, PES packets with stream id 0xE0 (video) and 0xC0
(audio). A pack spans several RTP packets, so `PsDemuxer.feed(data)` takes the bytes of each RTP payload as
they come (any split) and returns what became complete:

* `EsFrame`: one elementary-stream frame with its stream id, codec, PTS/DTS (90 kHz) and bytes. Video with a
  NAL syntax (H.264, H.265) is cut into access units by its NAL units, so a frame is right whether the muxer
  put one frame per PES (GB devices) or split frames over 2 KiB packs (ffmpeg's DVD muxer); its PTS is the
  one of the PES in which the access unit begins (none if that PES carried none). Audio: one frame per PES.
* `StreamMap`: a PSM was read (stream id → stream type → codec: 0x1b H.264, 0x24 H.265, 0x90 G.711A,
  0x91 G.711U, 0x0f AAC, ...). Its CRC is not checked (Dahua sends bad ones: ZLMediaKit #324).
* `Resync`: bytes that were not a PS structure where one had to start (garbage, or loss), or a PES whose
  length ran past the next start code, were skipped up to the next valid pack header; frames in progress
  at that point are dropped and counted, never delivered with a hole in them. One event per run of
  garbage: a pack header followed by garbage again does not end the run (`count` says how many times sync
  was lost in it), a structure after the pack header does. The caller also calls `discontinuity()` when
  RTP reported lost packets or a renumbering, since loss of whole packs is invisible here.
* `FrameDropped`: a frame that outgrew `max_frame_bytes`.

Without a PSM (ffmpeg's muxers write none), video stream ids are probed: H.265 if the first NAL unit is an
H.265 parameter set or delimiter, else H.264; audio stays `Codec.UNKNOWN`. Both MPEG-2 and MPEG-1 pack and
PES headers are read (`ffmpeg -f mpeg` writes MPEG-1). Memory is bounded by `max_frame_bytes` of frames in
progress over all streams together (a PSM may declare 16 video streams; over the limit the other streams'
frames are dropped first, as `FrameDropped`), plus one PES (64 KiB) or one unbounded video PES
(`max_frame_bytes`).

`PsError` is raised only for a demuxer used wrongly (fed after `flush()`); the stream's own faults are
reported as events, because a recording keeps going after a bad pack.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

PACK_START = 0xBA
SYSTEM_HEADER = 0xBB
PROGRAM_STREAM_MAP = 0xBC
PRIVATE_STREAM_1 = 0xBD
PADDING_STREAM = 0xBE
PRIVATE_STREAM_2 = 0xBF
PROGRAM_END = 0xB9
START_CODE = b"\x00\x00\x01"
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_ZERO_STUFFING = 4096  # zero bytes tolerated between structures before it counts as garbage


class PsError(ValueError):
    """The demuxer was used in a way it cannot be (the stream's own faults are events, not this)."""


class Codec(StrEnum):
    H264 = "h264"
    H265 = "h265"
    MPEG4 = "mpeg4"
    SVAC_VIDEO = "svac"
    MPEG_VIDEO = "mpeg2video"
    G711A = "g711a"
    G711U = "g711u"
    AAC = "aac"
    G722_1 = "g722.1"
    G723_1 = "g723.1"
    G729 = "g729"
    SVAC_AUDIO = "svac_audio"
    MPEG_AUDIO = "mp2"
    UNKNOWN = "unknown"


# PSM stream_type → codec: ISO/IEC 13818-1 Table 2-34, GB/T 28181-2016 Annex C.1, and the types devices
# use beyond the 2016 list (H.265 0x24, AAC 0x0f, G.711 µ-law 0x91: ireader/media-server mpeg-proto.h).
STREAM_TYPES = {
    0x01: Codec.MPEG_VIDEO, 0x02: Codec.MPEG_VIDEO, 0x03: Codec.MPEG_AUDIO, 0x04: Codec.MPEG_AUDIO,
    0x0F: Codec.AAC, 0x10: Codec.MPEG4, 0x1B: Codec.H264, 0x24: Codec.H265, 0x80: Codec.SVAC_VIDEO,
    0x90: Codec.G711A, 0x91: Codec.G711U, 0x92: Codec.G722_1, 0x93: Codec.G723_1, 0x99: Codec.G729,
    0x9B: Codec.SVAC_AUDIO,
}
CODEC_STREAM_TYPES = {codec: stream_type for stream_type, codec in reversed(STREAM_TYPES.items())}
NAL_CODECS = (Codec.H264, Codec.H265)


def is_video(stream_id: int) -> bool:
    return 0xE0 <= stream_id <= 0xEF


def is_audio(stream_id: int) -> bool:
    return 0xC0 <= stream_id <= 0xDF


@dataclass(frozen=True)
class EsFrame:
    """One elementary-stream frame. `pts`/`dts` in 90 kHz units (33 bits) as the PES carried them; `key`
    for a video access unit holding an IDR (H.264) or IRAP (H.265) picture, and for every audio frame."""

    stream_id: int
    codec: Codec
    pts: int | None
    dts: int | None
    data: bytes
    key: bool


@dataclass(frozen=True)
class StreamInfo:
    stream_id: int
    stream_type: int
    codec: Codec


@dataclass(frozen=True)
class StreamMap:
    """A program stream map as read (version and the elementary streams it lists)."""

    version: int
    streams: tuple[StreamInfo, ...]


@dataclass(frozen=True)
class Resync:
    """Bytes from `offset` (in the demuxer's input) were skipped up to the pack header where reading
    resumed; `reason` says why skipping began; `dropped_frames` frames in progress were dropped with them.
    One event per run of garbage: a pack header followed by garbage again (not by a structure) does not end
    the run; `count` says how many times sync was lost in it (so 10 MB of pack headers each followed by a
    bad byte is one event, not 700 000)."""

    offset: int
    skipped_bytes: int
    reason: str
    dropped_frames: int
    count: int = 1


@dataclass(frozen=True)
class FrameDropped:
    stream_id: int
    size_bytes: int
    reason: str


PsEvent = EsFrame | StreamMap | Resync | FrameDropped


def parse_timestamp(data: bytes | bytearray, at: int) -> int:
    """A 33-bit PTS/DTS from its 5-byte PES form (marker bits not checked: devices get them wrong)."""
    return (((data[at] >> 1) & 0x07) << 30 | data[at + 1] << 22 | (data[at + 2] >> 1) << 15
            | data[at + 3] << 7 | data[at + 4] >> 1)


def encode_timestamp(prefix: int, value: int) -> bytes:
    """The 5-byte PES form of a 33-bit timestamp with its 4-bit prefix (0b0010 PTS only, 0b0011/0b0001
    PTS and DTS)."""
    value &= (1 << 33) - 1
    return bytes([
        (prefix << 4) | ((value >> 29) & 0x0E) | 1,
        (value >> 22) & 0xFF,
        ((value >> 14) & 0xFE) | 1,
        (value >> 7) & 0xFF,
        ((value << 1) & 0xFE) | 1,
    ])


@dataclass(frozen=True)
class PesHeader:
    """What a PES header says: where its payload starts (relative to the packet) and its timestamps."""

    payload_offset: int
    pts: int | None
    dts: int | None


def parse_pes_header(packet: bytes | bytearray, start: int, end: int) -> PesHeader | None:
    """The header of the PES at `packet[start:end]` (MPEG-2 or MPEG-1 form); None if it is malformed."""
    at = start + 6
    if at >= end:
        return PesHeader(end - start, None, None)
    if packet[at] & 0xC0 == 0x80:  # MPEG-2: '10' flags, PTS_DTS_flags, header_data_length
        if at + 3 > end:
            return None
        flags, header_length = packet[at + 1] >> 6, packet[at + 2]
        payload = at + 3 + header_length
        if payload > end:
            return None
        pts = dts = None
        if flags & 0x2:
            if header_length < 5:
                return None
            pts = parse_timestamp(packet, at + 3)
            if flags == 0x3:
                if header_length < 10:
                    return None
                dts = parse_timestamp(packet, at + 8)
        return PesHeader(payload - start, pts, dts)
    # MPEG-1: up to 16 stuffing bytes 0xFF, an optional STD buffer field, then the timestamps.
    for _ in range(16):
        if at < end and packet[at] == 0xFF:
            at += 1
    if at < end and packet[at] & 0xC0 == 0x40:
        at += 2
    if at >= end:
        return None
    kind = packet[at] & 0xF0
    if kind == 0x20 and at + 5 <= end:
        return PesHeader(at + 5 - start, parse_timestamp(packet, at), None)
    if kind == 0x30 and at + 10 <= end:
        return PesHeader(at + 10 - start, parse_timestamp(packet, at), parse_timestamp(packet, at + 5))
    if packet[at] == 0x0F:
        return PesHeader(at + 1 - start, None, None)
    return None


def parse_psm(body: bytes | bytearray) -> StreamMap | None:
    """A program stream map from the bytes after its 6-byte start (None if its lengths do not add up)."""
    if len(body) < 6:
        return None
    version = body[0] & 0x1F
    info_length = (body[2] << 8) | body[3]
    at = 4 + info_length
    if at + 2 > len(body):
        return None
    map_length = (body[at] << 8) | body[at + 1]
    at += 2
    end = at + map_length
    if end > len(body):
        return None
    streams = []
    while at + 4 <= end:
        stream_type, stream_id = body[at], body[at + 1]
        at += 4 + ((body[at + 2] << 8) | body[at + 3])
        if at > end:
            return None
        streams.append(StreamInfo(stream_id, stream_type, STREAM_TYPES.get(stream_type, Codec.UNKNOWN)))
    return StreamMap(version, tuple(streams))


def probe_video_codec(payload: bytes | bytearray) -> Codec:
    """H.265 if the first NAL unit is an H.265 VPS, SPS, PPS, AUD or SEI, else H.264 (GB's default)."""
    at = payload.find(START_CODE)
    if at < 0 or at + 5 > len(payload):
        return Codec.H264
    first, second = payload[at + 3], payload[at + 4]
    if (first >> 1) & 0x3F in (32, 33, 34, 35, 39) and second == 0x01:
        return Codec.H265
    return Codec.H264


# -- elementary streams ------------------------------------------------------------------------------------


class _EsFramer:
    """Builds one stream's frames from its PES payloads. Subclasses decide where frames begin."""

    def __init__(self, stream_id: int, codec: Codec, max_frame_bytes: int) -> None:
        self.stream_id = stream_id
        self.codec = codec
        self.max_frame_bytes = max_frame_bytes

    @property
    def held_bytes(self) -> int:
        """Bytes of the frame in progress."""
        raise NotImplementedError

    def push(self, payload: bytes | bytearray, pts: int | None, dts: int | None) -> list[PsEvent]:
        raise NotImplementedError

    def flush(self) -> list[PsEvent]:
        raise NotImplementedError

    def reset(self) -> int:
        """Drop the frame in progress (its bytes are not whole); the number of frames dropped."""
        raise NotImplementedError


class _PesFramer(_EsFramer):
    """Frames that follow PES packets: audio (one frame per PES) and video without a NAL syntax (a frame
    begins at each PES that carries a PTS)."""

    def __init__(self, stream_id: int, codec: Codec, max_frame_bytes: int, *, per_pes: bool) -> None:
        super().__init__(stream_id, codec, max_frame_bytes)
        self._per_pes = per_pes
        self._data = bytearray()
        self._pts: int | None = None
        self._dts: int | None = None

    @property
    def held_bytes(self) -> int:
        return len(self._data)

    def push(self, payload: bytes | bytearray, pts: int | None, dts: int | None) -> list[PsEvent]:
        events: list[PsEvent] = []
        if self._data and pts is not None:
            events += self.flush()
        if not self._data:
            self._pts, self._dts = pts, dts
        self._data += payload
        if len(self._data) > self.max_frame_bytes:
            events.append(FrameDropped(self.stream_id, len(self._data),
                                       f"frame over {self.max_frame_bytes} bytes"))
            self._data.clear()
        elif self._per_pes:
            events += self.flush()
        return events

    def flush(self) -> list[PsEvent]:
        if not self._data:
            return []
        frame = EsFrame(self.stream_id, self.codec, self._pts, self._dts, bytes(self._data),
                        key=not is_video(self.stream_id))
        self._data.clear()
        return [frame]

    def reset(self) -> int:
        dropped = 1 if self._data else 0
        self._data.clear()
        return dropped


class _NalFramer(_EsFramer):
    """Cuts H.264 / H.265 Annex B byte streams into access units (ISO/IEC 14496-10 §7.4.1.2.3, H.265
    §7.4.2.4.4): a new access unit begins at an access unit delimiter, at a parameter set or SEI that follows
    a picture's slices, or at the first slice of a new picture."""

    def __init__(self, stream_id: int, codec: Codec, max_frame_bytes: int) -> None:
        super().__init__(stream_id, codec, max_frame_bytes)
        self._h265 = codec is Codec.H265
        self._buffer = bytearray()
        self._base = 0  # stream offset of _buffer[0]
        self._scan = 0  # where the next start code search begins in _buffer
        self._aligned = False  # _buffer starts at an access unit (not mid-way after loss or at a join)
        self._has_picture = False
        self._key = False
        self._unit_start = 0  # stream offset of the current access unit's first start code
        # (start, end, pts, dts) of the PES that carried a PTS and bytes, oldest first; only those that can
        # still give an access unit its PTS are kept (see _forget_timestamps), so at most a few.
        self._timestamps: deque[tuple[int, int, int, int | None]] = deque()

    @property
    def held_bytes(self) -> int:
        return len(self._buffer)

    def push(self, payload: bytes | bytearray, pts: int | None, dts: int | None) -> list[PsEvent]:
        if pts is not None and payload:  # a PTS applies to an access unit that begins in its PES's bytes
            start = self._base + len(self._buffer)
            self._timestamps.append((start, start + len(payload), pts, dts))
        self._buffer += payload
        events = self._cut()
        self._forget_timestamps()
        if len(self._buffer) > self.max_frame_bytes:
            events.append(FrameDropped(self.stream_id, len(self._buffer),
                                       f"access unit over {self.max_frame_bytes} bytes"))
            self._drop()
        return events

    def flush(self) -> list[PsEvent]:
        frame = self._emit(len(self._buffer)) if self._aligned and self._has_picture else None
        self._drop()
        return [frame] if frame is not None else []

    def reset(self) -> int:
        dropped = 1 if self._aligned and self._buffer else 0
        self._drop()
        return dropped

    def _drop(self) -> None:
        self._base += len(self._buffer)
        self._buffer.clear()
        self._scan = 0
        self._aligned = self._has_picture = self._key = False
        self._timestamps.clear()

    def _forget_timestamps(self) -> None:
        """Keep only the PES timestamps that can still apply: the one of the PES in which the current access
        unit begins, and those of PES that end beyond what was searched for start codes (a later access
        unit begins there or later). Without this, PES with a PTS but no access unit cut (no slices, or
        one that never ends) would grow the list with the stream."""
        timestamps = self._timestamps
        horizon = self._base + self._scan  # no later access unit begins before this
        current = None
        if self._aligned:
            while timestamps and timestamps[0][1] <= self._unit_start:
                timestamps.popleft()
            if timestamps and timestamps[0][0] <= self._unit_start:
                current = timestamps.popleft()
        while timestamps and timestamps[0][1] <= horizon:
            timestamps.popleft()
        if current is not None:
            timestamps.appendleft(current)

    def _classify(self, header: int) -> tuple[bool, bool, bool] | None:
        """(may begin an access unit, is a slice of a picture, is a key picture's slice) for the NAL unit
        whose header starts at `header`; None until enough bytes are there."""
        buffer = self._buffer
        need = 3 if self._h265 else 2
        if len(buffer) < header + need:
            return None
        if self._h265:
            nal_type = (buffer[header] >> 1) & 0x3F
            if nal_type < 32:  # VCL: first_slice_segment_in_pic_flag
                first = bool(buffer[header + 2] & 0x80)
                return (first, True, 16 <= nal_type <= 21)
            starts = nal_type == 35 or (nal_type in (32, 33, 34, 39) or 41 <= nal_type <= 44
                                        or 48 <= nal_type <= 55)
            return (starts, False, False)
        nal_type = buffer[header] & 0x1F
        if nal_type in (1, 5):  # a slice: first_mb_in_slice == 0 is ue(v) '1'
            return (bool(buffer[header + 1] & 0x80), True, nal_type == 5)
        return (nal_type in (6, 7, 8, 9, 14, 15, 16, 17, 18), False, False)

    def _cut(self) -> list[PsEvent]:
        events: list[PsEvent] = []
        buffer = self._buffer
        while True:
            at = buffer.find(START_CODE, self._scan)
            if at < 0:
                self._scan = max(self._scan, len(buffer) - 2)
                return events
            kind = self._classify(at + 3)
            if kind is None:
                self._scan = at
                return events
            begins, picture, key = kind
            if begins and (self._has_picture or not self._aligned):
                # A 4-byte start code's leading zero belongs to the access unit it starts.
                cut = at - 1 if at > 0 and buffer[at - 1] == 0 else at
                if self._aligned:
                    events.append(self._emit(cut))
                else:  # join the stream here: what came before is the tail of an access unit not seen whole
                    del buffer[:cut]
                    self._base += cut
                    self._aligned = True
                at -= cut
                self._unit_start = self._base + at
            if self._aligned and picture:
                self._has_picture = True
                self._key = self._key or key
            self._scan = at + 3

    def _emit(self, cut: int) -> EsFrame:
        """The access unit `_buffer[:cut]`, with the PTS of the PES in which its first start code begins."""
        timestamps = self._timestamps
        while timestamps and timestamps[0][1] <= self._unit_start:
            timestamps.popleft()
        pts = dts = None
        if timestamps and timestamps[0][0] <= self._unit_start:
            _, _, pts, dts = timestamps.popleft()
        frame = EsFrame(self.stream_id, self.codec, pts, dts, bytes(self._buffer[:cut]), key=self._key)
        del self._buffer[:cut]
        self._base += cut
        self._has_picture = self._key = False
        return frame


# -- the program stream ------------------------------------------------------------------------------------


def _pack_header_length(buffer: bytes | bytearray, at: int) -> int | None:
    """The length of the pack header at `at` (MPEG-2 with its stuffing, or MPEG-1); 0 if more bytes are
    needed; None if the marker bits say it is not a pack header."""
    if len(buffer) < at + 5:
        return 0
    marker = buffer[at + 4]
    if marker & 0xC4 == 0x44:  # MPEG-2: '01' SCR ... marker bit
        if len(buffer) < at + 14:
            return 0
        return 14 + (buffer[at + 13] & 0x07)
    if marker & 0xF1 == 0x21:  # MPEG-1: '0010' SCR ... marker bit
        return 12
    return None


def pack_header_length(buffer: bytes | bytearray, at: int) -> int | None:
    """The length of the pack header at `at`: 0 if more bytes are needed, None if it is not one."""
    return _pack_header_length(buffer, at)


@dataclass
class PsStats:
    bytes_in: int = 0
    packs: int = 0
    pes_packets: int = 0
    frames: int = 0
    resyncs: int = 0
    skipped_bytes: int = 0
    dropped_frames: int = 0


class PsDemuxer:
    """Incremental MPEG-PS demuxer (see the module docstring). Not thread-safe; one per media stream."""

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1024:
            raise ValueError("max_frame_bytes must be at least 1024")
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._offset = 0  # input offset of _buffer[0]
        self._synced = False
        self._skip_from: int | None = None  # input offset where skipping began
        self._skip_reason = "the stream did not start with a pack header"
        self._pending_dropped = 0
        self._sync_losses = 0  # times sync was lost in the current run of skipped bytes
        # Input offset of the pack header where reading resumed after skipping, until a structure after it
        # confirms it (a pack header followed by garbage again continues the same run).
        self._resync_at: int | None = None
        self._zeros = 0
        # Where the search for the end of an unbounded video PES at the buffer's start resumes: the bytes
        # before it were searched already (0 once the buffer's start moves). Without it every feed would
        # search the whole held PES again: quadratic work in its length.
        self._unbounded_scan = 0
        self._codecs: dict[int, StreamInfo] = {}
        self._framers: dict[int, _EsFramer] = {}
        self._finished = False
        self.stats = PsStats()
        self.stream_map: StreamMap | None = None

    @property
    def buffered_bytes(self) -> int:
        """Input bytes held until they complete a structure (at most one PES and its lookahead, or one
        unbounded video PES up to `max_frame_bytes`)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[PsEvent]:
        if self._finished:
            raise PsError("fed after flush()")
        self.stats.bytes_in += len(data)
        self._buffer += data
        events: list[PsEvent] = []
        self._run(events, final=False)
        return events

    def discontinuity(self, reason: str) -> list[PsEvent]:
        """The transport lost bytes here (an RTP gap): frames in progress are dropped and the next bytes
        are read from the next pack header on."""
        events: list[PsEvent] = []
        # What came before the gap is good up to the last whole structure: take it without waiting to see
        # what follows (what follows is the gap), then drop what is in progress.
        self._run(events, final=True)
        was_synced = self._synced
        self._lose_sync(reason, self._offset, events)
        if not was_synced:
            self._pending_dropped += sum(framer.reset() for framer in self._framers.values())
        self._run(events, final=False)
        return events

    def flush(self) -> list[PsEvent]:
        """The stream ended: the last PES is taken without seeing what follows it, the last frames are
        delivered, and bytes that never became a structure are reported."""
        if self._finished:
            return []
        events: list[PsEvent] = []
        self._run(events, final=True)
        if self._buffer:
            if self._synced:
                self._lose_sync("the stream ended inside a structure", self._offset, events)
            self._skip(len(self._buffer))
        self._report_skip(events)
        for framer in self._framers.values():
            last = framer.flush()
            self.stats.frames += len(last)
            events += last
        self._finished = True
        return events

    # -- internals ------------------------------------------------------------------------------------------

    def _skip(self, count: int) -> None:
        del self._buffer[:count]
        self._offset += count
        self._unbounded_scan = 0
        self.stats.skipped_bytes += count

    def _consume(self, count: int) -> None:
        del self._buffer[:count]
        self._offset += count
        self._unbounded_scan = 0

    def _lose_sync(self, reason: str, offset: int, events: list[PsEvent]) -> None:
        if not self._synced:
            return
        self._synced = False
        if self._resync_at is not None:  # nothing followed the pack header where it resumed: the same run
            self._resync_at = None
        else:
            self._skip_from = offset
            self._skip_reason = reason
        self._sync_losses += 1
        self._pending_dropped += sum(framer.reset() for framer in self._framers.values())

    def _confirm_resync(self, events: list[PsEvent], at: int | None = None) -> None:
        """A structure was read after the pack header where reading resumed: the run of garbage ended."""
        if self._resync_at is not None:
            self._report_skip(events, len(events) if at is None else at)

    def _report_skip(self, events: list[PsEvent], at: int | None = None) -> None:
        """Report the run of skipped bytes (one `Resync`, inserted at `events[at]`, else appended)."""
        if self._skip_from is None:
            return
        end = self._resync_at if self._resync_at is not None else self._offset
        skipped = end - self._skip_from
        if skipped or self._pending_dropped:
            resync = Resync(self._skip_from, skipped, self._skip_reason, self._pending_dropped,
                            max(1, self._sync_losses))
            events.insert(len(events) if at is None else at, resync)
            self.stats.resyncs += 1
            self.stats.dropped_frames += self._pending_dropped
        self._skip_from = self._resync_at = None
        self._pending_dropped = self._sync_losses = 0

    def _run(self, events: list[PsEvent], *, final: bool) -> None:
        before = len(events)
        while True:
            if not self._synced and not self._find_pack():
                break
            if not self._step(events, final=final):
                break
        self.stats.frames += sum(isinstance(e, EsFrame) for e in events[before:])

    def _find_pack(self) -> bool:
        """Skip to the next valid pack header (True when found; else keep a tail that may begin one)."""
        if self._skip_from is None:
            self._skip_from = self._offset
        buffer = self._buffer
        at = 0
        while True:
            at = buffer.find(b"\x00\x00\x01\xba", at)
            if at < 0:
                self._skip(max(0, len(buffer) - 3))
                return False
            length = _pack_header_length(buffer, at)
            if length is None:
                at += 1
                continue
            self._skip(at)
            if length == 0:
                return False
            self._synced = True
            return True

    def _step(self, events: list[PsEvent], *, final: bool) -> bool:
        """Read one structure at the start of the buffer; False when more bytes are needed."""
        buffer = self._buffer
        if len(buffer) < 4:
            return False
        if buffer[:3] != START_CODE and buffer[0] == 0 and buffer[1] == 0 and self._zeros < MAX_ZERO_STUFFING:
            self._zeros += 1  # zero bytes before a start code: stuffing some muxers leave between structures
            self._consume(1)
            return True
        if buffer[:3] != START_CODE:
            self._lose_sync(f"expected a start code at input offset {self._offset}", self._offset, events)
            return True
        self._zeros = 0
        code = buffer[3]
        if code == PACK_START:
            length = _pack_header_length(buffer, 0)
            if length is None:
                self._lose_sync(f"malformed pack header at input offset {self._offset}", self._offset, events)
                return True
            if length == 0 or len(buffer) < length:
                return False
            if self._skip_from is not None and self._resync_at is None:
                self._resync_at = self._offset  # reading resumes here if a structure follows
            else:
                self._confirm_resync(events)
            self.stats.packs += 1
            self._consume(length)
            return True
        if code == PROGRAM_END:
            self._confirm_resync(events)
            self._consume(4)
            return True
        if code < PROGRAM_END:
            self._lose_sync(f"0x{code:02x} at input offset {self._offset} is not a program stream start code",
                            self._offset, events)
            return True
        if len(buffer) < 6:
            return False
        length = (buffer[4] << 8) | buffer[5]
        if length == 0 and is_video(code):
            return self._unbounded_pes(code, events, final=final)
        end = 6 + length
        if len(buffer) < end + (0 if final else 3):
            return False
        follower = buffer[end:end + 3]
        if len(follower) == 3 and follower not in (START_CODE, b"\x00\x00\x00"):
            self._lose_sync(f"PES 0x{code:02x} of {length} bytes at input offset {self._offset} does not end "
                            f"at a start code (bytes lost or inserted)", self._offset, events)
            return True
        self._read_structure(code, end, events)
        self._consume(end)
        return True

    def _unbounded_pes(self, code: int, events: list[PsEvent], *, final: bool) -> bool:
        """A video PES of length 0 (unbounded): it runs to the next program stream start code. The search
        resumes where the previous feed left it, so a PES that arrives in many reads is searched once."""
        buffer = self._buffer
        at = max(6, self._unbounded_scan)
        while True:
            at = buffer.find(START_CODE, at)
            if at < 0 or at + 3 >= len(buffer):
                # Next time, search again only from here: a start code split across reads begins at most
                # two bytes before the end, or is the one found without its fourth byte.
                self._unbounded_scan = at if at >= 0 else max(6, len(buffer) - 2)
                if final:
                    self._read_structure(code, len(buffer), events)
                    self._consume(len(buffer))
                    return True
                if len(buffer) > self._max_frame_bytes:
                    self._lose_sync(f"unbounded PES at input offset {self._offset} over "
                                    f"{self._max_frame_bytes} bytes", self._offset, events)
                    return True
                return False
            if buffer[at + 3] >= PROGRAM_END:
                self._read_structure(code, at, events)
                self._consume(at)
                return True
            at += 3

    def _read_structure(self, code: int, end: int, events: list[PsEvent]) -> None:
        """Read the structure `_buffer[:end]`; if it was whole, it ends a run of skipped bytes (reported
        before the frames it completed)."""
        before = len(events)
        self._structure(code, end, events)
        if self._synced:
            self._confirm_resync(events, before)

    def _structure(self, code: int, end: int, events: list[PsEvent]) -> None:
        buffer = self._buffer
        if code == PROGRAM_STREAM_MAP:
            stream_map = parse_psm(buffer[6:end])
            if stream_map is not None:
                self._apply_map(stream_map, events)
            return
        if not (is_video(code) or is_audio(code)):
            return  # system header, padding, private streams: nothing for the frames
        header = parse_pes_header(buffer, 0, end)
        self.stats.pes_packets += 1
        if header is None:
            self._lose_sync(f"malformed PES header 0x{code:02x} at input offset {self._offset}",
                            self._offset, events)
            return
        payload = buffer[header.payload_offset:end]
        framer = self._framers.get(code)
        if framer is None:
            framer = self._framers[code] = self._new_framer(code, payload)
        events += framer.push(payload, header.pts, header.dts)
        self._bound_frames_in_progress(framer, events)

    def _bound_frames_in_progress(self, pushed: _EsFramer, events: list[PsEvent]) -> None:
        """Hold at most `max_frame_bytes` of frames in progress over all streams together, not per stream:
        a PSM may declare 16 video streams, a device sends one. Over the limit, the other streams' frames
        in progress are dropped first (a stray PES on an unused stream id must not starve the real one),
        then the one just pushed to."""
        held = sum(framer.held_bytes for framer in self._framers.values())
        if held <= self._max_frame_bytes:
            return
        others = sorted((f for f in self._framers.values() if f is not pushed), key=lambda f: -f.held_bytes)
        for framer in (*others, pushed):
            size = framer.held_bytes
            if not size:
                continue
            framer.reset()
            held -= size
            events.append(FrameDropped(framer.stream_id, size, f"frames in progress on several streams over "
                                                               f"{self._max_frame_bytes} bytes together"))
            if held <= self._max_frame_bytes:
                return

    def _new_framer(self, stream_id: int, payload: bytes | bytearray) -> _EsFramer:
        info = self._codecs.get(stream_id)
        codec = info.codec if info is not None else (
            probe_video_codec(payload) if is_video(stream_id) else Codec.UNKNOWN)
        if codec in NAL_CODECS:
            return _NalFramer(stream_id, codec, self._max_frame_bytes)
        return _PesFramer(stream_id, codec, self._max_frame_bytes, per_pes=not is_video(stream_id))

    def _apply_map(self, stream_map: StreamMap, events: list[PsEvent]) -> None:
        if stream_map != self.stream_map:
            events.append(stream_map)
        self.stream_map = stream_map
        for info in stream_map.streams:
            self._codecs[info.stream_id] = info
            framer = self._framers.get(info.stream_id)
            if framer is not None and framer.codec is not info.codec:
                events += framer.flush()
                del self._framers[info.stream_id]


# -- the GB/T 28181 layout, written (for the device simulator and tests) -----------------------------------


def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 (polynomial 0x04C11DB7, not reflected, initial 0xFFFFFFFF, no final xor): the PSM's."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def pack_header(scr: int, *, mux_rate: int = 6106, stuffing: int = 0) -> bytes:
    """An MPEG-2 pack header: SCR (90 kHz base, extension 0), program_mux_rate in units of 50 bytes/s."""
    if not 0 <= stuffing <= 7:
        raise PsError(f"{stuffing} stuffing bytes, at most 7")
    scr &= (1 << 33) - 1
    return START_CODE + bytes([
        PACK_START,
        0x44 | ((scr >> 27) & 0x38) | ((scr >> 28) & 0x03),
        (scr >> 20) & 0xFF,
        ((scr >> 12) & 0xF8) | 0x04 | ((scr >> 13) & 0x03),
        (scr >> 5) & 0xFF,
        ((scr << 3) & 0xF8) | 0x04,
        0x01,
        (mux_rate >> 14) & 0xFF,
        (mux_rate >> 6) & 0xFF,
        ((mux_rate << 2) & 0xFC) | 0x03,
        0xF8 | stuffing,
    ]) + b"\xff" * stuffing


def system_header(stream_ids: tuple[int, ...], *, rate_bound: int = 6106) -> bytes:
    """A system header listing `stream_ids` (buffer bounds as GB devices write them)."""
    body = bytearray([
        0x80 | ((rate_bound >> 15) & 0x7F), (rate_bound >> 7) & 0xFF, ((rate_bound << 1) & 0xFE) | 1,
        (sum(map(is_audio, stream_ids)) << 2) & 0xFC,  # audio_bound, fixed 0, CSPS 0
        0xE0 | sum(map(is_video, stream_ids)),  # audio lock, video lock, marker, video_bound
        0x7F,
    ])
    for stream_id in stream_ids:
        video = is_video(stream_id)  # P-STD buffer bound: video 128 KiB (scale 1024), audio 4 KiB (scale 128)
        body += bytes([stream_id, 0xE0 if video else 0xC0, 0x80 if video else 0x20])
    return START_CODE + bytes([SYSTEM_HEADER]) + len(body).to_bytes(2, "big") + bytes(body)


def program_stream_map(streams: tuple[tuple[int, int], ...], *, version: int = 0) -> bytes:
    """A PSM for (stream_id, stream_type) pairs, with its CRC."""
    entries = b"".join(bytes([stream_type, stream_id, 0, 0]) for stream_id, stream_type in streams)
    body = bytes([0xE0 | (version & 0x1F), 0xFF, 0, 0]) + len(entries).to_bytes(2, "big") + entries
    length = len(body) + 4
    head = START_CODE + bytes([PROGRAM_STREAM_MAP]) + length.to_bytes(2, "big") + body
    return head + crc32_mpeg2(head).to_bytes(4, "big")


MAX_PES_PAYLOAD = 0xFFFF - 3 - 10  # what fits one PES after the MPEG-2 header with PTS and DTS


def pes_packets(stream_id: int, payload: bytes, *, pts: int | None, dts: int | None = None) -> bytes:
    """`payload` as MPEG-2 PES packets of at most 64 KiB: the first carries the timestamps."""
    out = bytearray()
    first = True
    at = 0
    while first or at < len(payload):
        if first and pts is not None:
            flags, fields = (0xC0, encode_timestamp(3, pts) + encode_timestamp(1, dts)) if dts is not None \
                else (0x80, encode_timestamp(2, pts))
        else:
            flags, fields = 0x00, b""
        chunk = payload[at:at + MAX_PES_PAYLOAD]
        at += len(chunk)
        length = 3 + len(fields) + len(chunk)
        out += START_CODE + bytes([stream_id]) + length.to_bytes(2, "big")
        out += bytes([0x80, flags, len(fields)]) + fields + chunk
        first = False
    return bytes(out)


class PsMuxer:
    """Writes GB/T 28181 Annex C.1 program streams: one pack per video frame, system header and PSM in each
    key frame's pack, video PES 0xE0, audio PES 0xC0 in packs of their own. What the device simulator
    sends; ffmpeg reads it back (tests/gb28181/test_ps.py)."""

    VIDEO_ID = 0xE0
    AUDIO_ID = 0xC0

    def __init__(self, video: Codec = Codec.H264, audio: Codec | None = None) -> None:
        if video not in CODEC_STREAM_TYPES or (audio is not None and audio not in CODEC_STREAM_TYPES):
            raise PsError("no PSM stream type for that codec")
        self._streams: tuple[tuple[int, int], ...] = ((self.VIDEO_ID, CODEC_STREAM_TYPES[video]),)
        if audio is not None:
            self._streams += ((self.AUDIO_ID, CODEC_STREAM_TYPES[audio]),)

    def video_frame(self, data: bytes, pts: int, *, key: bool, dts: int | None = None) -> bytes:
        head = pack_header(dts if dts is not None else pts)
        if key:
            head += system_header(tuple(s for s, _ in self._streams)) + program_stream_map(self._streams)
        return head + pes_packets(self.VIDEO_ID, data, pts=pts, dts=dts)

    def audio_frame(self, data: bytes, pts: int) -> bytes:
        if len(self._streams) < 2:
            raise PsError("this muxer has no audio stream")
        return pack_header(pts) + pes_packets(self.AUDIO_ID, data, pts=pts)
