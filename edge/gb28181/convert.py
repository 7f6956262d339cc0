"""Raw GB/T 28181 PS as received → MP4, with the real ffmpeg, checked with ffprobe.

The raw PS stays the evidentiary original; the MP4 is a convenience made from it, and its manifest says
how (ffmpeg version and argv), so the conversion can be repeated and checked later. Steps:

1. `scan_ps(raw, audio_out)` reads the raw PS once with the project's own demuxer (drivers/gb28181/ps.py,
   bounded memory, in a worker thread), hashing what it reads (the MP4's manifest names that SHA-256 as
   what it was made from): video codec and frame count, first and last video PTS, and the
   audio elementary stream written out to `audio_out`. ffmpeg's `mpeg` demuxer mis-detects G.711 in
   stream 0xC0 (PSM type 0x90/0x91) as MPEG audio with 0 channels (gb28181.md §7, §14.7), so audio is
   taken by its PSM stream type and given to ffmpeg as a second, raw input (`-f alaw|mulaw -ar 8000 -ac 1`;
   AAC: ADTS, `-f aac`), shifted by `-itsoffset` to where it starts relative to the video.
2. Two ffmpeg runs, their command lines built by pure functions (tested as lists), only the `file`
   protocol. `convert_argv(...)`: ffmpeg demuxes the device's PS, so it runs confined like ffprobe does
   (edge/ingest/probe_sandbox.py, Landlock + seccomp: it may read the raw PS and the audio extract and
   nothing else of the station, write no file, open no socket); it copies the video and the raw audio,
   audio shifted by `-itsoffset`, into NUT (ffmpeg's own streamable container) on its stdout, an fd the
   agent opened on a temp file (a confined process cannot open a file to write, and `+faststart` needs
   to reopen its output). `mp4_argv(...)` then makes the MP4 from that, ffmpeg's own output, unconfined:
   video stream-copied (H.265 tagged `hvc1` so that players take it), G.711 transcoded to AAC, AAC
   copied, `-movflags +faststart`. The device's video bitstream still passes through the second run
   (stream copy reads its parameter sets), the PS container parsing does not. Plain lists, not
   ffmpeg-python: that library (0.2.0, 2019) adds a graph layer for two fixed command lines.
3. Each ffmpeg runs as an asyncio subprocess with a minimal environment and a deadline (killed after
   it; one deadline for both), its stderr kept bounded (the last `STDERR_TAIL_BYTES`), writing to temp
   names beside the output. No sandbox (Landlock missing): no MP4, fail closed.
4. ffprobe reads the result: its video packet count must equal the frames the demuxer counted (a
   damaged frame ffmpeg keeps and the demuxer drops is allowed for, up to what the demuxer dropped) and
   its video duration must match the video's PTS span (plus one frame) within two frames; audio must
   be there when the PS had it. Then the MP4 is fsynced and renamed to its final name (directory fsynced).

Any failure raises `ConversionError` naming the recording (its display name, never a station path in
the message's first part), and leaves no file: neither the temp MP4 nor the audio extract.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.gb28181.ps import Codec, EsFrame, PsDemuxer, StreamMap, is_audio, is_video
from edge.ingest import probe_sandbox

READ_BYTES = 1 << 20
CONVERT_TIMEOUT_S = 600.0
PROBE_TIMEOUT_S = 60.0
STDERR_TAIL_BYTES = 16 * 1024
PTS_MODULO = 1 << 33
FFMPEG_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}
# Raw audio inputs ffmpeg is given for each PSM audio type: (demuxer, its options).
AUDIO_INPUTS: dict[Codec, tuple[str, ...]] = {
    Codec.G711A: ("-f", "alaw", "-ar", "8000", "-ac", "1"),
    Codec.G711U: ("-f", "mulaw", "-ar", "8000", "-ac", "1"),
    Codec.AAC: ("-f", "aac"),
}
VIDEO_CODECS = (Codec.H264, Codec.H265)
# Placeholders for the files in the argv a manifest records (station paths are not evidence).
RAW_PLACEHOLDER, AUDIO_PLACEHOLDER, OUTPUT_PLACEHOLDER = "{raw_ps}", "{audio}", "{mp4}"
INTERMEDIATE_PLACEHOLDER = "{intermediate_nut}"
SANDBOX = "landlock+seccomp (edge/ingest/probe_sandbox.py): reads the raw PS and the audio extract only"


class ConversionError(Exception):
    """The recording could not be made into a checked MP4; the message names the recording and why."""


@dataclass
class PsScan:
    """What the raw PS holds, as the project's demuxer reads it."""

    video_codec: Codec | None = None
    audio_codec: Codec | None = None
    video_frames: int = 0
    audio_frames: int = 0
    audio_bytes: int = 0
    first_video_pts: int | None = None
    last_video_pts: int | None = None
    first_audio_pts: int | None = None
    dropped_frames: int = 0
    resyncs: int = 0
    streams: dict[int, str] = field(default_factory=dict)
    raw_sha256: str = ""  # of the bytes this scan read: what the MP4 was made from
    raw_bytes: int = 0

    @property
    def video_span_s(self) -> float:
        if self.first_video_pts is None or self.last_video_pts is None:
            return 0.0
        return ((self.last_video_pts - self.first_video_pts) % PTS_MODULO) / 90000

    @property
    def expected_duration_s(self) -> float:
        """The span of the video's PTS plus one frame (the last frame lasts too)."""
        if self.video_frames < 2:
            return self.video_span_s
        return self.video_span_s * self.video_frames / (self.video_frames - 1)

    @property
    def audio_offset_s(self) -> float:
        """Where the audio starts after the start of the program (ffmpeg starts its output at the earliest
        timestamp of any stream of the PS; audio earlier than video shifts the video instead)."""
        if self.first_audio_pts is None or self.first_video_pts is None:
            return 0.0
        half = PTS_MODULO // 2
        delta = ((self.first_audio_pts - self.first_video_pts + half) % PTS_MODULO) - half
        return max(0, delta) / 90000


def scan_ps(raw: Path, audio_out: Path) -> PsScan:
    """Read the raw PS once (blocking: call from a worker thread): counts and the audio stream, written to
    `audio_out` (created new; removed again if there is no audio)."""
    scan = PsScan()
    demuxer = PsDemuxer()
    audio_id: int | None = None
    with raw.open("rb") as source, audio_out.open("xb") as audio:
        def take(events: list[Any]) -> None:
            nonlocal audio_id
            for event in events:
                if isinstance(event, StreamMap):
                    scan.streams = {s.stream_id: str(s.codec) for s in event.streams}
                elif isinstance(event, EsFrame) and is_video(event.stream_id):
                    if scan.video_codec is None:
                        scan.video_codec = event.codec
                    scan.video_frames += 1
                    if event.pts is not None:
                        if scan.first_video_pts is None:
                            scan.first_video_pts = event.pts
                        scan.last_video_pts = event.pts
                elif isinstance(event, EsFrame) and is_audio(event.stream_id):
                    if audio_id is None:
                        audio_id = event.stream_id
                    if event.stream_id != audio_id:
                        continue  # one audio track: the first one
                    codec = _audio_codec(demuxer, event)
                    if scan.audio_codec is None:
                        scan.audio_codec = codec
                    scan.audio_frames += 1
                    if scan.first_audio_pts is None and event.pts is not None:
                        scan.first_audio_pts = event.pts
                    audio.write(event.data)
                    scan.audio_bytes += len(event.data)

        digest = hashlib.sha256()
        while chunk := source.read(READ_BYTES):
            digest.update(chunk)
            scan.raw_bytes += len(chunk)
            take(demuxer.feed(chunk))
        scan.raw_sha256 = digest.hexdigest()
        take(demuxer.flush())
        audio.flush()
    scan.dropped_frames = demuxer.stats.dropped_frames
    scan.resyncs = demuxer.stats.resyncs
    if scan.audio_codec not in AUDIO_INPUTS:
        audio_out.unlink()
    return scan


def _audio_codec(demuxer: PsDemuxer, frame: EsFrame) -> Codec:
    if frame.codec is not Codec.UNKNOWN:
        return frame.codec
    stream_map = demuxer.stream_map
    if stream_map is not None:
        for info in stream_map.streams:
            if info.stream_id == frame.stream_id:
                return info.codec
    return Codec.UNKNOWN


def convert_argv(
    raw: Path,
    *,
    video_codec: Codec,
    audio: Path | None = None,
    audio_codec: Codec | None = None,
    audio_offset_s: float = 0.0,
    ffmpeg: str = "ffmpeg",
) -> list[str]:
    """The confined ffmpeg's command line (pure): the PS's video and the separate raw audio (if any, at
    its offset) copied into NUT on stdout."""
    if video_codec not in VIDEO_CODECS:
        raise ConversionError(f"video codec {video_codec} is not one an MP4 takes by stream copy")
    argv = [ffmpeg, "-nostdin", "-hide_banner", "-v", "error", "-y", "-protocol_whitelist", "file",
            "-f", "mpeg", "-i", f"file:{raw}"]
    if audio is not None:
        if audio_codec not in AUDIO_INPUTS:
            raise ConversionError(f"audio codec {audio_codec} cannot be read from a raw extract")
        argv += ["-itsoffset", f"{audio_offset_s:.6f}", *AUDIO_INPUTS[audio_codec], "-i", f"file:{audio}"]
    argv += ["-map", "0:v:0"]
    if audio is not None:
        argv += ["-map", "1:a:0"]
    return [*argv, "-c", "copy", "-f", "nut", "pipe:1"]


def mp4_argv(intermediate: Path, output: Path, *, video_codec: Codec, audio_codec: Codec | None = None,
             ffmpeg: str = "ffmpeg") -> list[str]:
    """The second ffmpeg's command line (pure): the confined run's NUT into MP4, video copied, G.711 as
    AAC, the index first."""
    argv = [ffmpeg, "-nostdin", "-hide_banner", "-v", "error", "-y", "-protocol_whitelist", "file",
            "-f", "nut", "-i", f"file:{intermediate}", "-map", "0", "-c:v", "copy"]
    if video_codec is Codec.H265:
        argv += ["-tag:v", "hvc1"]
    if audio_codec is not None:
        argv += ["-c:a", "copy"] if audio_codec is Codec.AAC else ["-c:a", "aac", "-b:a", "64k"]
    return [*argv, "-movflags", "+faststart", "-f", "mp4", f"file:{output}"]


def confined_argv(readable: list[Path], command: list[str]) -> list[str]:
    """`command` run through the Landlock wrapper, allowed to read `readable` only (pure)."""
    reads = [part for path in readable for part in ("--read", str(path))]
    return [sys.executable, "-I", str(Path(probe_sandbox.__file__)), *reads, "--", *command]


def recorded_argv(argv: list[str], names: dict[Path, str]) -> list[str]:
    """`argv` without the program, with the station's file names replaced by placeholders (manifests
    name no station path)."""
    by_argument = {f"file:{path}": placeholder for path, placeholder in names.items()}
    return [by_argument.get(a, a) for a in argv[1:]]


def probe_argv(path: Path, ffprobe: str = "ffprobe") -> list[str]:
    """ffprobe's command line for the check (pure): each stream's codec, duration and packets counted."""
    return [ffprobe, "-v", "error", "-hide_banner", "-protocol_whitelist", "file", "-count_packets",
            "-show_entries", "stream=codec_type,codec_name,duration,nb_read_packets", "-of", "json",
            f"file:{path}"]


@dataclass(frozen=True)
class _Run:
    returncode: int | None
    stdout: bytes
    stderr_tail: str
    timed_out: bool


async def _run(argv: list[str], timeout_s: float, *, max_stdout: int = 1 << 20,
               stdout_to: Path | None = None) -> _Run:
    """Run `argv` with a deadline; stdout kept up to `max_stdout` (or written to `stdout_to`, created
    new), stderr's last STDERR_TAIL_BYTES."""
    stdout_fd = os.open(stdout_to, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600) \
        if stdout_to is not None else None
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_fd is None else stdout_fd,
            stderr=asyncio.subprocess.PIPE, env=FFMPEG_ENV, start_new_session=True,
        )
    finally:
        if stdout_fd is not None:
            os.close(stdout_fd)
    assert process.stderr is not None
    tail: deque[bytes] = deque()
    kept = 0
    out = bytearray()

    async def read_stderr(stream: asyncio.StreamReader) -> None:
        nonlocal kept
        while chunk := await stream.read(4096):
            tail.append(chunk)
            kept += len(chunk)
            while kept - len(tail[0]) >= STDERR_TAIL_BYTES:
                kept -= len(tail.popleft())

    async def read_stdout(stream: asyncio.StreamReader | None) -> None:
        while stream is not None and (chunk := await stream.read(65536)):
            if len(out) < max_stdout:
                out.extend(chunk[: max_stdout - len(out)])

    timed_out = False
    try:
        readers = asyncio.gather(read_stderr(process.stderr), read_stdout(process.stdout), process.wait())
        await asyncio.wait_for(readers, timeout_s)
    except TimeoutError:
        timed_out = True
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            await process.wait()
    text = b"".join(tail)[-STDERR_TAIL_BYTES:].decode("utf-8", "replace")
    return _Run(process.returncode, bytes(out), text, timed_out)


_versions: dict[str, str] = {}


async def ffmpeg_version(ffmpeg: str = "ffmpeg") -> str:
    """`5.1.9-0+deb12u1`: the version ffmpeg prints (cached per binary)."""
    if ffmpeg not in _versions:
        run = await _run([ffmpeg, "-hide_banner", "-version"], PROBE_TIMEOUT_S)
        first = run.stdout.decode("utf-8", "replace").split("\n", 1)[0].split()
        if run.returncode != 0 or len(first) < 3 or first[:2] != ["ffmpeg", "version"]:
            raise ConversionError(f"{ffmpeg} -version did not say its version (exit {run.returncode})")
        _versions[ffmpeg] = first[2]
    return _versions[ffmpeg]


@dataclass(frozen=True)
class Conversion:
    """A checked MP4 made from a raw PS: where, and how it was made (for its manifest)."""

    mp4: Path
    size: int
    ffmpeg_version: str
    argv: list[str]  # the confined run (PS -> NUT), with placeholders for the files
    mp4_argv: list[str]  # the run that made the MP4 from its output
    scan: PsScan
    probe: dict[str, Any]  # what ffprobe said of the MP4: duration_s, video_packets, codecs

    def summary(self) -> dict[str, Any]:
        return {
            "ffmpeg_version": self.ffmpeg_version,
            "argv": self.argv,
            "mp4_argv": self.mp4_argv,
            "sandbox": SANDBOX,
            "video_codec": str(self.scan.video_codec) if self.scan.video_codec else None,
            "audio_codec": str(self.scan.audio_codec) if self.scan.audio_codec else None,
            "video_frames": self.scan.video_frames,
            "audio_offset_s": round(self.scan.audio_offset_s, 6),
            "checked": self.probe,
        }


def _discard(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)


def _durable_rename(temp: Path, final: Path) -> None:
    fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def convert_recording(
    raw: Path,
    output: Path,
    *,
    display: str,
    timeout_s: float = CONVERT_TIMEOUT_S,
    ffmpeg: str = "ffmpeg",
    ffprobe: str = "ffprobe",
) -> Conversion:
    """Make `output` (which must not exist; its directory holds the temp files too) from the raw PS `raw`,
    check it, and return how it was made. Raises ConversionError naming `display`."""
    if output.exists():
        raise ConversionError(f"{display}: {output.name} already exists")
    temp = output.with_name(f".{output.name}.part.mp4")
    intermediate = output.with_name(f".{output.name}.nut")
    audio = output.with_name(f".{output.name}.audio")
    _discard(temp, intermediate, audio)  # left by a conversion a crash interrupted
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    names = {raw: RAW_PLACEHOLDER, audio: AUDIO_PLACEHOLDER, intermediate: INTERMEDIATE_PLACEHOLDER,
             temp: OUTPUT_PLACEHOLDER}

    def failed(what: str, run: _Run) -> ConversionError:
        if run.timed_out:
            return ConversionError(f"{display}: {what} did not finish within {timeout_s:g} s and was killed")
        if run.returncode == probe_sandbox.SANDBOX_UNAVAILABLE:
            return ConversionError(f"{display}: {what} not run, no sandbox: {run.stderr_tail.strip()[-300:]}")
        why = " | ".join(run.stderr_tail.strip().splitlines()[-3:])
        for path, placeholder in names.items():
            why = why.replace(str(path), placeholder)
        return ConversionError(f"{display}: {what} failed (exit {run.returncode}): {why[:500]}")

    try:
        try:
            scan: PsScan = await loop.run_in_executor(None, scan_ps, raw, audio)
        except OSError as exc:
            raise ConversionError(f"{display}: cannot read the raw PS: {exc.strerror or exc}") from exc
        if scan.video_codec not in VIDEO_CODECS or scan.video_frames == 0:
            raise ConversionError(f"{display}: the PS holds no H.264 or H.265 video frames "
                                  f"(video {scan.video_codec}, {scan.video_frames} frames)")
        has_audio = scan.audio_codec in AUDIO_INPUTS and scan.audio_bytes > 0
        argv = convert_argv(raw, video_codec=scan.video_codec, audio=audio if has_audio else None,
                            audio_codec=scan.audio_codec if has_audio else None,
                            audio_offset_s=scan.audio_offset_s, ffmpeg=ffmpeg)
        remux = mp4_argv(intermediate, temp, video_codec=scan.video_codec,
                         audio_codec=scan.audio_codec if has_audio else None, ffmpeg=ffmpeg)
        version = await ffmpeg_version(ffmpeg)
        readable = [raw, audio] if has_audio else [raw]
        run = await _run(confined_argv(readable, argv), max(0.0, deadline - loop.time()),
                         stdout_to=intermediate)
        if run.timed_out or run.returncode != 0 or intermediate.stat().st_size == 0:
            raise failed("ffmpeg", run)
        run = await _run(remux, max(0.0, deadline - loop.time()))
        if run.timed_out or run.returncode != 0 or not temp.exists():
            raise failed("ffmpeg (NUT to MP4)", run)
        probe = await _check(temp, scan, display, has_audio=has_audio, ffprobe=ffprobe)
        size = temp.stat().st_size
        await loop.run_in_executor(None, _durable_rename, temp, output)
        return Conversion(output, size, version, recorded_argv(argv, names), recorded_argv(remux, names),
                          scan, probe)
    except BaseException:
        _discard(temp)
        raise
    finally:
        _discard(audio, intermediate)


async def _check(mp4: Path, scan: PsScan, display: str, *, has_audio: bool, ffprobe: str) -> dict[str, Any]:
    run = await _run(probe_argv(mp4, ffprobe), PROBE_TIMEOUT_S)
    if run.returncode != 0 or run.timed_out:
        why = run.stderr_tail.strip()[-300:]
        raise ConversionError(f"{display}: ffprobe cannot read the MP4 made: {why}")
    try:
        report = json.loads(run.stdout)
        streams = report["streams"]
        video = next(s for s in streams if s.get("codec_type") == "video")
        duration = float(video["duration"])
        packets = int(video["nb_read_packets"])
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise ConversionError(f"{display}: ffprobe's report of the MP4 lacks {exc}") from exc
    audio_codecs = [s.get("codec_name") for s in streams if s.get("codec_type") == "audio"]
    probe = {"video_duration_s": round(duration, 3), "video_packets": packets,
             "video_codec": video.get("codec_name"), "audio_codecs": audio_codecs}
    slack = scan.dropped_frames + scan.resyncs  # frames ffmpeg kept damaged that the demuxer dropped
    if not scan.video_frames <= packets <= scan.video_frames + slack:
        raise ConversionError(f"{display}: the MP4 has {packets} video frames, the PS {scan.video_frames}")
    frame_s = scan.expected_duration_s / scan.video_frames if scan.video_frames else 0.04
    tolerance = max(2 * frame_s, 0.1) + (slack * frame_s)
    if abs(duration - scan.expected_duration_s) > tolerance:
        raise ConversionError(f"{display}: the MP4's video lasts {duration:.3f} s, the PS's "
                              f"{scan.expected_duration_s:.3f} s")
    if has_audio and not audio_codecs:
        raise ConversionError(f"{display}: the PS had {scan.audio_codec} audio, the MP4 has none")
    return probe
