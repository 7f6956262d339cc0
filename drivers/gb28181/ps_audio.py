"""A GB/T 28181 program stream split into its video (still a program stream) and its audio frames: pure,
incremental, bounded.

ffmpeg 5.1's PS demuxer takes a GB camera's G.711 audio (PES 0xC0, PSM stream type 0x90/0x91) for MP2 with
0 channels, and its stream (a start time of its own, probing that waits for it) spoils the input even when
it is not mapped (research notes section 7). `PsAudioSplitter.feed(data)` therefore passes the program
stream on byte for byte except that every audio PES becomes a padding packet of the same length (stream id
0xBE: every demuxer skips it; the pack structure, the SCRs and the video are untouched), and hands out each
audio PES it replaced as an `AudioPes` (its codec from the last PSM, its PTS, its payload, whether its stream
is the one that PSM lists first), with the PTS of each video PES (`SplitOutput.video_pts`) to align them. A
new or changed PSM is `SplitOutput.stream_map`; the PES after it are read by it (a camera may renumber its
sound or change its codec at a key frame).

Bytes that are not a PS structure where one must begin (loss, garbage) are passed on as they are, up to the
next pack header (ffmpeg's own resynchronisation takes them: `+discardcorrupt`); an audio PES whose length
does not end at a start code (bytes lost or inserted) is passed on unchanged and counted in
`damaged_audio`, its sound lost (the caller's timeline sees the hole in the PTS). Memory: one audio PES or
PSM (64 KiB) and a few header bytes; a video PES's body is passed on as it comes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from drivers.gb28181.ps import (
    PACK_START,
    PADDING_STREAM,
    PROGRAM_END,
    PROGRAM_STREAM_MAP,
    START_CODE,
    Codec,
    StreamMap,
    is_audio,
    is_video,
    pack_header_length,
    parse_pes_header,
    parse_psm,
)

_ZEROS = re.compile(b"\x00+")
# Bytes of a video PES enough to read its header (MPEG-2: 9 + up to 255 header bytes is the most; GB
# devices write at most PTS and DTS: 19; an MPEG-1 header with stuffing: 34).
VIDEO_HEADER_BYTES = 64


@dataclass(frozen=True)
class AudioPes:
    """One audio PES taken out of the program stream: `codec` as the last PSM said (UNKNOWN without one),
    `pts` in 90 kHz units as it carried it (33 bits), `data` its payload; `primary`: its stream is the
    first audio stream the last PSM lists (the camera's sound; a new PSM may renumber it)."""

    stream_id: int
    codec: Codec
    pts: int | None
    data: bytes
    primary: bool = False


@dataclass
class SplitOutput:
    """What one `feed` gave: the program stream to pass on (audio PES made padding); in stream order, the
    audio frames taken out and the PTS of each video PES (an int); the PSM if a new one was read."""

    video: bytes = b""
    media: list[AudioPes | int] = field(default_factory=list)
    stream_map: StreamMap | None = None

    @property
    def audio(self) -> list[AudioPes]:
        return [item for item in self.media if isinstance(item, AudioPes)]

    @property
    def video_pts(self) -> list[int]:
        return [item for item in self.media if isinstance(item, int)]


class PsAudioSplitter:
    """See the module docstring. One per stream; not thread-safe."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pass_left = 0  # bytes of the current structure still to pass on as they come
        self._unbounded = False  # inside a video PES of length 0: it ends at the next start code >= 0xB9
        self._synced = True  # a consumer of the live layer begins at a pack header
        self._codecs: dict[int, Codec] = {}
        self._primary_audio: int | None = None  # the first audio stream id the last PSM lists
        self.stream_map: StreamMap | None = None
        self.audio_pes = 0
        self.damaged_audio = 0
        self.resyncs = 0
        self.bytes_in = 0

    def audio_codec(self) -> Codec | None:
        """The codec of the first audio stream the last PSM lists (None: no PSM, or no audio in it)."""
        if self.stream_map is None:
            return None
        return next((s.codec for s in self.stream_map.streams if is_audio(s.stream_id)), None)

    def audio_stream_id(self) -> int | None:
        """The stream id of the first audio stream the last PSM lists (None: no PSM, or no audio in it)."""
        if self.stream_map is None:
            return None
        return next((s.stream_id for s in self.stream_map.streams if is_audio(s.stream_id)), None)

    def feed(self, data: bytes) -> SplitOutput:
        self.bytes_in += len(data)
        self._buffer += data
        out = SplitOutput()
        passed = bytearray()
        self._run(passed, out, final=False)
        out.video = bytes(passed)
        return out

    def flush(self) -> SplitOutput:
        """The stream ended: whatever is held is passed on as it is (an audio PES cut short is not whole)."""
        out = SplitOutput()
        passed = bytearray()
        self._run(passed, out, final=True)
        passed += self._buffer
        self._buffer.clear()
        out.video = bytes(passed)
        return out

    # -- the walk ----------------------------------------------------------------------------------------

    def _run(self, passed: bytearray, out: SplitOutput, *, final: bool) -> None:
        buffer = self._buffer
        while buffer:
            if self._pass_left:
                count = min(self._pass_left, len(buffer))
                passed += buffer[:count]
                del buffer[:count]
                self._pass_left -= count
                continue
            if self._unbounded:
                if not self._unbounded_body(passed):
                    return
                continue
            if not self._synced:
                if not self._resync(passed):
                    return
                continue
            if not self._structure(passed, out, final=final):
                return

    def _unbounded_body(self, passed: bytearray) -> bool:
        """Pass on the body of a video PES of length 0 up to the next program stream start code."""
        buffer = self._buffer
        at = 0
        while True:
            at = buffer.find(START_CODE, at)
            if at < 0 or at + 3 >= len(buffer):
                keep = len(buffer) - at if at >= 0 else min(2, len(buffer))
                passed += buffer[:len(buffer) - keep]
                del buffer[:len(buffer) - keep]
                return False
            if buffer[at + 3] >= PROGRAM_END:
                passed += buffer[:at]
                del buffer[:at]
                self._unbounded = False
                return True
            at += 3

    def _resync(self, passed: bytearray) -> bool:
        """Pass on bytes up to the next valid pack header (True when found)."""
        buffer = self._buffer
        at = 0
        while True:
            at = buffer.find(START_CODE + bytes([PACK_START]), at)
            if at < 0:
                keep = min(3, len(buffer))
                passed += buffer[:len(buffer) - keep]
                del buffer[:len(buffer) - keep]
                return False
            length = pack_header_length(buffer, at)
            if length is None:
                at += 1
                continue
            passed += buffer[:at]
            del buffer[:at]
            if length == 0:
                return False
            self._synced = True
            return True

    def _lose_sync(self) -> None:
        self._synced = False
        self.resyncs += 1

    def _structure(self, passed: bytearray, out: SplitOutput, *, final: bool) -> bool:
        """Take one structure at the buffer's start (False: more bytes are needed)."""
        buffer = self._buffer
        if len(buffer) < 4:
            return False
        if buffer[:3] != START_CODE:
            if buffer[0] == 0:  # stuffing zeros between structures: passed on, a run at a time
                zeros = _ZEROS.match(buffer)
                assert zeros is not None
                count = zeros.end()
                if count == len(buffer) or buffer[count] == 1:
                    count -= 2  # its last two may begin a start code (00 00 01)
                if count <= 0:
                    count = 1  # 00 01 ..., or 00 00 at the end of what came: as before, one at a time
                passed += buffer[:count]
                del buffer[:count]
                return True
            self._lose_sync()
            return True
        code = buffer[3]
        if code == PACK_START:
            length = pack_header_length(buffer, 0)
            if length is None:
                self._lose_sync()
                return True
            if length == 0:
                return False
            self._pass_left = length
            return True
        if code == PROGRAM_END:
            self._pass_left = 4
            return True
        if code < PROGRAM_END:
            self._lose_sync()
            return True
        if len(buffer) < 6:
            return False
        length = (buffer[4] << 8) | buffer[5]
        end = 6 + length
        if is_video(code):
            head = min(end, VIDEO_HEADER_BYTES) if length else VIDEO_HEADER_BYTES
            if len(buffer) < head and not final:
                return False
            header = parse_pes_header(buffer, 0, min(len(buffer), end if length else len(buffer)))
            if header is not None and header.pts is not None:
                out.media.append(header.pts)
            if length:
                self._pass_left = end
            else:
                passed += buffer[:6]
                del buffer[:6]
                self._unbounded = True
            return True
        if is_audio(code) or code == PROGRAM_STREAM_MAP:
            if len(buffer) < end + 3 and not final:
                return False  # whole, and what follows it, which must begin a structure
            follower = bytes(buffer[end:end + 3])
            if len(follower) == 3 and follower not in (START_CODE, b"\x00\x00\x00"):
                # Its length does not end where a structure begins: bytes were lost or inserted.
                if is_audio(code):
                    self.damaged_audio += 1
                self._lose_sync()
                passed += buffer[:4]
                del buffer[:4]
                return True
            if len(buffer) < end:  # final, cut short: passed on as it is
                return self._pass_rest(passed)
            if code == PROGRAM_STREAM_MAP:
                self._map(bytes(buffer[6:end]), out)
                self._pass_left = end
                return True
            self._audio(code, end, passed, out)
            return True
        self._pass_left = end  # system header, padding, private streams
        return True

    def _pass_rest(self, passed: bytearray) -> bool:
        passed += self._buffer
        self._buffer.clear()
        return False

    def _map(self, body: bytes, out: SplitOutput) -> None:
        stream_map = parse_psm(body)
        if stream_map is None:
            return
        if stream_map != self.stream_map:
            out.stream_map = stream_map
        self.stream_map = stream_map
        self._codecs = {s.stream_id: s.codec for s in stream_map.streams}
        self._primary_audio = self.audio_stream_id()

    def _audio(self, code: int, end: int, passed: bytearray, out: SplitOutput) -> None:
        """The audio PES `_buffer[:end]`: its frame handed out, a padding packet of its length passed on."""
        buffer = self._buffer
        header = parse_pes_header(buffer, 0, end)
        if header is None:
            self.damaged_audio += 1
        else:
            self.audio_pes += 1
            out.media.append(AudioPes(code, self._codecs.get(code, Codec.UNKNOWN), header.pts,
                                      bytes(buffer[header.payload_offset:end]), code == self._primary_audio))
        passed += START_CODE + bytes([PADDING_STREAM]) + buffer[4:6] + b"\xff" * (end - 6)
        del buffer[:end]
