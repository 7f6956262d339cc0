"""The wire grammar of EMQX "File Transfer over MQTT", as a pure codec: topics, init payload, results.

No I/O and no MQTT library here: the station's sender, the central's receiver and the tests all build
and parse the same bytes through these functions. The grammar follows the EMQX documentation
(``develop/file-transfer/client.md``) and the broker's own parser (``emqx_ft.erl``):

=====================================================  ===============================================
topic                                                  payload
=====================================================  ===============================================
``$file/{file_id}/init``                               JSON ``{"name", "size", "checksum", "expire_at",
                                                       "segments_ttl", "user_data"}``; ``name`` required
``$file/{file_id}/{offset}``                           the bytes of one segment, at ``offset``
``$file/{file_id}/{offset}/{checksum}``                the same, ``checksum`` = SHA-256 of the segment
``$file/{file_id}/fin/{file_size}``                    empty
``$file/{file_id}/fin/{file_size}/{checksum}``         empty; ``checksum`` = SHA-256 of the whole file,
                                                       taking precedence over the one of ``init``
``$file/{file_id}/abort``                              empty (in EMQX's code; a no-op there)
``$file-async/...``                                    every form above, answered asynchronously
``$file-response/{client_id}``                         JSON ``{"vsn": "0.1", "topic", "packet_id",
                                                       "reason_code", "reason_description"}``
=====================================================  ===============================================

Every command is published with QoS 1. Results are PUBACK reason codes (:class:`ReasonCode`); in the
asynchronous mode a PUBACK of 0 only means "accepted", and the result comes on the response topic.
Through a broker that does not implement file transfer (Mosquitto), a PUBACK only means the *broker*
took the message (Mosquitto acknowledges even with no subscriber), so a station counts a command as done
only when a result arrives on the response topic from the receiver.

Stricter than EMQX, on purpose (the peers are our own stations; everything else is hostile input):

- a file id is 1 to 128 characters of ``A-Z a-z 0-9 . _ -`` not starting with a dot (EMQX takes any
  non-empty topic level); it is never used as a path (the central derives its own ids);
- offsets and sizes are plain decimal digits without sign or leading zeros (one topic per offset, so a
  duplicate is recognisable), at most :data:`MAX_FILE_BYTES`;
- checksums are 64 hex digits (either case accepted, lower case produced and compared);
- the init payload is at most :data:`MAX_INIT_PAYLOAD_BYTES`, strict JSON (no duplicate keys, no NaN),
  with no members beyond the six documented; ``user_data`` is a JSON object;
- the file ``name`` is at most 240 bytes of UTF-8 (EMQX's limit), kept exactly as metadata and never
  trusted as a path: :func:`safe_file_name` gives the percent-encoded form EMQX would store, and
  :func:`edge.custody.text.printable` is how it is shown.

Every refusal is a :class:`FileTransferError` whose message names the part that was wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from edge.custody.canonical import parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.text import printable

__all__ = [
    "MAX_CLIENT_ID_CHARS",
    "MAX_FILE_BYTES",
    "MAX_FILE_ID_CHARS",
    "MAX_INIT_PAYLOAD_BYTES",
    "MAX_NAME_BYTES",
    "RESPONSE_ROOT",
    "RESPONSE_VSN",
    "AbortCommand",
    "Command",
    "FileMeta",
    "FileResponse",
    "FileTransferError",
    "FinCommand",
    "InitCommand",
    "Mode",
    "ReasonCode",
    "SegmentCommand",
    "check_checksum",
    "check_client_id",
    "check_file_id",
    "parse_command_topic",
    "parse_init_payload",
    "parse_response_payload",
    "parse_response_topic",
    "parse_scoped_topic",
    "publish_packet_bytes",
    "response_topic",
    "safe_file_name",
    "scoped_topic",
    "transfer_upload_id",
]

RESPONSE_ROOT = "$file-response"
RESPONSE_VSN = "0.1"
# EMQX's MAX_FILENAME_BYTELEN.
MAX_NAME_BYTES = 240
MAX_FILE_ID_CHARS = 128
MAX_CLIENT_ID_CHARS = 64
# 2**63 - 1: what a signed 64-bit offset can hold; far beyond any evidence file.
MAX_FILE_BYTES = 2**63 - 1
# The six documented members with a generous user_data: a larger init is damage or an attack.
MAX_INIT_PAYLOAD_BYTES = 16 * 1024
MAX_RESPONSE_PAYLOAD_BYTES = 4 * 1024
_MAX_DESCRIPTION_CHARS = 512
# MQTT's largest packet identifier.
_MAX_PACKET_ID = 65535

_FILE_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
# The station id grammar of edge.config.base.IDENTIFIER: a station's MQTT client id is its station id.
_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX64_RE = re.compile(r"[0-9A-Fa-f]{64}")
_INIT_FIELDS = ("name", "size", "checksum", "expire_at", "segments_ttl", "user_data")
_RESPONSE_FIELDS = ("vsn", "topic", "packet_id", "reason_code", "reason_description")
_SHOW_CHARS = 80


class FileTransferError(ValueError):
    """A topic or payload that does not follow the file-transfer grammar; the message says what."""


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _SHOW_CHARS:
        text = text[:_SHOW_CHARS] + "..."
    return f"'{printable(text)}'" if isinstance(value, str) else printable(text)


class Mode(StrEnum):
    """The topic root: the synchronous commands (result in the PUBACK) or the asynchronous ones."""

    SYNC = "$file"
    ASYNC = "$file-async"


class ReasonCode(IntEnum):
    """PUBACK reason codes and what each means in a file transfer (EMQX documentation)."""

    # The command was carried out (a segment persisted, a file assembled).
    SUCCESS = 0x00
    # MQTT "No matching subscribers": the server wants every segment again. Through Mosquitto this is
    # also what a PUBACK says when no receiver is subscribed, which is the same advice.
    RETRANSMIT_ALL = 0x10
    # MQTT "Unspecified error": a segment is to be sent again; after fin, every segment is.
    RESEND = 0x80
    # MQTT "Implementation specific error": the transfer is to be cancelled.
    CANCEL = 0x83
    # MQTT "Quota exceeded": pause, then send the segment again.
    QUOTA_EXCEEDED = 0x97


def check_file_id(file_id: object) -> str:
    if not isinstance(file_id, str) or _FILE_ID_RE.fullmatch(file_id) is None:
        raise FileTransferError(
            f"file id: expected 1 to {MAX_FILE_ID_CHARS} characters of A-Z a-z 0-9 . _ - not starting with "
            f"a dot, got {_shown(file_id)}"
        )
    return file_id


def check_client_id(client_id: object) -> str:
    if not isinstance(client_id, str) or _CLIENT_ID_RE.fullmatch(client_id) is None:
        raise FileTransferError(
            f"client id: expected a station id (1 to {MAX_CLIENT_ID_CHARS} characters of A-Z a-z 0-9 . _ -, "
            f"starting with a letter or digit), got {_shown(client_id)}"
        )
    return client_id


def check_checksum(checksum: object, what: str = "checksum") -> str:
    """A SHA-256 as 64 hex digits, returned in lower case."""
    if not isinstance(checksum, str) or _HEX64_RE.fullmatch(checksum) is None:
        raise FileTransferError(f"{what}: expected a SHA-256 of 64 hex digits, got {_shown(checksum)}")
    return checksum.lower()


def _decimal(text: str, what: str) -> int:
    if _DECIMAL_RE.fullmatch(text) is None or int(text) > MAX_FILE_BYTES:
        raise FileTransferError(
            f"{what}: expected a decimal number of bytes (digits only, no sign or leading zero, at most "
            f"{MAX_FILE_BYTES}), got {_shown(text)}"
        )
    return int(text)


def _check_count(value: int, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_FILE_BYTES:
        raise FileTransferError(f"{what}: expected 0 to {MAX_FILE_BYTES} bytes, got {_shown(value)}")
    return value


@dataclass(frozen=True)
class InitCommand:
    file_id: str
    mode: Mode = Mode.SYNC

    def __post_init__(self) -> None:
        check_file_id(self.file_id)

    @property
    def topic(self) -> str:
        return f"{self.mode.value}/{self.file_id}/init"


@dataclass(frozen=True)
class SegmentCommand:
    file_id: str
    offset: int
    # Lower-case hex SHA-256 of the payload, or None (the form without a checksum).
    checksum: str | None = None
    mode: Mode = Mode.SYNC

    def __post_init__(self) -> None:
        check_file_id(self.file_id)
        _check_count(self.offset, "offset")
        if self.checksum is not None:
            object.__setattr__(self, "checksum", check_checksum(self.checksum, "segment checksum"))

    @property
    def topic(self) -> str:
        tail = f"/{self.checksum}" if self.checksum is not None else ""
        return f"{self.mode.value}/{self.file_id}/{self.offset}{tail}"


@dataclass(frozen=True)
class FinCommand:
    file_id: str
    size: int
    # Lower-case hex SHA-256 of the whole file, or None (then the one of init counts).
    checksum: str | None = None
    mode: Mode = Mode.SYNC

    def __post_init__(self) -> None:
        check_file_id(self.file_id)
        _check_count(self.size, "file size")
        if self.checksum is not None:
            object.__setattr__(self, "checksum", check_checksum(self.checksum, "file checksum"))

    @property
    def topic(self) -> str:
        tail = f"/{self.checksum}" if self.checksum is not None else ""
        return f"{self.mode.value}/{self.file_id}/fin/{self.size}{tail}"


@dataclass(frozen=True)
class AbortCommand:
    file_id: str
    mode: Mode = Mode.SYNC

    def __post_init__(self) -> None:
        check_file_id(self.file_id)

    @property
    def topic(self) -> str:
        return f"{self.mode.value}/{self.file_id}/abort"


Command = InitCommand | SegmentCommand | FinCommand | AbortCommand


def parse_command_topic(topic: object) -> Command:
    """The command a ``$file/...`` or ``$file-async/...`` topic names; raises :class:`FileTransferError`."""
    if not isinstance(topic, str):
        raise FileTransferError(f"topic: expected text, got {type(topic).__name__}")
    levels = topic.split("/")
    root = levels[0]
    if root not in (Mode.SYNC.value, Mode.ASYNC.value):
        raise FileTransferError(
            f"topic: expected it to start with $file/ or $file-async/, got {_shown(topic)}"
        )
    mode = Mode(root)
    if len(levels) < 3:
        raise FileTransferError(
            f"topic: expected {root}/{{file_id}}/{{command}}, got {_shown(topic)} (too few levels)"
        )
    file_id = check_file_id(levels[1])
    rest = levels[2:]
    if rest == ["init"]:
        return InitCommand(file_id, mode)
    if rest == ["abort"]:
        return AbortCommand(file_id, mode)
    if rest[0] == "fin":
        if len(rest) not in (2, 3):
            raise FileTransferError(
                f"topic: expected {root}/{{file_id}}/fin/{{file_size}}[/{{checksum}}], got {_shown(topic)}"
            )
        size = _decimal(rest[1], "fin file size")
        checksum = check_checksum(rest[2], "fin file checksum") if len(rest) == 3 else None
        return FinCommand(file_id, size, checksum, mode)
    if rest[0] in ("init", "abort"):
        raise FileTransferError(f"topic: {rest[0]} takes no further levels, got {_shown(topic)}")
    if len(rest) > 2:
        raise FileTransferError(
            f"topic: expected {root}/{{file_id}}/{{offset}}[/{{checksum}}], got {_shown(topic)} (too many "
            "levels)"
        )
    offset = _decimal(rest[0], "segment offset")
    checksum = check_checksum(rest[1], "segment checksum") if len(rest) == 2 else None
    return SegmentCommand(file_id, offset, checksum, mode)


def response_topic(client_id: str) -> str:
    """Where results go when the command carried no MQTT 5 Response-Topic: ``$file-response/{client_id}``."""
    return f"{RESPONSE_ROOT}/{check_client_id(client_id)}"


def parse_response_topic(topic: object) -> str:
    """The client id a ``$file-response/{client_id}`` topic is for."""
    if not isinstance(topic, str):
        raise FileTransferError(f"response topic: expected text, got {type(topic).__name__}")
    root, _, client_id = topic.partition("/")
    if root != RESPONSE_ROOT or not client_id:
        raise FileTransferError(
            f"response topic: expected {RESPONSE_ROOT}/{{client_id}}, got {_shown(topic)}"
        )
    return check_client_id(client_id)


def transfer_upload_id(client_id: str, file_id: str) -> str:
    """The 32-hex-digit id under which the central keeps (and registration names) a transfer.

    A transfer is keyed by {client id, file id}, as in EMQX; the id is a hash of both, so the station can
    name its upload in the registration without a round trip, and nothing the station sent becomes a path.
    """
    key = f"evidence-edge/mqtt-transfer\x00{check_client_id(client_id)}\x00{check_file_id(file_id)}"
    return hashlib.sha256(key.encode("ascii")).hexdigest()[:32]


# -- station-scoped topics (a broker without file transfer) -----------------------------------------


def scoped_topic(prefix: str, station: str, topic: str) -> str:
    """``{prefix}/{station}/{topic}``: a file-transfer topic under the station's own subtree.

    EMQX knows who published a ``$file/`` command (the transfer is keyed by the client id). Behind a broker
    that only routes (Mosquitto), the central's receiver sees the topic and payload, not the publisher;
    with the station id as a whole topic level, the broker's ACL (``pattern write {prefix}/%u/#``) is
    what makes that level true, and the receiver reads the station from it.
    """
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "+#\x00"):
        raise FileTransferError(f"topic prefix: expected levels without wildcards, got {_shown(prefix)}")
    return f"{prefix}/{check_client_id(station)}/{topic}"


def parse_scoped_topic(prefix: str, topic: object) -> tuple[str, Command]:
    """The station and the command of ``{prefix}/{station}/$file[-async]/...``."""
    if not isinstance(topic, str):
        raise FileTransferError(f"topic: expected text, got {type(topic).__name__}")
    head = f"{prefix}/"
    if not topic.startswith(head):
        raise FileTransferError(f"topic: expected it to start with {head}, got {_shown(topic)}")
    station, _, rest = topic[len(head):].partition("/")
    return check_client_id(station), parse_command_topic(rest)


# -- the init payload -------------------------------------------------------------------------------


def _utf8_length(text: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # A lone surrogate (JSON "\ud800") decodes to str but is no text.
        raise FileTransferError(f"{what}: not valid Unicode text (a lone surrogate)") from None


@dataclass(frozen=True)
class FileMeta:
    """The JSON of an ``init`` command. Only ``name`` is required by EMQX."""

    name: str
    size: int | None = None
    # Lower-case hex SHA-256 of the whole file.
    checksum: str | None = None
    # Seconds since the epoch after which the file may be deleted.
    expire_at: int | None = None
    # Seconds a stored segment lives (the server clamps it).
    segments_ttl: int | None = None
    user_data: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise FileTransferError(f"init name: expected a non-empty string, got {_shown(self.name)}")
        name_bytes = _utf8_length(self.name, "init name")
        if name_bytes > MAX_NAME_BYTES:
            raise FileTransferError(
                f"init name: {name_bytes} bytes of UTF-8, at most {MAX_NAME_BYTES} allowed"
            )
        if "\x00" in self.name:
            raise FileTransferError("init name: contains a NUL character")
        if self.size is not None:
            _check_count(self.size, "init size")
        if self.checksum is not None:
            object.__setattr__(self, "checksum", check_checksum(self.checksum, "init checksum"))
        if self.expire_at is not None and (
            type(self.expire_at) is not int or not 0 <= self.expire_at < 2**63
        ):
            raise FileTransferError(
                f"init expire_at: expected seconds since the epoch (a non-negative integer), got "
                f"{_shown(self.expire_at)}"
            )
        if self.segments_ttl is not None and (
            type(self.segments_ttl) is not int or not 0 < self.segments_ttl < 2**63
        ):
            raise FileTransferError(
                f"init segments_ttl: expected a positive number of seconds, got {_shown(self.segments_ttl)}"
            )
        if self.user_data is not None and not isinstance(self.user_data, dict):
            raise FileTransferError(
                f"init user_data: expected a JSON object, got {type(self.user_data).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name}
        for key in _INIT_FIELDS[1:]:
            value = getattr(self, key)
            if value is not None:
                doc[key] = value
        return doc

    def to_payload(self) -> bytes:
        payload = json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        data = payload.encode("utf-8")
        if len(data) > MAX_INIT_PAYLOAD_BYTES:
            raise FileTransferError(
                f"init payload: {len(data)} bytes, at most {MAX_INIT_PAYLOAD_BYTES} allowed (user_data too "
                "large)"
            )
        return data


def parse_init_payload(payload: bytes) -> FileMeta:
    """The :class:`FileMeta` of an init command's payload; raises :class:`FileTransferError`."""
    if len(payload) > MAX_INIT_PAYLOAD_BYTES:
        raise FileTransferError(
            f"init payload: {len(payload)} bytes, at most {MAX_INIT_PAYLOAD_BYTES} allowed"
        )
    try:
        doc = parse_json(payload)
    except CanonicalJsonError as exc:
        raise FileTransferError(f"init payload: {exc}") from None
    if not isinstance(doc, dict):
        raise FileTransferError(f"init payload: expected a JSON object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(_INIT_FIELDS))
    if unknown:
        raise FileTransferError(
            f"init payload: unknown member(s) {_shown(', '.join(unknown))}; expected only "
            f"{', '.join(_INIT_FIELDS)}"
        )
    if "name" not in doc:
        raise FileTransferError("init payload: the required member name is missing")
    return FileMeta(
        name=doc["name"],
        size=doc.get("size"),
        checksum=doc.get("checksum"),
        expire_at=doc.get("expire_at"),
        segments_ttl=doc.get("segments_ttl"),
        user_data=doc.get("user_data"),
    )


def safe_file_name(name: str) -> str:
    """``name`` as a single safe path component, the way EMQX sanitises it: percent-encode ``%``, ``/``,
    ``\\``, ``:``, control and other unprintable characters, and the reserved names ``.`` and ``..``.

    For display in a file listing only; the central never names a file after what a station sent.
    """
    if name in (".", ".."):
        return "".join(f"%{ord(c):02X}" for c in name)
    out: list[str] = []
    for char in name:
        if char in "%/\\:" or printable(char) != char or not char.isprintable():
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        else:
            out.append(char)
    return "".join(out)


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileResponse:
    """A result on the response topic (EMQX's JSON, version 0.1)."""

    topic: str
    packet_id: int
    reason_code: ReasonCode
    reason_description: str
    vsn: str = RESPONSE_VSN

    def __post_init__(self) -> None:
        parse_command_topic(self.topic)
        if type(self.packet_id) is not int or not 0 <= self.packet_id <= _MAX_PACKET_ID:
            raise FileTransferError(
                f"response packet_id: expected 0 to {_MAX_PACKET_ID}, got {_shown(self.packet_id)}"
            )
        if type(self.reason_code) is not ReasonCode:
            raise FileTransferError(f"response reason_code: not a ReasonCode: {_shown(self.reason_code)}")
        description = self.reason_description
        if not isinstance(description, str) or len(description) > _MAX_DESCRIPTION_CHARS:
            raise FileTransferError(
                f"response reason_description: expected text of at most {_MAX_DESCRIPTION_CHARS} characters"
            )
        if self.vsn != RESPONSE_VSN:
            raise FileTransferError(f"response vsn: expected {RESPONSE_VSN!r}, got {_shown(self.vsn)}")

    @property
    def command(self) -> Command:
        return parse_command_topic(self.topic)

    def to_payload(self) -> bytes:
        doc = {
            "vsn": self.vsn,
            "topic": self.topic,
            "packet_id": self.packet_id,
            "reason_code": int(self.reason_code),
            "reason_description": self.reason_description,
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_response_payload(payload: bytes) -> FileResponse:
    """The :class:`FileResponse` in a response message; raises :class:`FileTransferError`."""
    if len(payload) > MAX_RESPONSE_PAYLOAD_BYTES:
        raise FileTransferError(
            f"response payload: {len(payload)} bytes, at most {MAX_RESPONSE_PAYLOAD_BYTES} allowed"
        )
    try:
        doc = parse_json(payload)
    except CanonicalJsonError as exc:
        raise FileTransferError(f"response payload: {exc}") from None
    if not isinstance(doc, dict):
        raise FileTransferError(f"response payload: expected a JSON object, got {type(doc).__name__}")
    if set(doc) != set(_RESPONSE_FIELDS):
        raise FileTransferError(
            f"response payload: expected members {', '.join(_RESPONSE_FIELDS)}, got "
            f"{_shown(', '.join(sorted(doc)))}"
        )
    code = doc["reason_code"]
    if type(code) is not int or code not in ReasonCode._value2member_map_:
        raise FileTransferError(
            f"response reason_code: expected one of {', '.join(f'0x{c:02X}' for c in ReasonCode)}, got "
            f"{_shown(code)}"
        )
    if not isinstance(doc["topic"], str):
        raise FileTransferError(f"response topic: expected text, got {type(doc['topic']).__name__}")
    try:
        parse_command_topic(doc["topic"])
    except FileTransferError as exc:
        raise FileTransferError(f"response names no file-transfer command: {exc}") from None
    return FileResponse(
        topic=doc["topic"],
        packet_id=doc["packet_id"],
        reason_code=ReasonCode(code),
        reason_description=doc["reason_description"],
        vsn=doc["vsn"],
    )


# -- packet size ------------------------------------------------------------------------------------


def _varint_bytes(value: int) -> int:
    count = 1
    while value >= 128:
        value //= 128
        count += 1
    return count


def publish_packet_bytes(
    topic: str, payload_bytes: int, *, properties_bytes: int = 0, mqtt5: bool = True
) -> int:
    """Size of a QoS 1 PUBLISH packet on the wire: the number a broker's ``max_packet_size`` limits.

    Fixed header (1 byte + remaining length), topic (2-byte length + UTF-8), packet identifier (2), in MQTT 5
    the properties (length as a variable byte integer + ``properties_bytes``), then the payload.
    """
    remaining = 2 + len(topic.encode("utf-8")) + 2 + payload_bytes
    if mqtt5:
        remaining += _varint_bytes(properties_bytes) + properties_bytes
    return 1 + _varint_bytes(remaining) + remaining
