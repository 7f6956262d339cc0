"""SDP as GB/T 28181 uses it for Play, Playback and Download (Annex F): a pure codec, parsed by hand.

Generic SDP parsers choke on GB/T 28181's own lines (`y=` the SSRC as a decimal string, `f=` the media
format), so this module reads and writes them itself. `parse_sdp(body)` gives a `SessionDescription` or
raises `SdpError` naming the line that was wrong; `build_sdp(description)` writes exact bytes (CRLF line ends,
the order of the standard's examples: v o s u c t m a… y f). `play_offer`, `history_offer` and `answer_to`
make the descriptions the platform offers and the device simulator answers with.

Tolerated, because devices send it (shared/reference/gb28181.md §6.3, §12): a missing or different `y=`
(`ssrc` is None when absent or not a 32-bit decimal; `ssrc_text` keeps what came), free text in an answer's
`s=`, `s=` compared case-insensitively (`DoWnload`), lines of types this module does not know (kept in
`extra_lines`), blank lines, LF line ends, a missing `v=` or `t=`. Refused: a line that is not `x=value`, a
port or payload type out of range, no `m=` line, more than `MAX_LINES` lines or `MAX_BODY_BYTES` bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum

MAX_BODY_BYTES = 16 * 1024
MAX_LINES = 256
MAX_LINE_CHARS = 1024
MAX_MEDIA = 8
SSRC_DIGITS = 10  # Annex F: y= is a 10-digit decimal string
MAX_SSRC = 0xFFFFFFFF


class SdpError(ValueError):
    """An SDP body that cannot be read as GB/T 28181 Annex F describes; the message names the line."""


class SessionKind(StrEnum):
    """`s=` of an offer: what the platform asks for."""

    PLAY = "Play"
    PLAYBACK = "Playback"
    DOWNLOAD = "Download"


class MediaTransport(StrEnum):
    """`m=` protocol: RTP over UDP, or over TCP with RFC 4571 framing (Annex L)."""

    UDP = "RTP/AVP"
    TCP = "TCP/RTP/AVP"


class Setup(StrEnum):
    """`a=setup` (RFC 4145), from the SDP sender's point of view: `passive` listens, `active` connects."""

    ACTIVE = "active"
    PASSIVE = "passive"
    ACTPASS = "actpass"


class Direction(StrEnum):
    RECVONLY = "recvonly"
    SENDONLY = "sendonly"
    SENDRECV = "sendrecv"
    INACTIVE = "inactive"


@dataclass(frozen=True)
class RtpMap:
    """`a=rtpmap:96 PS/90000`."""

    payload_type: int
    encoding: str
    clock_rate: int


# The payload types GB/T 28181 offers for video (Annex C): PS, MPEG-4, H.264.
PS = RtpMap(96, "PS", 90000)
MPEG4 = RtpMap(97, "MPEG4", 90000)
H264 = RtpMap(98, "H264", 90000)
GB_VIDEO_RTPMAPS = (PS, H264, MPEG4)


@dataclass(frozen=True)
class Media:
    """One `m=` section with the attributes GB/T 28181 uses; `attributes` keeps every `a=` as sent
    (name, value or None), in order, including those given their own field."""

    kind: str
    port: int
    transport: str
    payload_types: tuple[int, ...]
    rtpmaps: tuple[RtpMap, ...] = ()
    direction: Direction | None = None
    setup: Setup | None = None
    connection: str | None = None
    download_speed: int | None = None
    file_size_bytes: int | None = None
    connection_address: str | None = None
    attributes: tuple[tuple[str, str | None], ...] = ()

    @property
    def is_tcp(self) -> bool:
        return self.transport.upper().startswith("TCP/")

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        return next((m for m in self.rtpmaps if m.payload_type == payload_type), None)


@dataclass(frozen=True)
class SessionDescription:
    """One SDP body. `start_time`/`stop_time` are the `t=` line: Unix seconds for Playback and Download
    (Annex F), 0 0 for live. `ssrc` is `int(y=)` when `y=` is a decimal that fits 32 bits."""

    origin_user: str
    origin_address: str
    session_name: str
    media: tuple[Media, ...]
    connection_address: str | None = None
    uri: str | None = None
    start_time: int = 0
    stop_time: int = 0
    ssrc_text: str | None = None
    format: str | None = None
    origin_session_id: str = "0"
    origin_version: str = "0"
    extra_lines: tuple[str, ...] = field(default=(), repr=False)

    @property
    def ssrc(self) -> int | None:
        text = self.ssrc_text
        if text is None or not text.isascii() or not text.isdigit() or len(text) > SSRC_DIGITS:
            return None
        value = int(text)
        return value if value <= MAX_SSRC else None

    @property
    def kind(self) -> SessionKind | None:
        """The session kind if `s=` names one (case-insensitively); None for an answer's free text."""
        return next((k for k in SessionKind if k.value.lower() == self.session_name.strip().lower()), None)

    @property
    def video(self) -> Media:
        """The video section (the first `m=video`, else the first section)."""
        return next((m for m in self.media if m.kind == "video"), self.media[0])

    def media_address(self, media: Media | None = None) -> str | None:
        """Where the media of a section goes: its own `c=`, else the session's."""
        section = media or self.video
        return section.connection_address or self.connection_address


_LINE_RE = re.compile(r"\A([a-z])=(.*)\Z")
_IP_ADDRESS_RE = re.compile(r"\A[0-9A-Za-z.:_-]{1,253}\Z")


def _int(text: str, what: str, lo: int, hi: int) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise SdpError(f"{what} is not a decimal number: {text[:40]!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise SdpError(f"{what} {value} is outside {lo}..{hi}")
    return value


def _connection(value: str) -> str:
    parts = value.split()
    if len(parts) < 3 or parts[0].upper() != "IN" or parts[1].upper() not in ("IP4", "IP6"):
        raise SdpError(f"c= is not 'IN IP4 address': {value[:60]!r}")
    address = parts[2].split("/")[0]
    if not _IP_ADDRESS_RE.match(address):
        raise SdpError(f"c= address {address[:60]!r} is not an address")
    return address


@dataclass
class _MediaBuilder:
    kind: str
    port: int
    transport: str
    payload_types: tuple[int, ...]
    rtpmaps: list[RtpMap] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    direction: Direction | None = None
    setup: Setup | None = None
    connection: str | None = None
    download_speed: int | None = None
    file_size_bytes: int | None = None
    connection_address: str | None = None

    def attribute(self, name: str, value: str | None, number: int) -> None:
        self.attributes.append((name, value))
        lowered = name.lower()
        if value is None:
            if lowered in {d.value for d in Direction}:
                self.direction = Direction(lowered)
            return
        if lowered == "rtpmap":
            self.rtpmaps.append(_rtpmap(value, number))
        elif lowered == "setup":
            try:
                self.setup = Setup(value.strip().lower())
            except ValueError:
                raise SdpError(
                    f"line {number}: a=setup:{value[:20]!r} is not active, passive or actpass") from None
        elif lowered == "connection":
            self.connection = value.strip().lower()
        elif lowered == "downloadspeed":
            self.download_speed = _int(value, f"line {number}: a=downloadspeed", 1, 1024)
        elif lowered == "filesize":
            self.file_size_bytes = _int(value, f"line {number}: a=filesize", 0, 2**63 - 1)

    def build(self) -> Media:
        return Media(kind=self.kind, port=self.port, transport=self.transport,
                     payload_types=self.payload_types,
                     rtpmaps=tuple(self.rtpmaps), direction=self.direction, setup=self.setup,
                     connection=self.connection, download_speed=self.download_speed,
                     file_size_bytes=self.file_size_bytes, connection_address=self.connection_address,
                     attributes=tuple(self.attributes))


def _rtpmap(value: str, number: int) -> RtpMap:
    head, _, rest = value.strip().partition(" ")
    encoding, _, clock = rest.strip().partition("/")
    if not encoding:
        raise SdpError(f"line {number}: a=rtpmap:{value[:40]!r} has no encoding name")
    return RtpMap(payload_type=_int(head, f"line {number}: rtpmap payload type", 0, 127),
                  encoding=encoding.strip(),
                  clock_rate=_int(clock.split("/")[0], f"line {number}: rtpmap clock rate", 1, 10**7))


def _media_line(value: str, number: int) -> _MediaBuilder:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"line {number}: m= is not 'media port proto fmt…': {value[:60]!r}")
    port = _int(parts[1].split("/")[0], f"line {number}: m= port", 0, 65535)
    payload_types = tuple(_int(p, f"line {number}: m= payload type", 0, 127) for p in parts[3:3 + 32])
    return _MediaBuilder(kind=parts[0].lower(), port=port, transport=parts[2], payload_types=payload_types)


def _decode(body: bytes) -> str:
    if len(body) > MAX_BODY_BYTES:
        raise SdpError(f"SDP of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    for codec in ("utf-8", "gb18030"):
        try:
            return body.decode(codec)
        except UnicodeDecodeError:
            continue
    raise SdpError("SDP is neither UTF-8 nor GB18030 text")


def parse_sdp(body: bytes) -> SessionDescription:
    """An SDP body (an INVITE's offer or a 200 OK's answer) as a `SessionDescription`."""
    text = _decode(body).rstrip("\x00")
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line]
    if len(lines) > MAX_LINES:
        raise SdpError(f"SDP of {len(lines)} lines exceeds {MAX_LINES}")
    origin: list[str] | None = None
    session_name: str | None = None
    uri = ssrc_text = media_format = connection_address = None
    start_time = stop_time = 0
    media: list[_MediaBuilder] = []
    extra: list[str] = []
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_CHARS:
            raise SdpError(f"line {number} of {len(line)} characters exceeds {MAX_LINE_CHARS}")
        match = _LINE_RE.match(line)
        if match is None:
            raise SdpError(f"line {number} is not 'x=value': {line[:60]!r}")
        kind, value = match.group(1), match.group(2).strip()
        current = media[-1] if media else None
        if kind == "v":
            if value != "0":
                raise SdpError(f"line {number}: v={value[:20]!r}, expected v=0")
        elif kind == "o":
            origin = value.split()
            if len(origin) < 6:
                raise SdpError(f"line {number}: o= is not 'user id version IN IP4 address': {value[:60]!r}")
        elif kind == "s":
            session_name = value
        elif kind == "u":
            uri = value
        elif kind == "c":
            address = _connection(value)
            if current is None:
                connection_address = address
            else:
                current.connection_address = address
        elif kind == "t":
            parts = value.split()
            if len(parts) != 2:
                raise SdpError(f"line {number}: t= is not 'start stop': {value[:60]!r}")
            start_time = _int(parts[0], f"line {number}: t= start", 0, 2**63 - 1)
            stop_time = _int(parts[1], f"line {number}: t= stop", 0, 2**63 - 1)
        elif kind == "m":
            if len(media) >= MAX_MEDIA:
                raise SdpError(f"more than {MAX_MEDIA} m= sections")
            media.append(_media_line(value, number))
        elif kind == "a" and current is not None:
            name, sep, attribute_value = value.partition(":")
            current.attribute(name.strip(), attribute_value if sep else None, number)
        elif kind == "y":
            ssrc_text = value
        elif kind == "f":
            media_format = value
        else:
            extra.append(line)  # b=, i=, k=, session-level a= ...: kept, not interpreted
    if not media:
        raise SdpError("no m= line")
    if origin is None:
        raise SdpError("no o= line")
    if session_name is None:
        raise SdpError("no s= line")
    return SessionDescription(
        origin_user=origin[0], origin_session_id=origin[1], origin_version=origin[2],
        origin_address=origin[5], session_name=session_name, media=tuple(m.build() for m in media),
        connection_address=connection_address, uri=uri, start_time=start_time, stop_time=stop_time,
        ssrc_text=ssrc_text, format=media_format, extra_lines=tuple(extra),
    )


def _clean(value: str, what: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise SdpError(f"{what} holds a line break or NUL")
    return value


def build_sdp(description: SessionDescription) -> bytes:
    """The exact bytes of `description`, CRLF line ends, in the order of the standard's examples."""
    d = description
    lines = ["v=0",
             f"o={d.origin_user} {d.origin_session_id} {d.origin_version} IN IP4 {d.origin_address}",
             f"s={d.session_name}"]
    if d.uri is not None:
        lines.append(f"u={d.uri}")
    if d.connection_address is not None:
        lines.append(f"c=IN IP4 {d.connection_address}")
    lines.append(f"t={d.start_time} {d.stop_time}")
    for m in d.media:
        formats = " ".join(str(p) for p in m.payload_types)
        lines.append(f"m={m.kind} {m.port} {m.transport} {formats}".rstrip())
        if m.connection_address is not None:
            lines.append(f"c=IN IP4 {m.connection_address}")
        lines.extend(f"a={name}" if value is None else f"a={name}:{value}" for name, value in m.attributes)
    if d.ssrc_text is not None:
        lines.append(f"y={d.ssrc_text}")
    if d.format is not None:
        lines.append(f"f={d.format}")
    return "".join(_clean(line, line[:2]) + "\r\n" for line in lines).encode("utf-8")


def media_attributes(*, direction: Direction, rtpmaps: tuple[RtpMap, ...], setup: Setup | None = None,
                     download_speed: int | None = None, file_size_bytes: int | None = None,
                     extra: tuple[tuple[str, str | None], ...] = ()) -> tuple[tuple[str, str | None], ...]:
    """The `a=` lines of a GB/T 28181 video section, in the order the standard's examples write them."""
    attributes: list[tuple[str, str | None]] = [(direction.value, None)]
    attributes += [("rtpmap", f"{m.payload_type} {m.encoding}/{m.clock_rate}") for m in rtpmaps]
    if setup is not None:
        attributes += [("setup", setup.value), ("connection", "new")]
    if download_speed is not None:
        attributes.append(("downloadspeed", str(download_speed)))
    if file_size_bytes is not None:
        attributes.append(("filesize", str(file_size_bytes)))
    return (*attributes, *extra)


def format_ssrc(ssrc: int) -> str:
    """`y=`: the SSRC as a 10-digit decimal string (Annex F)."""
    if not 0 <= ssrc <= MAX_SSRC:
        raise SdpError(f"SSRC {ssrc} does not fit 32 bits")
    return f"{ssrc:0{SSRC_DIGITS}d}"


def make_ssrc(*, history: bool, domain_id: str, stream_number: int) -> int:
    """An SSRC the way Annex F composes `y=`: first digit 0 live / 1 history, then digits 4 to 8 of the
    20-digit SIP domain id, then a 4-digit stream number within the domain."""
    if len(domain_id) < 8 or not domain_id[:8].isdigit():
        raise SdpError("domain id must start with 8 digits")
    if not 0 <= stream_number <= 9999:
        raise SdpError(f"stream number {stream_number} is outside 0..9999")
    return int(f"{1 if history else 0}{domain_id[3:8]}{stream_number:04d}")


def _video_media(*, port: int, transport: MediaTransport, setup: Setup | None, direction: Direction,
                 rtpmaps: tuple[RtpMap, ...], download_speed: int | None = None,
                 file_size_bytes: int | None = None) -> Media:
    if transport is MediaTransport.TCP and setup is None:
        raise SdpError("a TCP offer needs a=setup (active or passive)")
    if transport is MediaTransport.UDP and setup is not None:
        raise SdpError("a=setup belongs to TCP media only")
    if not 0 <= port <= 65535:
        raise SdpError(f"port {port} is outside 0..65535")
    attributes = media_attributes(direction=direction, rtpmaps=rtpmaps, setup=setup,
                                  download_speed=download_speed, file_size_bytes=file_size_bytes)
    return Media(kind="video", port=port, transport=transport.value,
                 payload_types=tuple(m.payload_type for m in rtpmaps), rtpmaps=rtpmaps, direction=direction,
                 setup=setup, connection="new" if setup else None, download_speed=download_speed,
                 file_size_bytes=file_size_bytes, attributes=attributes)


def play_offer(*, owner_id: str, address: str, port: int, ssrc: int,
               transport: MediaTransport = MediaTransport.UDP,
               setup: Setup | None = None) -> SessionDescription:
    """The platform's offer for live video (`s=Play`, `t=0 0`), receiving on `address:port`."""
    return SessionDescription(
        origin_user=owner_id, origin_address=address, session_name=SessionKind.PLAY.value,
        connection_address=address, start_time=0, stop_time=0, ssrc_text=format_ssrc(ssrc),
        media=(_video_media(port=port, transport=transport, setup=setup, direction=Direction.RECVONLY,
                            rtpmaps=GB_VIDEO_RTPMAPS),),
    )


def history_offer(kind: SessionKind, *, owner_id: str, channel_id: str, address: str, port: int, ssrc: int,
                  start_time: int, stop_time: int, transport: MediaTransport = MediaTransport.UDP,
                  setup: Setup | None = None, download_speed: int | None = None) -> SessionDescription:
    """The platform's offer for a recording (`s=Playback` or `s=Download`, `u=channel:0`, `t=` Unix
    seconds); `download_speed` only for Download."""
    if kind is SessionKind.PLAY:
        raise SdpError("history_offer is for Playback and Download; use play_offer")
    if stop_time < start_time:
        raise SdpError("t= stop before start")
    if download_speed is not None and kind is not SessionKind.DOWNLOAD:
        raise SdpError("a=downloadspeed belongs to Download only")
    return SessionDescription(
        origin_user=owner_id, origin_address=address, session_name=kind.value, uri=f"{channel_id}:0",
        connection_address=address, start_time=start_time, stop_time=stop_time, ssrc_text=format_ssrc(ssrc),
        media=(_video_media(port=port, transport=transport, setup=setup, direction=Direction.RECVONLY,
                            rtpmaps=GB_VIDEO_RTPMAPS, download_speed=download_speed),),
    )


_OPPOSITE_SETUP = {Setup.ACTIVE: Setup.PASSIVE, Setup.PASSIVE: Setup.ACTIVE, Setup.ACTPASS: Setup.ACTIVE}


def answer_to(offer: SessionDescription, *, owner_id: str, address: str, port: int, ssrc: int | None,
              session_name: str | None = None, file_size_bytes: int | None = None) -> SessionDescription:
    """A device's answer to `offer` (what the simulator sends in its 200 OK): sendonly, PS only, the
    opposite `a=setup` for TCP, `y=` as given (None leaves it out, as some devices do)."""
    offered = offer.video
    if 96 not in offered.payload_types:
        raise SdpError("the offer does not take PS (payload type 96)")
    transport = MediaTransport.TCP if offered.is_tcp else MediaTransport.UDP
    setup = _OPPOSITE_SETUP[offered.setup] if offered.setup is not None else None
    if transport is MediaTransport.TCP and setup is None:
        setup = Setup.ACTIVE  # Annex L: by default the device is the TCP client
    media = _video_media(port=port, transport=transport, setup=setup, direction=Direction.SENDONLY,
                         rtpmaps=(PS,), file_size_bytes=file_size_bytes)
    return SessionDescription(
        origin_user=owner_id, origin_address=address, session_name=session_name or offer.session_name,
        connection_address=address, start_time=0, stop_time=0,
        ssrc_text=format_ssrc(ssrc) if ssrc is not None else None, media=(media,),
    )


def with_ssrc(description: SessionDescription, ssrc_text: str | None) -> SessionDescription:
    """The same description with another `y=` (or none): for simulating devices that change it."""
    return replace(description, ssrc_text=ssrc_text)
