"""The device's recordings and how they become timed frames: ffprobe facts and an ffmpeg frame reader.

`scan_recordings(dir)` lists the files of a media directory as `Recording`s (a device's stored files):
each gets its time range from a sidecar `NAME.json` (`{"start": "2026-12-05T10:00:00", "end": ...}`,
device-local time) or else ends at the file's mtime and starts its duration (ffprobe) earlier.

Raw H.264/H.265 files (`.h264`, `.265`, ...) carry no timestamps: their frames go out in decode order at
the frame rate ffprobe reports, PTS = DTS (right for streams without B-frames, which is what recorders
encode; a raw stream with B-frames is sent with its frames in decode order).

`read_frames(source)` yields the file's video access units (and G.711A audio in 20 ms frames when the
file has audio) in sending order with 90 kHz timestamps, streamed: ffmpeg copies the video out as an
Annex B elementary stream with an access unit delimiter before each access unit (so the cut is exact),
ffprobe gives each packet's timestamps and key flag in the same (decode) order, and the two are read in
lockstep; audio is transcoded to A-law by a third ffmpeg. Only one access unit and one audio frame are
held at a time, so memory is bounded whatever the file size. Without a file, `read_frames(None)` encodes
ffmpeg's `testsrc` live (H.264, no B-frames) for as long as it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

from drivers.gb28181.ps import Codec

log = logging.getLogger(__name__)

CLOCK_HZ = 90_000
AUDIO_RATE_HZ = 8000
AUDIO_FRAME_SAMPLES = 160  # 20 ms of G.711 at 8 kHz
MAX_ACCESS_UNIT_BYTES = 16 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
MEDIA_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".h264", ".264", ".h265", ".265", ".hevc", ".ps", ".ts"})
# Access unit delimiters as h264_metadata / hevc_metadata insert them (nal_ref_idc 0; layer 0, tid 1).
_AUD = {Codec.H264: b"\x00\x00\x01\x09", Codec.H265: b"\x00\x00\x01\x46\x01"}
_FFMPEG_NAMES = {Codec.H264: "h264", Codec.H265: "hevc"}
_PROBE_TIMEOUT_S = 60.0


class MediaError(Exception):
    """A file the simulator cannot serve (not media, no H.264/H.265 video, ffmpeg failed)."""


@dataclass(frozen=True)
class MediaFacts:
    video: Codec
    has_audio: bool
    duration_s: float
    frame_rate: Fraction
    size_bytes: int


@dataclass(frozen=True)
class Recording:
    """One stored file as the device reports it: device-local start and end time, no zone."""

    path: Path
    name: str
    start: datetime
    end: datetime
    facts: MediaFacts


@dataclass(frozen=True)
class MediaFrame:
    """One access unit (video) or one 20 ms audio frame, 90 kHz timestamps."""

    video: bool
    data: bytes
    pts: int
    dts: int | None
    key: bool

    @property
    def send_time(self) -> int:
        return self.dts if self.dts is not None else self.pts


async def _run(argv: list[str]) -> bytes:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    try:
        out, err = await asyncio.wait_for(process.communicate(), _PROBE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise MediaError(f"{argv[0]} did not finish in {_PROBE_TIMEOUT_S:g} s") from None
    if process.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise MediaError(f"{argv[0]} failed ({process.returncode}): {' | '.join(tail)}")
    return out


async def probe(path: Path) -> MediaFacts:
    """ffprobe facts of one file; `MediaError` when it has no H.264 or H.265 video."""
    out = await _run(["ffprobe", "-v", "error", "-show_entries",
                      "stream=codec_type,codec_name,r_frame_rate,duration:format=duration,size",
                      "-of", "json", str(path)])
    try:
        info = json.loads(out)
        streams = info.get("streams", [])
        video = next(s for s in streams if s.get("codec_type") == "video")
    except (ValueError, StopIteration):
        raise MediaError(f"{path.name!r}: no video stream") from None
    codec = {"h264": Codec.H264, "hevc": Codec.H265}.get(video.get("codec_name", ""))
    if codec is None:
        raise MediaError(f"{path.name!r}: video codec {video.get('codec_name')!r} is not H.264 or H.265")
    try:
        rate = Fraction(video.get("r_frame_rate", "25/1"))
    except (ValueError, ZeroDivisionError):
        rate = Fraction(25)
    if rate <= 0:
        rate = Fraction(25)
    duration_text = info.get("format", {}).get("duration") or video.get("duration") or "0"
    try:
        duration_s = float(duration_text)
    except ValueError:
        duration_s = 0.0
    if duration_s <= 0:  # a raw elementary stream has no duration: count its frames
        counted = await _run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
                              "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)])
        try:
            duration_s = float(int(counted.decode().strip().split(",")[0]) / rate)
        except (ValueError, IndexError):
            duration_s = 0.0
    return MediaFacts(video=codec, has_audio=any(s.get("codec_type") == "audio" for s in streams),
                      duration_s=duration_s, frame_rate=rate, size_bytes=path.stat().st_size)


def _sidecar_times(path: Path) -> tuple[datetime, datetime] | None:
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        start = datetime.fromisoformat(str(data["start"])).replace(tzinfo=None)
        end = datetime.fromisoformat(str(data["end"])).replace(tzinfo=None)
    except (ValueError, KeyError, TypeError) as exc:
        raise MediaError(f"sidecar {sidecar.name!r}: expected start and end times ({exc})") from None
    if end < start:
        raise MediaError(f"sidecar {sidecar.name!r}: end before start")
    return start, end


async def scan_recordings(media_dir: Path, *, utc_offset_s: int) -> list[Recording]:
    """The recordings in `media_dir` ordered by start time; files that are not media are skipped (logged)."""
    recordings: list[Recording] = []
    for path in sorted(media_dir.iterdir()):
        if not path.is_file() or path.suffix.lower() not in MEDIA_SUFFIXES:
            continue
        try:
            facts = await probe(path)
            times = _sidecar_times(path)
        except MediaError as exc:
            log.warning("recording skipped: %s", exc)
            continue
        if times is None:
            end_utc = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            end = (end_utc + timedelta(seconds=utc_offset_s)).replace(tzinfo=None, microsecond=0)
            start = end - timedelta(seconds=round(facts.duration_s))
            times = (start, end)
        recordings.append(Recording(path=path, name=path.name, start=times[0], end=times[1], facts=facts))
    recordings.sort(key=lambda r: (r.start, r.name))
    return recordings


# -- frames ----------------------------------------------------------------------------------------------


class _AccessUnitReader:
    """Cuts an Annex B stream with a delimiter before each access unit into access units."""

    def __init__(self, stream: asyncio.StreamReader, codec: Codec) -> None:
        self._stream = stream
        self._aud = _AUD[codec]
        self._buffer = bytearray()
        self._eof = False

    async def next(self) -> bytes | None:
        while True:
            first = self._buffer.find(self._aud)
            cut = self._buffer.find(self._aud, first + len(self._aud)) if first >= 0 else -1
            if cut > 0:
                if self._buffer[cut - 1] == 0:
                    cut -= 1  # the 4-byte start code's leading zero belongs to the next unit
                unit = bytes(self._buffer[:cut])
                del self._buffer[:cut]
                return unit
            if self._eof:
                if not self._buffer:
                    return None
                unit = bytes(self._buffer)
                self._buffer.clear()
                return unit
            if len(self._buffer) > MAX_ACCESS_UNIT_BYTES:
                raise MediaError(f"an access unit is larger than {MAX_ACCESS_UNIT_BYTES} bytes")
            chunk = await self._stream.read(READ_CHUNK_BYTES)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True


_TIME_RE = re.compile(r"^-?\d+(\.\d+)?$")


def _ticks(text: str) -> int | None:
    text = text.strip()
    return round(float(text) * CLOCK_HZ) if _TIME_RE.match(text) else None


class _Processes:
    """The subprocesses of one reading: stopped (terminate, then kill) when the reading ends."""

    def __init__(self) -> None:
        self.items: list[asyncio.subprocess.Process] = []

    async def start(self, argv: list[str]) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        self.items.append(process)
        return process

    async def stop(self) -> None:
        for process in self.items:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        for process in self.items:
            try:
                await asyncio.wait_for(_ended(process), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await _ended(process)
            if process.returncode not in (0, -15, -9):  # a failed reader sent fewer frames than the file has
                log.warning("media reader %s exited with %s", process.pid, process.returncode)
            if process.stdout is not None:
                # A stream that stopped mid-file (die-mid-stream, a BYE) left the reader's pipe unread: read
                # it to its end (the reader has exited: at most a pipe buffer) so the pipe is closed.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(process.stdout.read(), 5)


async def _ended(process: asyncio.subprocess.Process) -> None:
    """The process has exited and its pipe is read to its end: only then is its transport closed (a reading
    stopped mid-file, as a live Play is, would otherwise leave it open)."""
    if process.stdout is not None:
        while await process.stdout.read(65536):
            pass
    await process.wait()


async def _video_frames(path: Path | None, facts: MediaFacts | None,
                        processes: _Processes) -> AsyncIterator[MediaFrame]:
    if path is None or facts is None:
        codec, rate = Codec.H264, Fraction(25)
        video = await processes.start([
            "ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=25",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0",
            "-bsf:v", "h264_metadata=aud=insert", "-f", "h264", "pipe:1"])
        timing = None
    else:
        codec, rate = facts.video, facts.frame_rate
        name = _FFMPEG_NAMES[codec]
        video = await processes.start([
            "ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c:v", "copy",
            "-bsf:v", f"{name}_mp4toannexb,{name}_metadata=aud=insert", "-f", name, "pipe:1"])
        timing = await processes.start([
            "ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
            "packet=pts_time,dts_time,flags", "-of", "csv=p=0", str(path)])
    assert video.stdout is not None
    units = _AccessUnitReader(video.stdout, codec)
    frame_ticks = CLOCK_HZ / rate
    index = 0
    shift: int | None = None
    while (unit := await units.next()) is not None:
        pts = dts = None
        key = index == 0
        if timing is not None:
            assert timing.stdout is not None
            line = (await timing.stdout.readline()).decode(errors="replace").strip()
            fields = line.split(",")
            if len(fields) >= 3:
                pts, dts, key = _ticks(fields[0]), _ticks(fields[1]), fields[2].startswith("K")
        if pts is None and dts is None:
            pts = dts = round(index * frame_ticks)
            if timing is None:
                key = index % 25 == 0
        if shift is None:  # timestamps start at 0 or later: MP4 edit lists give negative first DTS
            shift = max(0, -min(t for t in (pts, dts) if t is not None))
        pts = (pts if pts is not None else dts or 0) + shift
        dts = dts + shift if dts is not None else None
        yield MediaFrame(video=True, data=unit, pts=pts, dts=dts, key=key)
        index += 1


async def _audio_frames(path: Path, processes: _Processes) -> AsyncIterator[MediaFrame]:
    audio = await processes.start([
        "ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn", "-ac", "1",
        "-ar", str(AUDIO_RATE_HZ), "-c:a", "pcm_alaw", "-f", "alaw", "pipe:1"])
    assert audio.stdout is not None
    samples = 0
    while True:
        try:
            data = await audio.stdout.readexactly(AUDIO_FRAME_SAMPLES)
        except asyncio.IncompleteReadError as exc:
            data = exc.partial
        if not data:
            return
        yield MediaFrame(video=False, data=data, pts=samples * CLOCK_HZ // AUDIO_RATE_HZ, dts=None, key=True)
        samples += len(data)


async def read_frames(path: Path | None, facts: MediaFacts | None, *,
                      audio: bool = True) -> AsyncIterator[MediaFrame]:
    """The file's frames in sending order (by decode time), audio interleaved; see the module docstring."""
    processes = _Processes()
    try:
        videos = _video_frames(path, facts, processes)
        audios = (_audio_frames(path, processes)
                  if audio and path is not None and facts is not None and facts.has_audio else None)
        next_video = await anext(videos, None)
        next_audio = await anext(audios, None) if audios is not None else None
        while next_video is not None or next_audio is not None:
            if next_audio is None or (next_video is not None and next_video.send_time <= next_audio.pts):
                assert next_video is not None
                yield next_video
                next_video = await anext(videos, None)
            else:
                yield next_audio
                assert audios is not None
                next_audio = await anext(audios, None)
    finally:
        await processes.stop()


# -- recordings for a simulated device -------------------------------------------------------------------


def generate_recordings(media_dir: Path, count: int, *, start: datetime, seconds: float = 4.0,
                        codec: Codec = Codec.H264, audio: bool = True, size: str = "640x360",
                        rate: int = 25, spacing: timedelta = timedelta(minutes=10),
                        video_bitrate: str | None = None) -> list[Path]:
    """`count` recordings as a recorder stores them (MP4, H.264 or H.265, AAC audio when `audio`), each
    with a sidecar giving its device-local time range, `spacing` apart from `start`. Every file differs
    (its own test pattern position and tone), so their hashes do too. Blocking (runs ffmpeg)."""
    if count < 0 or seconds <= 0 or rate <= 0:
        raise MediaError("count, seconds and rate must be positive")
    media_dir.mkdir(parents=True, exist_ok=True)
    encoder = ["-c:v", "libx265", "-x265-params", "log-level=error"] if codec is Codec.H265 \
        else ["-c:v", "libx264"]
    if codec not in (Codec.H264, Codec.H265):
        raise MediaError(f"recordings are H.264 or H.265, not {codec}")
    paths = []
    for index in range(count):
        began = start + index * spacing
        path = media_dir / f"{began:%Y%m%d_%H%M%S}_{index:04d}.mp4"
        # Each file starts at another point of the pattern (an input seek), so no two are alike; never
        # at 0: ffmpeg 5.1 loses the first frame of a lavfi input seeked to 0.
        argv = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(1 + index % 50), "-f", "lavfi",
                "-i", f"testsrc2=size={size}:rate={rate}"]
        if audio:
            argv += ["-f", "lavfi", "-i", f"sine=frequency={300 + 40 * index}:sample_rate=8000"]
        argv += ["-t", str(seconds), "-g", str(rate), "-preset", "ultrafast", *encoder, "-pix_fmt", "yuv420p"]
        if video_bitrate:
            argv += ["-b:v", video_bitrate]
        if audio:
            argv += ["-c:a", "aac"]  # -t bounds both infinite inputs; -shortest would cut a frame
        try:
            subprocess.run([*argv, str(path)], check=True, capture_output=True, timeout=_PROBE_TIMEOUT_S * 5)
        except (OSError, subprocess.SubprocessError) as exc:
            raise MediaError(f"ffmpeg could not make {path.name}: {exc}") from None
        ended = began + timedelta(seconds=seconds)
        path.with_name(path.name + ".json").write_text(
            json.dumps({"start": began.isoformat(), "end": ended.isoformat()}), encoding="utf-8")
        paths.append(path)
    return paths
