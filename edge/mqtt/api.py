"""The station -> central API over MQTT (registration and witnessing), as a pure codec: topics, request and
reply envelopes.

No I/O and no MQTT library here: the station's uplink, the central's responder and the tests build and
parse the same bytes through these functions (contract: ``/work/tools/MQTT_CONTRACT.md`` section 3).

============================================  =====================================================
topic                                         payload (canonical JSON, UTF-8)
============================================  =====================================================
``{prefix}/stations/{station}/api/request/{op}``  ``{"v": 1, "request_id": "<32 hex>", "op": op,
                                              "body": {...}}``; body = what the HTTP endpoint takes
``{prefix}/stations/{station}/api/reply``     ``{"v": 1, "request_id": ..., "status": <HTTP status>,
                                              "body": <what the HTTP endpoint answers>}``
============================================  =====================================================

``op`` is one of :class:`ApiOp`. The reply goes to the station level of the request's topic and nowhere
else: behind Mosquitto the receiver cannot see who published, and the broker's ACL is what makes that level
true. MQTT 5 requests also carry Response Topic = the reply topic and Correlation Data = the request id
(ASCII); the central answers on the reply topic whatever the request's properties say.

Strict, on purpose (every byte received may be hostile):

- a payload is at most ``max_bytes`` (default :data:`MAX_PAYLOAD_BYTES`, the example broker's packet
  limit) and must be *canonical* JSON (:func:`edge.custody.canonical.canonical_json` of what it parses to
  is exactly the payload): one message has one byte form, and duplicate keys, NaN, white space, huge
  integers and non-UTF-8 text are refused;
- the envelope has exactly its members; ``v`` is 1; ``request_id`` is 32 lower-case hex digits; ``op``
  matches the topic's op when the caller gives it; ``status`` is an integer 100..599; a request's ``body``
  is a JSON object (a reply's body is any JSON value: the caller checks its shape as for HTTP);
- the station id level follows :func:`edge.mqtt.filetransfer.check_client_id` (the station id grammar).

Every refusal is an :class:`ApiCodecError` whose message names the part that was wrong.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.text import printable
from edge.mqtt.filetransfer import FileTransferError, check_client_id

__all__ = [
    "API_VERSION",
    "MAX_PAYLOAD_BYTES",
    "ApiCodecError",
    "ApiOp",
    "ApiReply",
    "ApiRequest",
    "check_request_id",
    "encode_reply",
    "encode_request",
    "new_request_id",
    "parse_reply",
    "parse_reply_topic",
    "parse_request",
    "parse_request_topic",
    "reply_topic",
    "request_subscription",
    "request_topic",
]

API_VERSION = 1
# The example broker's max_packet_size (config/mosquitto/mosquitto.conf): no message can be larger on the
# wire, so a larger payload is damage or an attack.
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024
_REQUEST_FIELDS = ("body", "op", "request_id", "v")
_REPLY_FIELDS = ("body", "request_id", "status", "v")
_REQUEST_ID_RE = re.compile(r"[0-9a-f]{32}")
_SHOW_CHARS = 80


class ApiCodecError(ValueError):
    """A topic or payload that does not follow the API grammar; the message names the part."""


class ApiOp(StrEnum):
    """The requests a station may make (the HTTP endpoint each stands for in the comment)."""

    LEDGER_HEAD = "ledger-head"  # GET /v1/stations/S/ledger/head
    LEDGER_PUSH = "ledger-push"  # POST /v1/stations/S/ledger
    LEDGER_PAGE = "ledger-page"  # GET /v1/stations/S/ledger?after=&limit=
    REGISTER = "register"  # POST /v1/stations/S/items
    ABANDON = "abandon"  # the upload is given up: the receiver may drop what it holds of it
    TREE_HEAD = "tree-head"  # GET /v1/log/tree-head
    CONSISTENCY = "consistency"  # GET /v1/log/consistency?first=&second=
    TRANSFER_STATE = "transfer-state"  # what the receiver holds of a transfer (resume after a restart)
    OFFICERS = "officers"  # GET /v1/stations/S/officers?have=N (the agency's signed officer list)
    FLEET_REPORT = "fleet-report"  # POST /v1/stations/S/fleet (the station's recorders)


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _SHOW_CHARS:
        text = text[:_SHOW_CHARS] + "..."
    return f"'{printable(text)}'" if isinstance(value, str) else printable(text)


def _check_prefix(prefix: object) -> str:
    if (
        not isinstance(prefix, str)
        or not prefix
        or prefix.startswith(("/", "$"))
        or prefix.endswith("/")
        or "//" in prefix
        or any(c in prefix for c in "+#\x00")
    ):
        raise ApiCodecError(
            f"topic prefix: expected one or more topic levels without wildcards, not starting with $ or /, "
            f"got {_shown(prefix)}"
        )
    return prefix


def _check_station(station: object) -> str:
    try:
        return check_client_id(station)
    except FileTransferError as exc:
        raise ApiCodecError(f"station {str(exc).removeprefix('client id: ')}") from None


def check_request_id(request_id: object) -> str:
    if not isinstance(request_id, str) or _REQUEST_ID_RE.fullmatch(request_id) is None:
        raise ApiCodecError(f"request_id: expected 32 lower-case hex digits, got {_shown(request_id)}")
    return request_id


def _check_op(op: object) -> ApiOp:
    if isinstance(op, str) and op in ApiOp._value2member_map_:
        return ApiOp(op)
    raise ApiCodecError(f"op: expected one of {', '.join(ApiOp)}, got {_shown(op)}")


def new_request_id() -> str:
    """A fresh request id: 128 random bits as 32 lower-case hex digits."""
    return secrets.token_hex(16)


# -- topics -----------------------------------------------------------------------------------------


def _station_root(prefix: str, station: str) -> str:
    return f"{_check_prefix(prefix)}/stations/{_check_station(station)}"


def request_topic(prefix: str, station: str, op: ApiOp | str) -> str:
    """``{prefix}/stations/{station}/api/request/{op}``."""
    return f"{_station_root(prefix, station)}/api/request/{_check_op(op).value}"


def request_subscription(prefix: str) -> str:
    """The filter matching every station's requests: ``{prefix}/stations/+/api/request/+``."""
    return f"{_check_prefix(prefix)}/stations/+/api/request/+"


def reply_topic(prefix: str, station: str) -> str:
    """``{prefix}/stations/{station}/api/reply``: the one topic every reply to ``station`` goes to."""
    return f"{_station_root(prefix, station)}/api/reply"


def _station_levels(prefix: str, topic: object, what: str) -> tuple[str, list[str]]:
    """The station level of ``{prefix}/stations/{station}/...`` and the levels after it."""
    if not isinstance(topic, str):
        raise ApiCodecError(f"{what} topic: expected text, got {type(topic).__name__}")
    head = f"{_check_prefix(prefix)}/stations/"
    if not topic.startswith(head):
        raise ApiCodecError(f"{what} topic: expected it to start with {head}, got {_shown(topic)}")
    station, _, rest = topic[len(head):].partition("/")
    return _check_station(station), rest.split("/") if rest else []


def parse_request_topic(prefix: str, topic: object) -> tuple[str, ApiOp]:
    """The station and the op of ``{prefix}/stations/{station}/api/request/{op}``."""
    station, rest = _station_levels(prefix, topic, "request")
    if len(rest) != 3 or rest[:2] != ["api", "request"]:
        raise ApiCodecError(
            f"request topic: expected {prefix}/stations/{{station}}/api/request/{{op}}, got {_shown(topic)}"
        )
    return station, _check_op(rest[2])


def parse_reply_topic(prefix: str, topic: object) -> str:
    """The station of ``{prefix}/stations/{station}/api/reply``."""
    station, rest = _station_levels(prefix, topic, "reply")
    if rest != ["api", "reply"]:
        raise ApiCodecError(
            f"reply topic: expected {prefix}/stations/{{station}}/api/reply, got {_shown(topic)}"
        )
    return station


# -- envelopes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiRequest:
    request_id: str
    op: ApiOp
    body: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        object.__setattr__(self, "op", _check_op(self.op))
        if not isinstance(self.body, dict):
            raise ApiCodecError(f"request body: expected a JSON object, got {type(self.body).__name__}")


@dataclass(frozen=True)
class ApiReply:
    request_id: str
    status: int
    # Exactly the JSON the HTTP endpoint answers: an object as a rule, any JSON value is carried.
    body: Any = field(default=None, hash=False)

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        if type(self.status) is not int or not 100 <= self.status <= 599:
            raise ApiCodecError(f"reply status: expected an HTTP status 100..599, got {_shown(self.status)}")

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _encode(doc: dict[str, Any], what: str, max_bytes: int) -> bytes:
    try:
        data = canonical_json(doc)
    except CanonicalJsonError as exc:
        raise ApiCodecError(f"{what} body: not expressible as canonical JSON: {exc}") from None
    if len(data) > max_bytes:
        raise ApiCodecError(f"{what} payload: {len(data)} bytes, at most {max_bytes} allowed")
    return data


def encode_request(request: ApiRequest, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """The request's payload: canonical JSON, at most ``max_bytes``."""
    doc = {"v": API_VERSION, "request_id": request.request_id, "op": request.op.value, "body": request.body}
    return _encode(doc, "request", max_bytes)


def encode_reply(reply: ApiReply, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """The reply's payload: canonical JSON, at most ``max_bytes``."""
    doc = {"v": API_VERSION, "request_id": reply.request_id, "status": reply.status, "body": reply.body}
    return _encode(doc, "reply", max_bytes)


def _envelope(payload: object, what: str, fields: tuple[str, ...], max_bytes: int) -> dict[str, Any]:
    if not isinstance(payload, bytes | bytearray):
        raise ApiCodecError(f"{what} payload: expected bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise ApiCodecError(f"{what} payload: {len(payload)} bytes, at most {max_bytes} allowed")
    try:
        doc = parse_json(bytes(payload))
    except CanonicalJsonError as exc:
        raise ApiCodecError(f"{what} payload: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiCodecError(f"{what} payload: expected a JSON object, got {type(doc).__name__}")
    if set(doc) != set(fields):
        missing = sorted(set(fields) - set(doc))
        unknown = sorted(set(doc) - set(fields))
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {_shown(', '.join(unknown))}"] if unknown else []
        )
        raise ApiCodecError(
            f"{what} payload: expected members {', '.join(fields)}; {'; '.join(parts)}"
        )
    if type(doc["v"]) is not int or doc["v"] != API_VERSION:
        raise ApiCodecError(f"{what} v: expected {API_VERSION}, got {_shown(doc['v'])}")
    try:
        canonical = canonical_json(doc)
    except CanonicalJsonError as exc:
        raise ApiCodecError(f"{what} payload: not canonical JSON: {exc}") from None
    if canonical != bytes(payload):
        raise ApiCodecError(
            f"{what} payload: not canonical JSON (RFC 8785: sorted members, no white space, shortest "
            "numbers, minimal escapes)"
        )
    return doc


def parse_request(
    payload: object, *, op: ApiOp | str | None = None, max_bytes: int = MAX_PAYLOAD_BYTES
) -> ApiRequest:
    """The :class:`ApiRequest` in a request message; ``op``: the op of its topic, which the payload's must
    match. Raises :class:`ApiCodecError`."""
    doc = _envelope(payload, "request", _REQUEST_FIELDS, max_bytes)
    request_id = check_request_id(doc["request_id"])
    payload_op = _check_op(doc["op"])
    if op is not None and payload_op is not _check_op(op):
        raise ApiCodecError(
            f"request op: the topic says {_check_op(op).value}, the payload {payload_op.value}"
        )
    if not isinstance(doc["body"], dict):
        raise ApiCodecError(f"request body: expected a JSON object, got {type(doc['body']).__name__}")
    return ApiRequest(request_id, payload_op, doc["body"])


def parse_reply(payload: object, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> ApiReply:
    """The :class:`ApiReply` in a reply message. Raises :class:`ApiCodecError`. Which request it answers,
    and whether its body says anything sensible, is the caller's to check."""
    doc = _envelope(payload, "reply", _REPLY_FIELDS, max_bytes)
    request_id = check_request_id(doc["request_id"])
    status = doc["status"]
    if type(status) is not int or not 100 <= status <= 599:
        raise ApiCodecError(f"reply status: expected an HTTP status 100..599, got {_shown(status)}")
    return ApiReply(request_id, status, doc["body"])
