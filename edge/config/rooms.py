"""`[rooms]` of the station configuration: interview and hearing rooms (询问室/听证室) recorded by this PC.

Each ``[[rooms.room]]`` names a room (id, name, address) and its sources; each source is one ffmpeg
capture made of one or more ffmpeg inputs (``[[rooms.room.source.input]]``: a lavfi test source, a
V4L2 camera and an ALSA microphone, an RTSP URL). Off (no rooms) by default. What the sessions, capture
and sealing do with it: :mod:`edge.rooms`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge.config.base import IDENTIFIER, SecretRef, StrictModel
from edge.config.capture_devices import V4L2_FORMATS, check_capture_devices_apart
from edge.config.room_composite import RoomCompositeConfig, check_composite
from edge.config.serial_lines import check_serial_lines_apart

# ffmpeg option names (without the dash) an input may carry: `-video_size`, `-rtsp_transport`, ...
_OPTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Input formats (`-f`): demuxer and device names are short lower-case words.
_FORMAT = r"^[a-z0-9_]{1,32}$"
# Options of the input stage the argv builder sets itself (a second value would fight it).
_RESERVED_OPTIONS = frozenset({"f", "i", "re", "y", "n"})
# Input options an input may carry, by what reads the URL. ffmpeg takes its global options (progress,
# y, copyts, filter_script, ...) anywhere on its command line, and an option that takes no value leaves
# its "value" behind as an extra output file: so an allow-list, never a deny-list. Every name is one the
# installed ffmpeg (Debian 12's 5.1) knows (tests/rooms/test_review21_ffmpeg_lists.py): `stimeout`, gone
# in 5.1, is `timeout`.
_GENERIC_INPUT_OPTIONS = frozenset({
    "thread_queue_size", "probesize", "analyzeduration", "fpsprobesize", "fflags", "max_delay",
    "rtbufsize", "use_wallclock_as_timestamps",
})
_NETWORK_INPUT_OPTIONS = frozenset({
    "rtsp_transport", "rtsp_flags", "allowed_media_types", "timeout", "rw_timeout",
    "reorder_queue_size", "buffer_size", "recv_buffer_size", "user_agent", "min_port", "max_port",
    "protocol_whitelist", "reconnect", "reconnect_streamed", "reconnect_delay_max", "fifo_size",
    "overrun_nonfatal", "pkt_size", "localaddr", "latency",
})
_DEVICE_INPUT_OPTIONS: dict[str, frozenset[str]] = {
    "v4l2": frozenset({"input_format", "video_size", "framerate", "pixel_format", "standard", "channel",
                       "timestamps", "ts", "use_libv4l2"}),
    "alsa": frozenset({"sample_rate", "channels"}),
    "pulse": frozenset({"sample_rate", "channels", "server", "name", "stream_name", "frame_size",
                        "fragment_size"}),
    "lavfi": frozenset(),
}
_DEVICE_INPUT_OPTIONS["video4linux2"] = _DEVICE_INPUT_OPTIONS["v4l2"]
# What a lavfi input may be: a chain of these filters (sources, and what paces or trims them). movie,
# amovie, drawtext (textfile=), sendcmd (f=), signature (filename=), life and cellauto (filename=: their
# starting pattern), plugin hosts (ladspa, lv2, frei0r)
# and every other filter that reads or writes files or loads code are left out.
_LAVFI_FILTERS = frozenset({
    "testsrc", "testsrc2", "smptebars", "smptehdbars", "rgbtestsrc", "yuvtestsrc", "color", "nullsrc",
    "pal75bars", "pal100bars", "allrgb", "allyuv", "mandelbrot",
    "sine", "anullsrc", "anoisesrc",
    "realtime", "arealtime", "trim", "atrim", "setpts", "asetpts", "fps", "scale", "format", "aformat",
    "aresample", "volume", "null", "anull", "setsar", "pad", "crop", "hflip", "vflip", "tpad", "apad",
})
LAVFI_FILTERS = _LAVFI_FILTERS  # checked against the installed ffmpeg by the tests
_LAVFI_FILTER = re.compile(r"^([a-z0-9_]+)(=[A-Za-z0-9_=:.+*/#@%-]*)?$")
# URL schemes a non-device input may read (none that reads a local file behind the station's back:
# file:, concat:, subfile:, data:, pipe:, fd:, crypto:, cache: ...); a plain absolute path is a file.
_URL_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "tcp", "udp", "rtp", "srt"})
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

# A URL with an authority part (rtsp://host:554/..., http://host/...): what `username`/`password` go into.
_URL_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")
# The pydantic error type of a URL carrying credentials: its value is never echoed (edge.config.base).
URL_USERINFO_ERROR = "url_userinfo"
# Names of URL parameters that carry a camera's credentials in its path or query (XMEye-style
# rtsp://host/user=admin&password=...&channel=1, MJPEG http://cam/video.cgi?user=admin&pwd=...), compared
# case-insensitively. Their value may only be a placeholder the station fills from the references.
CREDENTIAL_PARAMETERS = frozenset({
    "user", "username", "usr", "login", "loginuse", "account",
    "password", "pwd", "passwd", "pass", "passw", "pw", "psw", "loginpas",
})
USERNAME_PLACEHOLDER = "{username}"
PASSWORD_PLACEHOLDER = "{password}"
# NAME=VALUE in a URL's path or query: after / ? & ; or _ (XMEye also writes user=a_password=b_channel=1);
# the value runs to the next separator (an underscore only when a NAME= follows it).
URL_PARAMETER = re.compile(r"(?:^|(?<=[/?&;_]))([A-Za-z]+)=((?:(?!_[A-Za-z]+=)[^/?&;#\s])*)")


# Local capture devices by a name that stays theirs across reboots and replugging: udev's V4L2 links (by
# the camera's USB serial or model, or by the port it is plugged into) and ALSA's card names. The kernel's
# numbers (/dev/video0, hw:1,0) go to whichever device the kernel finds first.
# Each alone in its source (RoomSourceConfig): one device that cannot be opened stops its whole ffmpeg.
LOCAL_CAPTURE_FORMATS = V4L2_FORMATS | {"alsa", "pulse"}
_STABLE_V4L2 = re.compile(r"^/dev/v4l/by-(id|path)/[A-Za-z0-9._:+-]{1,200}$")
_STABLE_ALSA = re.compile(
    r"^(hw|plughw|dsnoop|sysdefault|front):CARD=[A-Za-z0-9_-]{1,32}(,DEV=[0-9]{1,2})?$")
# PulseAudio's (and PipeWire's) source names from udev: the card's bus id (its USB model and serial, or
# its PCI or platform address). Not a source's index, nor the default source (whichever the sound server
# picked last), nor a name built from an ALSA card number (alsa_input.1.analog-stereo).
_STABLE_PULSE = re.compile(r"^alsa_input\.(usb|pci|platform)-[A-Za-z0-9._:+-]{1,200}$")
_KERNEL_V4L2_HINT = ("a kernel device number (/dev/videoN) goes to whichever camera the kernel finds "
                     "first after a reboot or a replug: name the camera by its udev link, "
                     "/dev/v4l/by-id/usb-<maker>_<model>_<serial>-video-index0 or "
                     "/dev/v4l/by-path/<port>-video-index0 (ls -l /dev/v4l/by-id)")
_KERNEL_ALSA_HINT = ("an ALSA card number (hw:1,0) goes to whichever card the kernel finds first after a "
                     "reboot or a replug: name the microphone by its card name, hw:CARD=<name>,DEV=<n> or "
                     "plughw:CARD=<name>,DEV=<n> (arecord -L lists them)")

_UNSTABLE_PULSE_HINT = ("a sound server's source index, its default source or a name built from a card "
                        "number goes to whichever microphone it finds or picks first after a reboot or a "
                        "replug: name the microphone by its udev name, "
                        "alsa_input.usb-<maker>_<model>_<serial>-00.<profile> or "
                        "alsa_input.pci-<address>.<profile> (pactl list short sources)")


def stable_device_problem(format_name: str, url: str) -> str | None:
    """Why `url` is not a stable name of a local capture device of `format_name` (None: it is one, or
    the input is no such device)."""
    if format_name in V4L2_FORMATS and not _STABLE_V4L2.fullmatch(url):
        return f"v4l2 device {url[:80]!r}: {_KERNEL_V4L2_HINT}"
    if format_name == "alsa" and not _STABLE_ALSA.fullmatch(url):
        return f"alsa device {url[:80]!r}: {_KERNEL_ALSA_HINT}"
    if format_name == "pulse" and not _STABLE_PULSE.fullmatch(url):
        return f"pulse source {url[:80]!r}: {_UNSTABLE_PULSE_HINT}"
    return None


def allowed_input_options() -> frozenset[str]:
    """Every input option some input may carry (tests check each against the installed ffmpeg)."""
    devices = frozenset().union(*_DEVICE_INPUT_OPTIONS.values())
    return _GENERIC_INPUT_OPTIONS | _NETWORK_INPUT_OPTIONS | devices


def allowed_input_formats() -> frozenset[str]:
    """The input formats (``-f``) with options of their own."""
    return frozenset(_DEVICE_INPUT_OPTIONS)


def url_credential_parameters(url: str) -> list[tuple[str, str]]:
    """(name, value) of each credential-looking parameter in the path or query of `url`."""
    authority = _URL_AUTHORITY.match(url)
    rest = url[authority.end():] if authority else url
    return [(m[1], m[2]) for m in URL_PARAMETER.finditer(rest) if m[1].lower() in CREDENTIAL_PARAMETERS]


def _credentials_in_url(url: str) -> str | None:
    """Why `url` carries credentials (never their value), or None."""
    if (authority := _URL_AUTHORITY.match(url)) and "@" in authority[1]:
        return ("url carries credentials (user:password@): give them as references in username and "
                "password (env:NAME, file:/path, credential:NAME), never in the configuration file")
    literal = [name for name, value in url_credential_parameters(url)
               if value not in (USERNAME_PLACEHOLDER, PASSWORD_PLACEHOLDER)]
    if literal:
        names = ", ".join(name + "=" for name in literal)
        return (f"url carries credentials in its path or query ({names}): write {USERNAME_PLACEHOLDER} or "
                f"{PASSWORD_PLACEHOLDER} as their value and give the credentials as "
                "references in username and password (env:NAME, file:/path, credential:NAME), filled in "
                "when ffmpeg is started; never in the configuration file")
    return None


def _plain_text(value: str, what: str) -> str:
    if not value.isprintable():
        raise ValueError(f"{what} must be printable text without control characters")
    return value


class RoomInputConfig(StrictModel):
    """One ffmpeg input (`-f FORMAT [-OPTION VALUE ...] [-re] -i URL`)."""

    url: str = Field(
        min_length=1, max_length=1024,
        description="What -i reads: a lavfi graph (testsrc2=size=1280x720:rate=25), a device "
        "by a stable name (/dev/v4l/by-id/..., /dev/v4l/by-path/..., hw:CARD=NAME,DEV=0), an rtsp:// "
        "URL. Never credentials: a camera that takes them in "
        "its path or query (rtsp://host/user={username}&password={password}&channel=1) gets the "
        "placeholders {username} and {password}, filled from username and password when ffmpeg starts",
    )
    format: str = Field("", pattern=rf"^({_FORMAT[1:-1]})?$",
                        description="-f before -i (lavfi, v4l2, alsa, rtsp); empty: ffmpeg guesses")
    options: dict[str, str] = Field(
        default_factory=dict,
        description="Input options without the dash (video_size = \"1280x720\", rtsp_transport = \"tcp\")",
    )
    realtime: bool = Field(
        False, description="-re: read at the input's own rate; needed for generated (lavfi) and file "
        "inputs, never for cameras and microphones, which deliver in real time by nature",
    )
    username: SecretRef | None = Field(
        None, description="Reference (env:, file:, credential:) to the camera's user name, put into the "
        "URL only when ffmpeg is started: into its placeholders {username}/{password} when it has them, "
        "else as scheme://USER:PASSWORD@host; never written in url itself",
    )
    password: SecretRef | None = Field(
        None, description="Reference (env:, file:, credential:) to the camera's password (see username)",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _url_without_credentials(cls, value: object) -> object:
        # Before every other check, so that no other error about this URL echoes its credentials.
        if isinstance(value, str) and (why := _credentials_in_url(value)) is not None:
            raise PydanticCustomError(URL_USERINFO_ERROR, why)
        return value

    @field_validator("url")
    @classmethod
    def _url_printable(cls, value: str) -> str:
        return _plain_text(value, "url")

    @model_validator(mode="after")
    def _what_ffmpeg_reads(self) -> RoomInputConfig:
        device = _DEVICE_INPUT_OPTIONS.get(self.format)
        allowed = _GENERIC_INPUT_OPTIONS | (_NETWORK_INPUT_OPTIONS if device is None else device)
        for name in self.options:
            if name not in allowed:
                raise ValueError(
                    f"option {name!r} is not an input option the station passes to ffmpeg for "
                    f"{'format ' + self.format if self.format else 'this input'} (allowed: "
                    f"{', '.join(sorted(allowed))}): ffmpeg would take it anywhere on its command line"
                )
        if (device_problem := stable_device_problem(self.format, self.url)) is not None:
            raise ValueError(device_problem)
        if self.format == "lavfi":
            for part in self.url.split(","):
                match = _LAVFI_FILTER.fullmatch(part.strip())
                if match is None or match[1] not in _LAVFI_FILTERS:
                    raise ValueError(
                        f"lavfi filter {part.strip()[:40]!r} is not allowed: a lavfi input is a chain of "
                        f"generated sources and pacing filters ({', '.join(sorted(_LAVFI_FILTERS))}), no "
                        "labels, quotes or filters that read or write files (movie, amovie, ...)"
                    )
        elif device is None:
            scheme = _URL_SCHEME.match(self.url)
            if scheme is not None and scheme[1].lower() == "unix":
                pass  # a local socket (GB/T 28181 live video): ffmpeg only reads from it
            elif scheme is not None and scheme[1].lower() not in _URL_SCHEMES:
                raise ValueError(
                    f"url protocol {scheme[1]!r} is not allowed (allowed: {', '.join(sorted(_URL_SCHEMES))}, "
                    "unix:, or an absolute path): concat:, file:, subfile:, data: and the like read files "
                    "behind the station's back"
                )
            elif scheme is None and not self.url.startswith("/"):
                raise ValueError("url must be a URL (rtsp://...), unix:PATH or an absolute path")
        return self

    @model_validator(mode="after")
    def _credentials_need_a_url(self) -> RoomInputConfig:
        if (self.username is not None or self.password is not None) and not _URL_AUTHORITY.match(self.url):
            raise ValueError("username and password are for a URL input (rtsp://host/...), not for " + (
                f"format {self.format}" if self.format else "this url"))
        if self.password is not None and self.username is None:
            raise ValueError("password needs a username (a URL's credentials are user:password)")
        for placeholder, reference in ((USERNAME_PLACEHOLDER, self.username),
                                       (PASSWORD_PLACEHOLDER, self.password)):
            if placeholder in self.url and reference is None:
                raise ValueError(f"url has the placeholder {placeholder}: give the reference it is filled "
                                 f"from in {placeholder.strip('{}')} (env:NAME, file:/path, credential:NAME)")
        return self

    @field_validator("options")
    @classmethod
    def _options_plain(cls, value: dict[str, str]) -> dict[str, str]:
        for name, option in value.items():
            if not _OPTION_NAME.fullmatch(name):
                raise ValueError(f"option name {name!r} must be a lower-case ffmpeg option without the dash")
            if name in _RESERVED_OPTIONS:
                raise ValueError(f"option {name!r} is set by the station itself (use format/realtime/url)")
            _plain_text(option, f"option {name}")
            if len(option) > 256:
                raise ValueError(f"option {name} is longer than 256 characters")
        return value


class RoomGbChannelConfig(StrictModel):
    """A GB/T 28181 camera channel as a room source (`[rooms.room.source.gb28181]`): its live Play
    (edge.gb28181.live) read from the channel's local socket; the device registers to this station's
    platform ([gb28181], which must be enabled)."""

    device_id: str = Field(pattern=r"^[0-9]{20}$", description="The device's 20-digit GB/T 28181 id")
    channel_id: str = Field(pattern=r"^[0-9]{20}$", description="The channel's 20-digit id (a camera: "
                            "type code 131 in digits 11-13)")


class RoomSourceConfig(StrictModel):
    """One capture of a room: its inputs (or a GB/T 28181 channel) become one MP4 segment stream."""

    id: Annotated[str, Field(pattern=IDENTIFIER, description="Source id, unique in its room")]
    name: str = Field("", max_length=64, description="Human name (全景, 特写, 话筒)")
    input: list[RoomInputConfig] = Field(
        default_factory=list, max_length=4,
        description="ffmpeg inputs, in order (at least one, unless the source is a gb28181 channel)",
    )
    gb28181: RoomGbChannelConfig | None = Field(
        None, description="A GB/T 28181 channel instead of inputs: its live video, stream-copied, and its "
        "G.711 sound (PSM stream type 0x90/0x91, taken out of the PS by the agent, encoded to AAC); a camera "
        "whose sound is not G.711 records video only",
    )
    codec: Literal["auto", "copy", "encode"] = Field(
        "auto",
        description="copy: stream copy (the inputs deliver H.264/HEVC video and AAC audio); encode: "
        "libx264 + AAC; auto: ffprobe the inputs at each start and copy what MP4 takes as it is",
    )
    max_bitrate_mbps: float = Field(
        40.0, ge=0.1, le=1000,
        description="The most this source may write to the store, in Mbit/s by the station's clock "
        "(whatever its own timestamps say): a run that writes more, beyond 40 s of it (a camera's burst "
        "as it connects), is ended as a flood (a gap, reason source-flood) and restarted after the backoff. "
        "Set it well above the camera's own bitrate (a 1080p camera sends 2-8 Mbit/s, a 4K one up to 25)",
    )

    @field_validator("name")
    @classmethod
    def _name_printable(cls, value: str) -> str:
        return _plain_text(value, "name")

    @model_validator(mode="after")
    def _inputs_or_channel(self) -> RoomSourceConfig:
        if self.gb28181 is not None and self.input:
            raise ValueError(f"source {self.id}: a gb28181 source has no input (its channel's live socket "
                             "is its input)")
        if self.gb28181 is None and not self.input:
            raise ValueError(f"source {self.id}: needs at least one input, or a gb28181 channel")
        devices = [n for n, spec in enumerate(self.input, 1) if spec.format in LOCAL_CAPTURE_FORMATS]
        if devices and len(self.input) > 1:
            raise ValueError(
                f"source {self.id}: a local capture device ("
                + ", ".join(f"input {n} {self.input[n - 1].format}" for n in devices)
                + ") beside other inputs, and a source is one ffmpeg: a device that cannot be "
                "opened (busy, unplugged, its card gone after a USB reset) stops the other inputs with it "
                "for as long as it lasts, and the other way round. Give each capture device a source of "
                "its own (the camera one, its microphone another: the session records, seals and times "
                "both alike); a network camera's own sound is one input and needs nothing")
        return self


# Serial lines a room's hardware may be on: a device node (better the stable /dev/serial/by-id/...) or a
# pyserial network URL. Not pyserial's other handlers: hwgrep:// opens whatever port a pattern matches,
# spy:// writes a trace, alt:// and loop:// are no hardware.
_SERIAL_PORT = r"^(/dev/[A-Za-z0-9._:+/-]{1,200}|(socket|rfc2217)://[A-Za-z0-9.:\[\]-]{1,200}(/[A-Za-z0-9._=&?-]{0,100})?)$"


def serial_port_value(value: str) -> str:
    """A serial port setting's value, refused with a reason when it is a path with . or .. in it."""
    if value.startswith("/") and any(part in (".", "..") for part in value.split("/")):
        raise ValueError("a serial port path must not contain . or .. components (use /dev/serial/by-id/...)")
    return value


class RoomPanelCaseConfig(StrictModel):
    """The case a session started by the panel's START button is bound to: a room whose proceedings
    belong to one standing case or docket (a hearing room assigned to a case for the day). Without it,
    START is refused (the lamp shows REFUSE) and the session is started with its case from the station."""

    case_number: str = Field(min_length=1, max_length=64, description="案件编号 of sessions started by START")
    collector: str = Field(min_length=1, max_length=64, description="采集人: who runs the room's recordings")
    collector_no: str = Field("", max_length=64, description="The collector's number (警号), if any")
    subject: str = Field(min_length=1, max_length=256, description="证明对象: what the recordings prove")

    @field_validator("case_number", "collector", "collector_no", "subject")
    @classmethod
    def _printable(cls, value: str) -> str:
        if value != value.strip():
            raise ValueError("must not start or end with white space")
        return _plain_text(value, "case field")


class RoomPanelConfig(StrictModel):
    """The room's recording lamp and button panel (drivers/serial/ROOM_PANEL_PROTOCOL.md)."""

    port: str = Field(pattern=_SERIAL_PORT, description="Serial line: /dev/serial/by-id/..., "
                      "socket://host:port or rfc2217://host:port")
    baudrate: int = Field(115200, ge=1200, le=921600, description="Line speed (8N1)")
    start_case: RoomPanelCaseConfig | None = Field(
        None,
        description="The case START binds its session to; none: START is refused, start from the station",
    )
    refusal_show_s: float = Field(3.0, ge=0.5, le=30, description="How long the lamp shows REFUSE after a "
                                  "refused button press")
    sensor_poll_s: float = Field(30.0, ge=1, le=3600, description="How often the climate sensor is read")
    reply_timeout_s: float = Field(0.5, gt=0, le=10, description="Wait for each reply before a re-send")
    heartbeat_s: float = Field(2.0, gt=0, le=60, description="Heartbeat period (a silent panel is lost "
                               "after about heartbeat_s + 3 x reply_timeout_s)")
    reconnect_max_s: float = Field(30.0, ge=0.1, le=600, description="Longest wait between attempts to open "
                                   "a panel that went away")

    @field_validator("port")
    @classmethod
    def _port(cls, value: str) -> str:
        return serial_port_value(value)


class RoomPtzConfig(StrictModel):
    """A Pelco-D PTZ camera of the room: sent to `preset` when a session starts."""

    port: str = Field(pattern=_SERIAL_PORT, description="Serial line (RS-485 adapter) of the camera")
    address: int = Field(ge=1, le=255, description="The camera's Pelco-D address (its DIP switches)")
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400] = Field(2400, description="Line speed (8N1)")
    preset: int = Field(ge=1, le=255, description="Preset the camera goes to at every session start (the "
                        "installer stores it on the camera: the frame that shows the person questioned)")

    @field_validator("port")
    @classmethod
    def _port(cls, value: str) -> str:
        return serial_port_value(value)


class RoomConfig(StrictModel):
    id: Annotated[str, Field(pattern=IDENTIFIER, description="Room id, unique on the station")]

    @model_validator(mode="before")
    @classmethod
    def _no_credentials_in_urls(cls, data: object) -> object:
        # Before any input is validated, so that the error names the room and source (the input's own
        # check, kept for an input built alone, can only name its position) and echoes nothing of the URL.
        if not isinstance(data, dict):
            return data
        sources = data.get("source")
        for source in sources if isinstance(sources, list) else []:
            inputs = source.get("input") if isinstance(source, dict) else None
            for number, spec in enumerate(inputs if isinstance(inputs, list) else [], 1):
                url = spec.get("url") if isinstance(spec, dict) else None
                if isinstance(url, str) and (why := _credentials_in_url(url)) is not None:
                    raise PydanticCustomError(URL_USERINFO_ERROR, "room {room}, source {source}, input "
                                              "{number}: {why}", {"room": str(data.get("id"))[:64],
                                                                  "source": str(source.get("id"))[:64],
                                                                  "number": number, "why": why})
        return data
    name: str = Field(min_length=1, max_length=64, description="Room name (第一询问室)")
    address: str = Field(min_length=1, max_length=256, description="Where the room is: its part of the "
                         "session's location (采集地点)")
    source: list[RoomSourceConfig] = Field(min_length=1, max_length=8, description="The room's captures")
    panel: RoomPanelConfig | None = Field(None, description="Lamp and buttons ([rooms.room.panel])")
    ptz: RoomPtzConfig | None = Field(None, description="PTZ camera, to a preset at start ([rooms.room.ptz])")
    composite: RoomCompositeConfig | None = Field(
        None, description="Burnt-in overlay and picture-in-picture, an extra derived output beside the "
        "originals (edge.config.room_composite); none: off",
    )

    @field_validator("name", "address")
    @classmethod
    def _printable(cls, value: str) -> str:
        return _plain_text(value, "room name and address")

    @model_validator(mode="after")
    def _sources_unique(self) -> RoomConfig:
        ids = [s.id for s in self.source]
        if len(set(ids)) != len(ids):
            raise ValueError(f"room {self.id}: source ids must be unique")
        if self.composite is not None:
            check_composite(self.id, self.source, self.composite)
        return self


class RoomsSection(StrictModel):
    """Interview and hearing rooms recorded by this station (edge.rooms). Empty: no rooms."""

    room: list[RoomConfig] = Field(default_factory=list, description="The rooms ([[rooms.room]])")
    segment_time_s: float = Field(
        10.0, ge=0.5, le=600,
        description="Length of each sealed segment; each is hashed and chained within a second of closing",
    )
    mp4_layout: Literal["fragmented", "plain", "faststart"] = Field(
        "fragmented",
        description="fragmented: a segment cut short by a crash still plays; plain: moov at the end; "
        "faststart: moov moved to the front when the segment closes (costs a rewrite, so seal latency)",
    )
    stale_margin_s: float = Field(
        5.0, gt=0, le=600,
        description="A source with no new segment and no progress from its ffmpeg (frames muxed) for "
        "segment_time_s + this is restarted (a gap); a segment open for 10 times that too",
    )
    late_start_gap_s: float = Field(
        2.0, ge=0.5, le=60,
        description="A source whose first media of the session comes later than this after it was started "
        "(connection, probe, a camera waking up) has that unrecorded start as a gap (source-late-start)",
    )
    start_grace_s: float = Field(
        10.0, ge=0, le=600,
        description="A run's start-up allowance (RTSP connect, a camera waking up, a long GOP): its "
        "first segment may take segment_time_s + stale_margin_s + this, counted from the end of the probe "
        "(codec = auto), whose own deadline is this plus 60 % of segment_time_s + stale_margin_s; later "
        "segments are judged as usual",
    )
    restart_backoff_initial_s: float = Field(0.5, ge=0, le=60, description="First restart delay")
    restart_backoff_max_s: float = Field(10.0, ge=0, le=600, description="Longest restart delay")
    ffmpeg: str = Field("ffmpeg", pattern=r"^(/[^\x00-\x1f]{1,255}|[A-Za-z0-9._+-]{1,64})$",
                        description="ffmpeg command (name on PATH or absolute path)")
    ffprobe: str = Field("ffprobe", pattern=r"^(/[^\x00-\x1f]{1,255}|[A-Za-z0-9._+-]{1,64})$",
                         description="ffprobe command, for codec = auto")
    start_min_free_bytes: int = Field(
        8 << 30, ge=0,
        description="A session refuses to start while the store's disk has less free than this (room for "
        "its expected length: 8 GiB is some 4 hours of two 1080p sources at 4 Mbit/s), beyond the offload "
        "reserve",
    )
    stop_timeout_s: float = Field(
        15.0, gt=0, le=300, description="How long ffmpeg has to close its last segment after being asked to",
    )
    record_margin_bytes: int = Field(
        256 << 20, ge=1 << 20, le=1 << 40,
        description="While rooms record, the store's free space is kept above its reserve ([offload] "
        "min_free_bytes) plus this: under it the source writing the most is stopped (a gap, reason "
        "disk-reserve; what it wrote is sealed) until space is freed. Room to seal what the sources wrote "
        "meanwhile: more than a segment of every source (the sealer copies a segment before removing it)",
    )
    reserve_check_s: float = Field(
        0.5, gt=0, le=10,
        description="While rooms record, the store's free space is read this often against the recording "
        "reserve (a flood at 200 Mbit/s writes 12.5 MB in 0.5 s: keep the margin well above that)",
    )
    space_check_s: float = Field(
        10.0, gt=0, le=600, description="While a room records, the store's free space is read this often",
    )
    space_rate_window_s: float = Field(
        120.0, gt=0, le=3600,
        description="The rate free space falls at is measured over this long (a closing segment or a "
        "deleted file moves it in steps)",
    )
    space_warn_minutes: float = Field(
        60.0, gt=0, le=24 * 60,
        description="A space_warning (low) when the store reaches its reserve within this many minutes at "
        "the present rate",
    )
    max_documents_per_session: int = Field(
        50, ge=1, le=10_000,
        description="Documents (笔录, scanned statements) a session takes at most: each is kept for good and "
        "goes on its disc; one more is refused",
    )
    max_document_bytes_per_session: int = Field(
        512 << 20, ge=1 << 20, le=1 << 40,
        description="Bytes a session's documents take at most together (one document is at most 64 MiB): "
        "a disc (DVD 4.7 GB) must still hold the recordings; a document that would pass it is refused",
    )
    space_critical_minutes: float = Field(
        10.0, gt=0, le=24 * 60, description="A space_warning (critical) within this many minutes",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RoomsSection:
        ids = [r.id for r in self.room]
        if len(set(ids)) != len(ids):
            raise ValueError("room ids must be unique")
        if self.restart_backoff_max_s < self.restart_backoff_initial_s:
            raise ValueError("restart_backoff_max_s must be >= restart_backoff_initial_s")
        # Each serial line is opened exclusively by one driver: two users of one line would fight.
        check_serial_lines_apart(self.serial_ports())
        # Each local capture device is opened by one source: two would fight at run time.
        check_capture_devices_apart(self.capture_inputs())
        if self.space_critical_minutes >= self.space_warn_minutes:
            raise ValueError("space_critical_minutes must be < space_warn_minutes")
        # The margin must hold what the fastest source may write between two looks at the disk (twice).
        fastest = max((s.max_bitrate_mbps for room in self.room for s in room.source), default=0.0)
        needed = int(2 * self.reserve_check_s * fastest * 1_000_000 / 8)
        if self.record_margin_bytes < needed:
            raise ValueError(f"record_margin_bytes ({self.record_margin_bytes}) must be at least {needed}: "
                             f"twice what the fastest source may write ({fastest:g} Mbit/s, "
                             f"max_bitrate_mbps) in reserve_check_s ({self.reserve_check_s:g} s)")
        return self

    def serial_ports(self) -> list[tuple[str, str]]:
        """(user, port) of every serial device of the rooms (panels and PTZ buses)."""
        return [(f"room {room.id} {kind}", device.port) for room in self.room
                for kind, device in (("panel", room.panel), ("ptz", room.ptz)) if device is not None]

    def capture_inputs(self) -> list[tuple[str, str, str]]:
        """(user, format, url) of every input of the rooms' sources."""
        return [(f"room {room.id} source {source.id}", spec.format, spec.url) for room in self.room
                for source in room.source for spec in source.input]

    def room_by_id(self, room_id: str) -> RoomConfig | None:
        return next((r for r in self.room if r.id == room_id), None)
