"""Commands from the central to a station over MQTT: the signed envelope, its signing input, its checks
and the reply (README "MQTT", contract section 2). A pure codec: no I/O, no clock of its own.

    request  <prefix>/stations/<S>/command/<op>        op: tag, reupload, ledger-head, status, officers-sync
    payload  {"v": 1, "command": COMMAND, "signature": "<base64 Ed25519 over canonical_json(COMMAND)>"}
    COMMAND  {"type": "evidence-edge command", "request_id": "<32 hex>", "op": op, "station": S,
              "issued_at": "<RFC 3339 UTC>", "args": {...}}
    reply    {"v": 2, "reply": REPLY, "signature": "<base64 Ed25519 by the station's key>"} (see "replies")
    REPLY    {"type": "evidence-edge command reply", "station": S, "op": str | null, "request_id": str | null,
              "request_sha256": "<SHA-256 of the request payload>", "key_id": K, "ok": bool,
              "error": code?, "detail": str?, "first_outcome": "executed" | "refused"?, "result": {...}?}

Why a signature and not the broker's word: behind Mosquitto a subscriber cannot see who published, and the
ACL lets the station itself (and the central) write to the station's command topics. Only the central's
signing key, the one the station pinned at enrollment and that signs its receipts, may command. The
signing input is the canonical JSON of the command object, whose ``type`` member ("evidence-edge command")
keeps it apart from everything else that key signs (tree heads, witnessed heads, refusals: objects with
other members), so no other signature of the central can be passed off as a command.

Every check is here, in the order the station applies them (`parse_command`, then `check_authentic`,
then `check_addressed`): size, JSON, shape, signature, station, op, freshness, args. The station adds the
one check that needs state: a request id executes at most once (edge.mqtt.command_handler).
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.fields import decode_signature
from edge.custody.keys import verify_signature
from edge.custody.text import printable
from edge.ingest.tagging import CASE_FIELDS, TagError, validated_changes

__all__ = [
    "COMMAND_TYPE",
    "ITEM_ID",
    "MAX_COMMAND_BYTES",
    "MAX_CORRELATION_BYTES",
    "Command",
    "CommandError",
    "CommandOp",
    "CommandRefused",
    "FirstOutcome",
    "ReceivedCommand",
    "Reply",
    "ReplyNotAuthentic",
    "ReplySigner",
    "check_addressed",
    "check_authentic",
    "command_reply_topic",
    "command_request_topic",
    "command_signing_input",
    "command_subscription",
    "encode_reply",
    "freshness_keep_s",
    "new_request_id",
    "op_of_topic",
    "parse_command",
    "parse_issued_at",
    "parse_reply",
    "reply_topic_for",
    "sign_command",
    "utc_rfc3339",
    "validated_args",
    "verify_reply",
]

COMMAND_TYPE = "evidence-edge command"
ENVELOPE_VERSION = 1
# A command is a few hundred bytes (a tag's case fields at most a few KiB); anything bigger is refused
# before it is parsed.
MAX_COMMAND_BYTES = 16 * 1024
# Replies name the refusal's cause; a detail is at most this long (it is shown, logged and recorded).
MAX_DETAIL_CHARS = 300
# A 3.1.1 request has no correlation data; an MQTT 5 one's is echoed only up to this size.
MAX_CORRELATION_BYTES = 256
MAX_BY_CHARS = 64
MAX_REASON_CHARS = 200
MAX_TOPIC_CHARS = 512
# A reply carries at most the status model's document: far below this.
MAX_REPLY_BYTES = 4 * 1024 * 1024

_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
ITEM_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# RFC 3339 in UTC only ("Z"), seconds, an optional fraction of up to 6 digits.
_ISSUED_AT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$")
_TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_COMMAND_MEMBERS = frozenset({"type", "request_id", "op", "station", "issued_at", "args"})
_ENVELOPE_MEMBERS = frozenset({"v", "command", "signature"})


class CommandOp(StrEnum):
    TAG = "tag"
    """Tag an item into a case: the same signed `tagged` ledger entry as `edge tag`."""
    REUPLOAD = "reupload"
    """Send an item the central refused back to the upload queue (`edge uplink retry`)."""
    LEDGER_HEAD = "ledger-head"
    """The local ledger head and the newest head the central witnessed."""
    STATUS = "status"
    """The status model's document (`edge status --json`)."""
    OFFICERS_SYNC = "officers-sync"
    """Fetch the agency's officer list now (edge.equipment.officer_sync), not at the next poll: the push
    of a new version (a suspension that must not wait). The list itself comes over the uplink, verified
    as every list is; the reply names the version in force when the fetch was asked for."""


class CommandError(StrEnum):
    """Reply error codes (stable: the central's tools match on them)."""

    MALFORMED = "malformed"
    TOO_LARGE = "too-large"
    BAD_SIGNATURE = "bad-signature"
    WRONG_STATION = "wrong-station"
    WRONG_TOPIC = "wrong-topic"
    UNKNOWN_OP = "unknown-op"
    STALE = "stale"
    REPLAYED = "replayed"
    BAD_ARGS = "bad-args"
    REFUSED = "refused"
    """Authentic and valid, but the station cannot do it (an unknown item, an item not rejected)."""
    FAILED = "failed"
    """The station failed while doing it (its store, say); nothing was changed."""


class CommandRefused(Exception):
    """A command that will not be executed, with the reply's code and a detail naming what was wrong."""

    def __init__(
        self, code: CommandError, detail: str, command: ReceivedCommand | None = None, *,
        first_outcome: FirstOutcome | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = printable(detail)[:MAX_DETAIL_CHARS]
        self.command = command
        """The command, when its envelope parsed (signature checked: `ReceivedCommand.authentic`)."""
        self.first_outcome = first_outcome
        """A replay (`CommandError.REPLAYED`): what became of the request's first delivery."""


class FirstOutcome(StrEnum):
    """What became of a request's first delivery, told in a `replayed` reply (``first_outcome``)."""

    EXECUTED = "executed"
    REFUSED = "refused"


@dataclass(frozen=True)
class Command:
    """A command as the central issues it (what `sign_command` signs)."""

    request_id: str
    op: CommandOp
    station: str
    issued_at: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "type": COMMAND_TYPE,
            "request_id": self.request_id,
            "op": self.op.value,
            "station": self.station,
            "issued_at": self.issued_at,
            "args": dict(self.args),
        }


@dataclass(frozen=True)
class ReceivedCommand:
    """A parsed envelope. ``authentic`` only once `check_authentic` verified its signature."""

    command: Command
    document: dict[str, Any] = field(repr=False)
    """The command object exactly as received (canonical-JSON serialisable: it was checked)."""
    signature_b64: str = field(repr=False)
    authentic: bool = False

    @property
    def request_id(self) -> str:
        return self.command.request_id


def new_request_id() -> str:
    return secrets.token_hex(16)


def utc_rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def command_signing_input(command: Mapping[str, Any]) -> bytes:
    """The exact bytes a command's signature covers: its canonical JSON (the ``type`` member is the
    domain separation, see the module docstring)."""
    return canonical_json(command)


def sign_command(command: Command, sign: Callable[[bytes], bytes]) -> bytes:
    """The request payload: `command` signed by ``sign`` (a `StationKey.sign`: the central's key)."""
    document = command.as_json()
    signature = base64.b64encode(sign(command_signing_input(document))).decode("ascii")
    return canonical_json({"v": ENVELOPE_VERSION, "command": document, "signature": signature})


# -- topics ---------------------------------------------------------------------------------------------


def station_root(prefix: str, station: str) -> str:
    return f"{prefix}/stations/{station}"


def command_subscription(prefix: str, station: str) -> str:
    return f"{station_root(prefix, station)}/command/+"


def command_request_topic(prefix: str, station: str, op: CommandOp) -> str:
    return f"{station_root(prefix, station)}/command/{op.value}"


def command_reply_topic(prefix: str, station: str) -> str:
    """Where replies go without (or without an acceptable) MQTT 5 response topic: the 3.1.1 convention."""
    return f"{station_root(prefix, station)}/command-reply"


def reply_topic_for(prefix: str, station: str, response_topic: str | None) -> tuple[str, bool]:
    """The topic a reply goes to, and whether the request's response topic was honoured: only a topic
    at or under the station's own command-reply topic (the station writes nowhere else on request), with
    plain levels (no wildcards, no empty or `$` levels)."""
    base = command_reply_topic(prefix, station)
    if response_topic is None or len(response_topic) > MAX_TOPIC_CHARS:
        return base, False
    if response_topic == base:
        return base, True
    if response_topic.startswith(base + "/"):
        extra = response_topic[len(base) + 1 :].split("/")
        if len(extra) <= 4 and all(_TOPIC_LEVEL.fullmatch(level) for level in extra):
            return response_topic, True
    return base, False


def op_of_topic(prefix: str, station: str, topic: str) -> str | None:
    """The op level of a request topic of this station (None: not a command topic of ours)."""
    head = f"{station_root(prefix, station)}/command/"
    if not topic.startswith(head):
        return None
    op = topic[len(head) :]
    return op if op and "/" not in op else None


# -- parsing and checks -----------------------------------------------------------------------------------


def parse_command(payload: bytes, *, topic_op: str) -> ReceivedCommand:
    """The envelope of a request: size, JSON, shape of every member, args of its op. Raises
    `CommandRefused` naming what is wrong. Checks no signature (`check_authentic`) and no station,
    freshness or replay (`check_addressed`)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRefused(CommandError.TOO_LARGE, f"{len(payload)} bytes, at most {MAX_COMMAND_BYTES}")
    try:
        doc = parse_json(payload)
    except (CanonicalJsonError, ValueError, RecursionError) as exc:
        raise CommandRefused(CommandError.MALFORMED, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandRefused(CommandError.MALFORMED, f"expected a JSON object, found {type(doc).__name__}")
    if set(doc) != _ENVELOPE_MEMBERS:
        raise CommandRefused(
            CommandError.MALFORMED, f"expected members {sorted(_ENVELOPE_MEMBERS)}, found {sorted(doc)[:10]}"
        )
    if doc["v"] != ENVELOPE_VERSION or type(doc["v"]) is not int:
        found_v = str(doc["v"])[:20]
        raise CommandRefused(CommandError.MALFORMED, f"v: expected {ENVELOPE_VERSION}, found {found_v}")
    document = doc["command"]
    if not isinstance(document, dict) or set(document) != _COMMAND_MEMBERS:
        found = sorted(document)[:10] if isinstance(document, dict) else type(document).__name__
        raise CommandRefused(
            CommandError.MALFORMED, f"command: expected members {sorted(_COMMAND_MEMBERS)}, found {found}"
        )
    if document["type"] != COMMAND_TYPE:
        raise CommandRefused(CommandError.MALFORMED, f"command.type: expected {COMMAND_TYPE!r}")
    request_id = document["request_id"]
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise CommandRefused(CommandError.MALFORMED, "command.request_id: expected 32 lower-case hex digits")
    station = document["station"]
    if not isinstance(station, str) or not 0 < len(station) <= 64:
        raise CommandRefused(CommandError.MALFORMED, "command.station: expected a station id")
    issued_at = document["issued_at"]
    if not isinstance(issued_at, str) or parse_issued_at(issued_at) is None:
        raise CommandRefused(CommandError.MALFORMED, "command.issued_at: expected RFC 3339 UTC time with Z")
    args = document["args"]
    if not isinstance(args, dict):
        raise CommandRefused(CommandError.MALFORMED, "command.args: expected a JSON object")
    signature = doc["signature"]
    if decode_signature(signature) is None:
        raise CommandRefused(CommandError.MALFORMED, "signature: expected base64 of 64 bytes (Ed25519)")
    try:
        op = CommandOp(document["op"])
    except ValueError:
        raise CommandRefused(
            CommandError.UNKNOWN_OP, f"command.op: expected one of {', '.join(o.value for o in CommandOp)}"
        ) from None
    try:
        canonical_json(document)
    except CanonicalJsonError as exc:
        raise CommandRefused(CommandError.MALFORMED, f"command: not canonical JSON: {exc}") from None
    command = Command(request_id, op, station, issued_at, args)
    received = ReceivedCommand(command, document, signature)
    if op.value != topic_op:
        raise CommandRefused(
            CommandError.WRONG_TOPIC, f"command.op {op.value} published on the topic of op "
            f"{printable(topic_op)[:40]}", received,
        )
    return received


def check_authentic(received: ReceivedCommand, central_key: Ed25519PublicKey) -> ReceivedCommand:
    """The command with its signature verified against the pinned central key; `CommandRefused`
    (bad-signature) otherwise."""
    signature = decode_signature(received.signature_b64)
    assert signature is not None  # parse_command checked it
    if not verify_signature(central_key, signature, command_signing_input(received.document)):
        raise CommandRefused(
            CommandError.BAD_SIGNATURE, "the signature does not verify with the central's pinned key",
            received,
        )
    return ReceivedCommand(received.command, received.document, received.signature_b64, authentic=True)


def check_addressed(
    received: ReceivedCommand, *, station: str, now: datetime, window_s: float
) -> dict[str, Any]:
    """Station, freshness (issued_at within ``window_s`` of ``now``, the station clock) and the op's args.
    Returns the validated args; raises `CommandRefused`."""
    command = received.command
    if command.station != station:
        raise CommandRefused(
            CommandError.WRONG_STATION,
            f"addressed to station {printable(command.station)}, this is {station}",
            received,
        )
    issued = parse_issued_at(command.issued_at)
    assert issued is not None  # parse_command checked it
    skew_s = (now - issued).total_seconds()
    if abs(skew_s) > window_s:
        when = "ago" if skew_s > 0 else "ahead of the station clock"
        raise CommandRefused(
            CommandError.STALE,
            f"issued {abs(skew_s):.0f} s {when} (window {window_s:g} s; station time {utc_rfc3339(now)})",
            received,
        )
    try:
        return validated_args(command.op, command.args)
    except ValueError as exc:
        raise CommandRefused(CommandError.BAD_ARGS, str(exc), received) from None


def parse_issued_at(text: str) -> datetime | None:
    if not _ISSUED_AT.fullmatch(text):
        return None
    try:
        moment = datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z" if "." in text
                                   else "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None
    return moment


def _only(args: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    missing = required - set(args)
    unknown = set(args) - required - optional
    if missing:
        raise ValueError(f"args: missing {', '.join(sorted(missing))}")
    if unknown:
        shown = ", ".join(printable(k)[:40] for k in sorted(unknown)[:5])
        raise ValueError(f"args: unknown member(s) {shown}")


def _item(args: Mapping[str, Any]) -> str:
    item = args["item"]
    if not isinstance(item, str) or not ITEM_ID.fullmatch(item):
        raise ValueError("args.item: expected an item id (a lower-case UUID)")
    return item


def _short_text(value: object, name: str, limit: int, *, empty: bool) -> str:
    if not isinstance(value, str) or len(value) > limit or not value.isprintable() or not (empty or value):
        raise ValueError(f"args.{name}: expected {'' if empty else 'non-empty '}printable text of at most "
                         f"{limit} characters")
    return value


def validated_args(op: CommandOp, args: Mapping[str, Any]) -> dict[str, Any]:
    """The op's args, checked member by member; ValueError names what is wrong."""
    if op is CommandOp.TAG:
        _only(args, {"item", "changes", "by"}, set())
        changes = args["changes"]
        if not isinstance(changes, dict):
            raise ValueError(f"args.changes: expected an object of case fields ({', '.join(CASE_FIELDS)})")
        try:
            clean = validated_changes(changes)
        except TagError as exc:
            raise ValueError(f"args.changes: {exc}") from None
        return {"item": _item(args), "changes": clean, "by": _short_text(args["by"], "by", MAX_BY_CHARS,
                                                                          empty=False)}
    if op is CommandOp.REUPLOAD:
        _only(args, {"item"}, {"reason"})
        reason = _short_text(args.get("reason", ""), "reason", MAX_REASON_CHARS, empty=True)
        return {"item": _item(args), "reason": reason}
    _only(args, set(), set())
    return {}


# -- replies ----------------------------------------------------------------------------------------------
#
# A reply is signed by the station's ledger key (the key the central enrolled and whose checkpoints it
# keeps), over the canonical JSON of the reply object; its ``type`` member keeps it apart from everything
# else that key signs (checkpoints and manifests are objects with other members). The object names the
# station, the SHA-256 of the exact request payload it answers and the op of the topic that payload came
# on (``op``: null when it did not come on one of the station's command topics), so a reply cannot be
# passed off as the answer to another command, to the same command sent to another station, or to a copy
# of the command's payload delivered on another op's topic (the station refuses that copy as wrong-topic,
# signed: the central takes only a reply whose ``op`` is its command's); behind the broker's ACL
# only the station itself and the central may write the station's reply topic, and the signature is what
# tells the central that what it prints is the station's word and not a process's on the broker path.
#
#     {"v": 2, "reply": REPLY, "signature": "<base64 Ed25519 over canonical_json(REPLY)>"}
#     REPLY {"type": "evidence-edge command reply", "station": S, "op": str | null, "request_id": str | null,
#            "request_sha256": "<64 hex>", "key_id": K, "ok": bool, "error": code?, "detail": str?,
#            "first_outcome": "executed" | "refused"?, "result": {...}?}
#
# A redelivery of a request already handled (MQTT QoS 1 is at least once: the first reply may have been
# lost) is refused as ``replayed``, ok false: it is not executed again. ``first_outcome`` (only in a
# replayed reply, signed like the rest) says what became of the first delivery, so that a program can tell
# "took effect earlier" from a refusal: `Reply.took_effect`.
#
# Version 1 (stations before signed replies) is the bare object {"v": 1, "request_id", "ok", ...}: it is
# parsed, marked unsigned, and `verify_reply` refuses it.

REPLY_TYPE = "evidence-edge command reply"
REPLY_VERSION = 2
_UNSIGNED_REPLY_VERSION = 1
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9:_.+/=-]{1,128}$")
_REPLY_MEMBERS = frozenset({"type", "station", "op", "request_id", "request_sha256", "key_id", "ok", "error",
                            "detail", "first_outcome", "result"})
_REQUIRED_REPLY_MEMBERS = frozenset({"type", "station", "op", "request_id", "request_sha256", "key_id", "ok"})
_UNSIGNED_REPLY_MEMBERS = frozenset({"v", "request_id", "ok", "error", "detail", "result"})


@dataclass(frozen=True)
class ReplySigner:
    """Who signs replies: the station's ledger key (a `StationKey`'s ``key_id`` and ``sign``)."""

    key_id: str
    sign: Callable[[bytes], bytes] = field(repr=False)


def encode_reply(
    request_id: str | None,
    *,
    station: str,
    op: str | None,
    request_sha256: str,
    signer: ReplySigner,
    result: Mapping[str, Any] | None = None,
    error: CommandError | None = None,
    detail: str | None = None,
    first_outcome: FirstOutcome | None = None,
) -> bytes:
    """The signed reply to the request whose payload has SHA-256 ``request_sha256``, delivered on the topic
    of ``op`` (None: not one of the station's command topics; see above)."""
    if op is not None and not _TOPIC_LEVEL.fullmatch(op):
        op = None  # not a topic level the station answers as an op (op_of_topic took anything)
    doc: dict[str, Any] = {
        "type": REPLY_TYPE,
        "station": station,
        "op": op,
        "request_id": request_id,
        "request_sha256": request_sha256,
        "key_id": signer.key_id,
        "ok": error is None,
    }
    if error is not None:
        doc["error"] = error.value
        doc["detail"] = printable(detail or "")[:MAX_DETAIL_CHARS]
    if first_outcome is not None and error is CommandError.REPLAYED:
        doc["first_outcome"] = first_outcome.value
    if result is not None:
        doc["result"] = dict(result)
    signature = base64.b64encode(signer.sign(canonical_json(doc))).decode("ascii")
    return canonical_json({"v": REPLY_VERSION, "reply": doc, "signature": signature})


class ReplyNotAuthentic(ValueError):
    """A reply that is not the station's signed answer to the request (the message names why)."""


@dataclass(frozen=True)
class Reply:
    request_id: str | None
    ok: bool
    """The station executed the command at this delivery (the reply's ``ok``)."""
    error: str | None
    detail: str | None
    result: dict[str, Any] | None
    station: str | None = None
    """The station the signed reply names (None: an unsigned version-1 reply)."""
    op: str | None = None
    """The op of the topic the answered payload came on (signed replies; None: not a command topic)."""
    first_outcome: str | None = None
    """A `replayed` reply: what became of the first delivery ("executed" or "refused"), else None."""
    request_sha256: str | None = None
    key_id: str | None = None
    signature: bytes | None = field(default=None, repr=False)
    document: dict[str, Any] | None = field(default=None, repr=False)
    """The signed reply object exactly as received."""

    @property
    def signed(self) -> bool:
        return self.signature is not None

    @property
    def executed_earlier(self) -> bool:
        """A redelivery of a request whose first delivery the station executed (the reply is `replayed`)."""
        return self.error == CommandError.REPLAYED.value and self.first_outcome == FirstOutcome.EXECUTED.value

    @property
    def took_effect(self) -> bool:
        """The command took effect: executed now, or at its first delivery (`executed_earlier`)."""
        return self.ok or self.executed_earlier

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"request_id": self.request_id, "ok": self.ok, "signed": self.signed,
                               "took_effect": self.took_effect}
        if self.signed:
            doc["station"] = self.station
            doc["op"] = self.op
            doc["key_id"] = self.key_id
        if self.error is not None:
            doc["error"] = self.error
            doc["detail"] = self.detail
        if self.first_outcome is not None:
            doc["first_outcome"] = self.first_outcome
        if self.result is not None:
            doc["result"] = self.result
        return doc


def parse_reply(payload: bytes) -> Reply:
    """A station's reply, signed (version 2) or not (version 1), its signature not yet checked
    (`verify_reply` does); ValueError names what is wrong."""
    if len(payload) > MAX_REPLY_BYTES:
        raise ValueError(f"reply of {len(payload)} bytes, at most {MAX_REPLY_BYTES}")
    try:
        doc = parse_json(payload)
    except (CanonicalJsonError, RecursionError) as exc:
        raise ValueError(f"reply is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("reply: expected an object")
    version = doc.get("v")
    if type(version) is int and version == _UNSIGNED_REPLY_VERSION:
        _known_members(doc, _UNSIGNED_REPLY_MEMBERS, "reply")
        return _reply_fields(doc)
    if type(version) is not int or version != REPLY_VERSION:
        raise ValueError(f"reply: expected v {REPLY_VERSION} (or an unsigned v {_UNSIGNED_REPLY_VERSION})")
    _known_members(doc, frozenset({"v", "reply", "signature"}), "reply")
    body, signature = doc.get("reply"), decode_signature(doc.get("signature"))
    if not isinstance(body, dict):
        raise ValueError("reply.reply: expected an object")
    if signature is None:
        raise ValueError("reply.signature: expected a base64 Ed25519 signature")
    _known_members(body, _REPLY_MEMBERS, "reply.reply")
    missing = _REQUIRED_REPLY_MEMBERS - set(body)
    if missing:
        raise ValueError(f"reply.reply: missing member(s) {', '.join(sorted(missing))}")
    if body.get("type") != REPLY_TYPE:
        raise ValueError(f"reply.reply.type: expected {REPLY_TYPE!r}")
    station, digest, key_id = body.get("station"), body.get("request_sha256"), body.get("key_id")
    if not (isinstance(station, str) and _TOPIC_LEVEL.fullmatch(station)):
        raise ValueError("reply.reply.station: expected a station id")
    if not (isinstance(digest, str) and _SHA256_HEX.fullmatch(digest)):
        raise ValueError("reply.reply.request_sha256: expected 64 lower-case hex digits")
    if not (isinstance(key_id, str) and _KEY_ID.fullmatch(key_id)):
        raise ValueError("reply.reply.key_id: expected a key id")
    op = body["op"]
    if op is not None and not (isinstance(op, str) and _TOPIC_LEVEL.fullmatch(op)):
        raise ValueError("reply.reply.op: expected null or a topic level")
    first_outcome = body.get("first_outcome")
    if first_outcome is not None and (
        first_outcome not in {o.value for o in FirstOutcome}
        or body.get("error") != CommandError.REPLAYED.value
    ):
        raise ValueError("reply.reply.first_outcome: expected executed or refused, in a replayed reply only")
    fields = _reply_fields(body)
    return Reply(fields.request_id, fields.ok, fields.error, fields.detail, fields.result, station, op,
                 first_outcome, digest, key_id, signature, body)


def verify_reply(
    reply: Reply, *, station: str, op: CommandOp, request_sha256: str, keys: Mapping[str, Ed25519PublicKey]
) -> None:
    """Raises `ReplyNotAuthentic` unless ``reply`` is signed by one of ``keys`` (the station's key, by key
    id) and answers the request of SHA-256 ``request_sha256`` sent to ``station`` on the topic of ``op``."""
    if not reply.signed or reply.document is None or reply.signature is None:
        raise ReplyNotAuthentic("the reply is not signed (a station from before signed replies)")
    if reply.station != station:
        named = printable(str(reply.station))[:64]
        raise ReplyNotAuthentic(f"the reply names station {named}, not {station}")
    if reply.request_sha256 != request_sha256:
        raise ReplyNotAuthentic("the reply answers another request (its request_sha256 differs)")
    if reply.op != op.value:
        named = printable(str(reply.op))[:64]
        raise ReplyNotAuthentic(
            f"the reply answers a copy of the request delivered on the topic of op {named}, not {op.value} "
            "(a misrouted copy: the station's answer to the command itself may still come)"
        )
    key = keys.get(reply.key_id or "")
    if key is None:
        raise ReplyNotAuthentic(
            f"the reply is signed by key {printable(str(reply.key_id))[:80]}, which is not the key station "
            f"{station} is enrolled with now ({', '.join(sorted(keys)) or 'none'}): a station that rotated "
            "its key signs with the new one, taken once the station is re-enrolled with it"
        )
    if not verify_signature(key, reply.signature, canonical_json(reply.document)):
        raise ReplyNotAuthentic(f"the reply's signature does not verify with key {reply.key_id}")


def _known_members(doc: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = set(doc) - allowed
    if unknown:
        shown = ", ".join(printable(k)[:40] for k in sorted(unknown)[:5])
        raise ValueError(f"{where}: unknown member(s) {shown}")


def _reply_fields(doc: Mapping[str, Any]) -> Reply:
    if not isinstance(doc.get("ok"), bool):
        raise ValueError("reply: expected an object with ok")
    request_id = doc.get("request_id")
    if request_id is not None and not (isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id)):
        raise ValueError("reply.request_id: expected null or 32 lower-case hex digits")
    error, detail, result = doc.get("error"), doc.get("detail"), doc.get("result")
    if error is not None and not isinstance(error, str):
        raise ValueError("reply.error: expected text")
    if detail is not None and not isinstance(detail, str):
        raise ValueError("reply.detail: expected text")
    if result is not None and not isinstance(result, dict):
        raise ValueError("reply.result: expected an object")
    if doc["ok"] == (error is not None):
        raise ValueError("reply: ok and error disagree")
    return Reply(request_id, doc["ok"], error, detail, result)


def freshness_keep_s(window_s: float) -> float:
    """How long a seen request id is kept: well beyond the freshness window (a command older than the
    window is refused as stale anyway), so that a replay is refused whatever the clock did meanwhile."""
    return max(2 * window_s, timedelta(days=1).total_seconds())
