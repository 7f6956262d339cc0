"""ffmpeg and ffprobe command lines for room capture, built by pure functions that return argv lists.

A source's ffmpeg reads its inputs (:func:`input_args`) and writes fixed-length MP4 segments with the
segment muxer (:func:`segment_argv`):

* ``-f segment -segment_time T -reset_timestamps 1``: a new file every T seconds (at the next key frame;
  when encoding, key frames are forced at every multiple of T so segments are T long);
* ``-segment_list list.csv -segment_list_type csv``: ffmpeg appends ``name,start,end`` to the list when it
  has closed a segment, so a line in the list means a complete file (:mod:`edge.rooms.segments`);
* ``-segment_format mp4`` with ``movflags`` per layout: fragmented (a segment cut short by a crash is
  still playable), plain (moov at the end), faststart (moov moved to the front at close);
* stream copy when the inputs' codecs go into MP4 as they are (:func:`codec_plan`), else libx264/AAC;
* the case metadata (case number, room, location, collector, subject, session, source) in every segment
  (``-metadata``, kept as MP4 tags by ``use_metadata_tags``).

No shell is involved anywhere: the lists go to ``asyncio.create_subprocess_exec``.

Credentials of a URL input (an RTSP camera's user and password) are never in the configuration: the input
names secret references (``username``/``password``), resolved when a run starts and merged into the URL
by :func:`with_credentials` (percent-encoded): into the URL's placeholders ``{username}``/``{password}``
when the camera takes them in its path or query (XMEye: ``rtsp://host/user={username}&password=...``),
else as its userinfo. ffmpeg 5.1 has no other way to take an RTSP password than
the URL, so it is on ffmpeg's command line: the shipped unit's ``ProtectProc=invisible`` keeps
``/proc/PID/cmdline`` of the agent's processes from every other user (systemd/README.md). Whatever the
station quotes of ffmpeg (stderr lines, a gap's reason) goes through :func:`redact_url_userinfo` first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edge.config.rooms import (
    CREDENTIAL_PARAMETERS,
    PASSWORD_PLACEHOLDER,
    USERNAME_PLACEHOLDER,
    RoomInputConfig,
)

SEGMENT_LIST = "segments.csv"
SEGMENT_PATTERN = "seg-%06d.mp4"
# Video MP4 takes as it is (and browsers and court players play), audio likewise.
COPYABLE_VIDEO = frozenset({"h264", "hevc"})
COPYABLE_AUDIO = frozenset({"aac"})
MOVFLAGS = {
    # skip_trailer: no mfra index at the end, so the station can append its evidence box (players find
    # the fragments from the front).
    "fragmented": "+frag_keyframe+empty_moov+default_base_moof+skip_trailer+use_metadata_tags",
    "plain": "+use_metadata_tags",
    "faststart": "+faststart+use_metadata_tags",
}


# scheme://USER[:PASSWORD]@ in any text: the user is kept, the password (or a lone userinfo) masked.
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s/?#@:]*)(?::[^\s/?#@]*)?@")


# NAME=VALUE of a credential parameter in any text (rtsp://host/user=admin&password=...): value masked.
_CREDENTIAL_PARAMETER = re.compile(
    r"(?i)(?:^|(?<=[/?&;_\s]))(" + "|".join(sorted(CREDENTIAL_PARAMETERS, key=len, reverse=True))
    + r")=(?:(?!_[A-Za-z]+=)[^/?&;#\s])*"
)


def redact_url_userinfo(text: str) -> str:
    """`text` with every URL's password replaced by ``***`` (``rtsp://admin:***@host/...``), and the
    value of every credential parameter of a path or query too (``.../user=***&password=***&channel=1``)."""
    text = _URL_USERINFO.sub(lambda m: f"{m[1]}{m[2]}:***@", text)
    return _CREDENTIAL_PARAMETER.sub(lambda m: f"{m[1]}=***", text)


def with_credentials(url: str, username: str, password: str | None) -> str:
    """`url` with the credentials filled in: into its placeholders (``{username}``, ``{password}``: a
    camera that takes them in its path or query) when it has any, else as ``user:password@`` before its
    host; percent-encoded either way, so that no character of a password changes the URL."""
    if USERNAME_PLACEHOLDER in url or PASSWORD_PLACEHOLDER in url:
        filled = url.replace(USERNAME_PLACEHOLDER, quote(username, safe=""))
        return filled.replace(PASSWORD_PLACEHOLDER, quote(password or "", safe=""))
    return _with_userinfo(url, username, password)


def _with_userinfo(url: str, username: str, password: str | None) -> str:
    """`url` (``scheme://host/...``, no userinfo: the configuration refuses it) with ``user:password@``
    put before its host, both percent-encoded so that no character of a password changes the URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" in rest.split("/", 1)[0]:
        raise ValueError("credentials go only into a scheme://host URL without userinfo")
    userinfo = quote(username, safe="") + ("" if password is None else ":" + quote(password, safe=""))
    return f"{scheme}://{userinfo}@{rest}"


class Coding(StrEnum):
    COPY = "copy"
    ENCODE = "encode"


@dataclass(frozen=True)
class SegmentPlan:
    """How one run of a source writes its segments."""

    segment_time_s: float
    mp4_layout: str = "fragmented"
    video: Coding = Coding.ENCODE
    audio: Coding = Coding.ENCODE
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Only each input's first video stream, no audio: a GB/T 28181 channel without sound (its audio, if
    # any, is taken out of the program stream by the agent: edge.rooms.gb_feed).
    video_only: bool = False
    # The streams to map, exactly (``-map`` values), in place of every stream of every input: a GB/T 28181
    # channel with sound maps its program stream's first video and the raw G.711 input's sound.
    maps: tuple[str, ...] = ()
    audio_bitrate: str = "128k"

    def __post_init__(self) -> None:
        if not self.segment_time_s > 0:
            raise ValueError(f"segment_time_s must be > 0, got {self.segment_time_s!r}")
        if self.video_only and self.maps:
            raise ValueError("video_only and explicit maps exclude each other")
        if not re.fullmatch(r"[0-9]{1,4}k", self.audio_bitrate):
            raise ValueError(f"audio_bitrate must be like 128k, got {self.audio_bitrate!r}")
        for spec in self.maps:
            if not re.fullmatch(r"[0-9]{1,2}:[va](:[0-9]{1,2})?", spec):
                raise ValueError(f"a map must be INPUT:v|a[:INDEX], got {spec!r}")
        if self.mp4_layout not in MOVFLAGS:
            raise ValueError(f"mp4_layout must be one of {sorted(MOVFLAGS)}, got {self.mp4_layout!r}")
        for key, value in self.metadata.items():
            if not key.isidentifier() or not key.isascii():
                raise ValueError(f"metadata key {key!r} is not a plain identifier")
            if "\n" in value or "\x00" in value:
                raise ValueError(f"metadata {key} contains a line break or NUL")


# What builds a run's command from (ffmpeg, its inputs, its plan, its run directory): segment_argv, or a
# variant of it (a source feeding the composite, the composite itself).
ArgvBuilder = Callable[[str, Sequence[RoomInputConfig], SegmentPlan, Path], list[str]]


def input_args(inputs: Sequence[RoomInputConfig]) -> list[str]:
    """``[-f FORMAT] [-OPTION VALUE ...] [-re] -i URL`` for each input, in order."""
    args: list[str] = []
    for spec in inputs:
        if spec.format:
            args += ["-f", spec.format]
        for name, value in spec.options.items():
            args += [f"-{name}", value]
        if spec.realtime:
            args.append("-re")
        args += ["-i", spec.url]
    return args


def _seconds(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def codec_args(plan: SegmentPlan) -> list[str]:
    """Codec options: copy, or libx264 (key frames forced at every segment boundary) and AAC."""
    args: list[str] = []
    if plan.video is Coding.COPY:
        args += ["-c:v", "copy"]
    else:
        boundary = _seconds(plan.segment_time_s)
        args += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                 "-force_key_frames", f"expr:gte(t,n_forced*{boundary})"]
    if plan.video_only:
        args.append("-an")
    elif plan.audio is Coding.COPY:
        args += ["-c:a", "copy"]
    else:
        args += ["-c:a", "aac", "-b:a", plan.audio_bitrate]
    return args


def map_args(input_count: int, *, video_only: bool = False) -> list[str]:
    """Every video and audio stream of every input (``?``: an input may have only one kind); with
    `video_only`, each input's first video stream, which must be there."""
    args: list[str] = []
    for index in range(input_count):
        args += ["-map", f"{index}:v:0"] if video_only else ["-map", f"{index}:v?", "-map", f"{index}:a?"]
    return args


def explicit_map_args(maps: Sequence[str]) -> list[str]:
    """``-map SPEC`` for each of `maps`, in order (each must be there: no ``?``)."""
    args: list[str] = []
    for spec in maps:
        args += ["-map", spec]
    return args


# AAC of a GB/T 28181 camera's G.711 (8 kHz, mono): ffmpeg's encoder takes at most 48k at 8 kHz.
GB_AUDIO_BITRATE = "32k"


def gb_plan(segment_time_s: float, mp4_layout: str, metadata: Mapping[str, str], *,
            audio: bool) -> SegmentPlan:
    """The plan of a GB/T 28181 channel's run: its video stream-copied from the program stream (input 0);
    with `audio`, the raw G.711 (input 1) encoded to AAC beside it; else video only."""
    if audio:
        return SegmentPlan(segment_time_s, mp4_layout, Coding.COPY, Coding.ENCODE, metadata,
                           maps=("0:v:0", "1:a:0"), audio_bitrate=GB_AUDIO_BITRATE)
    return SegmentPlan(segment_time_s, mp4_layout, Coding.COPY, Coding.COPY, metadata, video_only=True)


def metadata_args(metadata: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in metadata.items():
        args += ["-metadata", f"{key}={value}"]
    return args


def segment_argv(
    ffmpeg: str, inputs: Sequence[RoomInputConfig], plan: SegmentPlan, run_dir: Path,
    *, feed_fd: int | None = None,
) -> list[str]:
    """The whole ffmpeg command of one run: segments and their list in `run_dir`; with `feed_fd` (the
    write end of a pipe the run inherits), the same streams also go there for the room's composite
    (:func:`tee_output_args`)."""
    if not inputs:
        raise ValueError("a source needs at least one input")
    output = (segment_output_args(plan, run_dir) if feed_fd is None
              else tee_output_args(plan, run_dir, feed_fd))
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning",
        *input_args(inputs),
        *(explicit_map_args(plan.maps) if plan.maps else map_args(len(inputs), video_only=plan.video_only)),
        *codec_args(plan),
        *output,
    ]


# What the tee muxer's parser takes specially at each level (av_get_token: a backslash escapes the next
# character; quotes): the list of slaves (split at |), a slave's [options], an option's value (split at :).
_TEE_SLAVE_SPECIAL = frozenset("\\'|[]")
_TEE_VALUE_SPECIAL = frozenset("\\':=[]|")


def _escaped(text: str, special: frozenset[str]) -> str:
    return "".join("\\" + c if c in special else c for c in text)


def tee_value(value: str) -> str:
    """`value` as an option value inside a tee slave's ``[...]``: read back exactly by every level."""
    return _escaped(_escaped(value, _TEE_VALUE_SPECIAL), _TEE_SLAVE_SPECIAL)


def tee_target(value: str) -> str:
    """`value` as a tee slave's file name or URL (after its ``[...]``)."""
    return _escaped(value, _TEE_SLAVE_SPECIAL)


# Packets (all streams) the feed's fifo holds for a pipe that does not take them (about ten seconds of
# video and sound); past it the fifo drops packets rather than make the segments wait.
FEED_QUEUE_PACKETS = 600
# How long the fifo's thread waits on a full feed pipe (non-blocking: edge.rooms.feed_relay) before it
# gives the feed up for the rest of the run: the agent read nothing that long. Without it a run whose
# feed nobody reads could not finish (the fifo's trailer waits for its thread).
FEED_WRITE_TIMEOUT_US = 10_000_000


def tee_output_args(plan: SegmentPlan, run_dir: Path, feed_fd: int) -> list[str]:
    """The output half of a feeding source's run: ffmpeg's ``tee`` muxer writes the segments exactly as
    :func:`segment_output_args` does, and the same packets (no second encode) as MPEG-TS to the inherited
    pipe `feed_fd` (``pipe:N``: the agent relays it to the room's composite, edge.rooms.feed_relay)
    through the fifo muxer (``use_fifo``: its own thread, ``drop_pkts_on_overflow``): a pipe nobody
    empties drops feed packets and never holds up the segments, and after ``rw_timeout`` (the pipe is
    non-blocking) gives the feed up; with ``onfail=ignore`` a pipe whose reader is gone, or given up,
    drops only the feed, never the segments or the run.

    MP4 needs each stream's codec headers out of band (``global_header``, which the tee muxer does not
    ask the encoders for itself); the feed gets them in band again (``dump_extra``)."""
    options = {
        "f": "segment",
        "segment_time": _seconds(plan.segment_time_s),
        "reset_timestamps": "1",
        "segment_format": "mp4",
        "segment_format_options": f"movflags={MOVFLAGS[plan.mp4_layout]}",
        "segment_list": str(run_dir / SEGMENT_LIST),
        "segment_list_type": "csv",
    }
    segments = ":".join(f"{key}={tee_value(value)}" for key, value in options.items())
    fifo = f"queue_size={FEED_QUEUE_PACKETS}:drop_pkts_on_overflow=1"
    feed = (f"f=mpegts:onfail=ignore:bsfs/v=dump_extra:use_fifo=1:fifo_options={tee_value(fifo)}:"
            f"rw_timeout={FEED_WRITE_TIMEOUT_US}")
    feed_target = tee_target(f"pipe:{feed_fd}")
    slaves = f"[{segments}]{tee_target(str(run_dir / SEGMENT_PATTERN))}|[{feed}]{feed_target}"
    return [
        *metadata_args(plan.metadata),
        "-flags:v", "+global_header", "-flags:a", "+global_header",
        "-f", "tee", slaves,
    ]


def segment_output_args(plan: SegmentPlan, run_dir: Path) -> list[str]:
    """The output half of a run's command: its metadata, the segment muxer, the list and the pattern."""
    return [
        *metadata_args(plan.metadata),
        "-f", "segment",
        "-segment_time", _seconds(plan.segment_time_s),
        "-reset_timestamps", "1",
        "-segment_format", "mp4",
        "-segment_format_options", f"movflags={MOVFLAGS[plan.mp4_layout]}",
        "-segment_list", str(run_dir / SEGMENT_LIST),
        "-segment_list_type", "csv",
        str(run_dir / SEGMENT_PATTERN),
    ]


def probe_argv(ffprobe: str, spec: RoomInputConfig) -> list[str]:
    """ffprobe of one input's streams as JSON (codec_type and codec_name of each)."""
    args = [ffprobe, "-hide_banner", "-v", "error", "-show_entries", "stream=index,codec_type,codec_name",
            "-of", "json"]
    if spec.format:
        args += ["-f", spec.format]
    for name, value in spec.options.items():
        args += [f"-{name}", value]
    return [*args, "-i", spec.url]


def probed_codecs(doc: Any) -> list[tuple[str, str]]:
    """(codec_type, codec_name) of each stream in ffprobe's JSON; ValueError when it is not that."""
    if not isinstance(doc, dict) or not isinstance(doc.get("streams"), list):
        raise ValueError("ffprobe gave no stream list")
    found = []
    for stream in doc["streams"]:
        if isinstance(stream, dict):
            kind, name = stream.get("codec_type"), stream.get("codec_name")
            if isinstance(kind, str) and isinstance(name, str):
                found.append((kind, name))
    return found


def codec_plan(setting: str, probed: Iterable[tuple[str, str]] | None) -> tuple[Coding, Coding]:
    """(video, audio) coding for the `codec` setting: copy and encode as said; auto copies a kind only
    when every probed stream of it goes into MP4 as it is, and encodes when the probe failed (None)."""
    if setting == "copy":
        return Coding.COPY, Coding.COPY
    if setting == "encode" or probed is None:
        return Coding.ENCODE, Coding.ENCODE
    if setting != "auto":
        raise ValueError(f"codec must be auto, copy or encode, got {setting!r}")
    streams = list(probed)
    video = [name for kind, name in streams if kind == "video"]
    audio = [name for kind, name in streams if kind == "audio"]
    video_copy = bool(video) and all(name in COPYABLE_VIDEO for name in video)
    audio_copy = bool(audio) and all(name in COPYABLE_AUDIO for name in audio)
    return (Coding.COPY if video_copy else Coding.ENCODE, Coding.COPY if audio_copy else Coding.ENCODE)
