"""edge.mqtt.commands, the pure codec of the central's commands: the signed envelope, each check in turn
(every refusal beside a control that the same input, fixed, is accepted), reply topics and replies."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.keys import StationKey
from edge.mqtt.commands import (
    COMMAND_TYPE,
    MAX_COMMAND_BYTES,
    Command,
    CommandError,
    CommandOp,
    CommandRefused,
    FirstOutcome,
    ReplyNotAuthentic,
    ReplySigner,
    check_addressed,
    check_authentic,
    command_signing_input,
    encode_reply,
    parse_command,
    parse_reply,
    reply_topic_for,
    sign_command,
    utc_rfc3339,
    verify_reply,
)

ITEM = "0f8fad5b-d9cb-469f-a165-70867728950e"
NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
CENTRAL = StationKey.generate()


def command(op: CommandOp = CommandOp.STATUS, **overrides: Any) -> Command:
    values: dict[str, Any] = {
        "request_id": "ab" * 16, "op": op, "station": "S1", "issued_at": utc_rfc3339(NOW), "args": {},
    }
    values.update(overrides)
    return Command(**values)


def envelope(cmd: Command, key: StationKey = CENTRAL) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sign_command(cmd, key.sign))
    return doc


def accepted(payload: bytes, topic_op: str = "status") -> dict[str, Any]:
    received = check_authentic(parse_command(payload, topic_op=topic_op), CENTRAL.public_key())
    return check_addressed(received, station="S1", now=NOW, window_s=300)


def refusal(payload: bytes, topic_op: str = "status", *, now: datetime = NOW) -> CommandError:
    with pytest.raises(CommandRefused) as caught:
        received = check_authentic(parse_command(payload, topic_op=topic_op), CENTRAL.public_key())
        check_addressed(received, station="S1", now=now, window_s=300)
    return caught.value.code


def test_the_signing_input_is_the_canonical_command_with_its_type() -> None:
    doc = envelope(command())
    assert doc["command"]["type"] == COMMAND_TYPE
    assert command_signing_input(doc["command"]) == canonical_json(doc["command"])
    signature = base64.b64decode(doc["signature"])
    CENTRAL.public_key().verify(signature, canonical_json(doc["command"]))  # raises if not
    # The type is inside what is signed: the same members with another type do not verify.
    other = {**doc["command"], "type": "evidence-edge refusal"}
    with pytest.raises(Exception):  # noqa: B017  (cryptography's InvalidSignature)
        CENTRAL.public_key().verify(signature, canonical_json(other))


def test_a_well_formed_signed_fresh_command_is_accepted() -> None:
    assert accepted(canonical_json(envelope(command()))) == {}
    tag = command(CommandOp.TAG, args={"item": ITEM, "changes": {"case_number": "X-1"}, "by": "clerk"})
    assert accepted(canonical_json(envelope(tag)), "tag")["changes"] == {"case_number": "X-1"}


def _tampered(mutate: Any) -> bytes:
    doc = envelope(command())
    mutate(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", CommandError.MALFORMED),
        (b"\xff\xfe", CommandError.MALFORMED),
        (b"[]", CommandError.MALFORMED),
        (b'{"v":1,"command":{},"signature":"","v":1}', CommandError.MALFORMED),  # duplicate key
        (_tampered(lambda d: d.update(v=2)), CommandError.MALFORMED),
        (_tampered(lambda d: d.update(v=True)), CommandError.MALFORMED),
        (_tampered(lambda d: d.update(extra=1)), CommandError.MALFORMED),
        (_tampered(lambda d: d["command"].update(type="evidence-edge receipt")), CommandError.MALFORMED),
        (_tampered(lambda d: d["command"].update(request_id="AB" * 16)), CommandError.MALFORMED),
        (_tampered(lambda d: d["command"].update(issued_at="2026-12-05 12:00:00")), CommandError.MALFORMED),
        (_tampered(lambda d: d["command"].update(issued_at="2026-12-05T20:00:00+08:00")),
         CommandError.MALFORMED),
        (_tampered(lambda d: d["command"].update(args=[])), CommandError.MALFORMED),
        (_tampered(lambda d: d.update(signature="AAAA")), CommandError.MALFORMED),
        (_tampered(lambda d: d["command"].update(op="reboot")), CommandError.UNKNOWN_OP),
        # Changed after signing:
        (_tampered(lambda d: d["command"].update(args={"x": 1})), CommandError.BAD_SIGNATURE),
        (b" " * (MAX_COMMAND_BYTES + 1), CommandError.TOO_LARGE),
    ],
)
def test_each_malformed_or_tampered_envelope_is_refused(payload: bytes, code: CommandError) -> None:
    assert refusal(payload) is code


def test_a_command_signed_by_another_key_is_refused() -> None:
    assert refusal(canonical_json(envelope(command(), StationKey.generate()))) is CommandError.BAD_SIGNATURE


def test_station_topic_freshness_and_args_are_checked() -> None:
    assert refusal(canonical_json(envelope(command(station="S2")))) is CommandError.WRONG_STATION
    assert refusal(canonical_json(envelope(command())), "tag") is CommandError.WRONG_TOPIC
    late = NOW + timedelta(seconds=301)
    assert refusal(canonical_json(envelope(command())), now=late) is CommandError.STALE
    early = NOW - timedelta(seconds=301)
    assert refusal(canonical_json(envelope(command())), now=early) is CommandError.STALE
    # Controls: just inside the window both ways.
    for now in (NOW + timedelta(seconds=299), NOW - timedelta(seconds=299)):
        received = check_authentic(parse_command(canonical_json(envelope(command())), topic_op="status"),
                                   CENTRAL.public_key())
        assert check_addressed(received, station="S1", now=now, window_s=300) == {}


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (CommandOp.STATUS, {"verbose": True}),
        (CommandOp.TAG, {"item": ITEM, "changes": {"case_number": "X"}}),  # no by
        (CommandOp.TAG, {"item": ITEM, "changes": {"owner": "X"}, "by": "clerk"}),
        (CommandOp.TAG, {"item": ITEM, "changes": {"case_number": "bad\x07bell"}, "by": "clerk"}),
        (CommandOp.TAG, {"item": ITEM, "changes": {}, "by": "clerk"}),
        (CommandOp.TAG, {"item": "../../etc/passwd", "changes": {"case_number": "X"}, "by": "clerk"}),
        (CommandOp.TAG, {"item": ITEM, "changes": {"important": "yes"}, "by": "clerk"}),
        (CommandOp.REUPLOAD, {"item": ITEM, "reason": "x" * 201}),
        (CommandOp.REUPLOAD, {}),
    ],
)
def test_args_are_checked_member_by_member(op: CommandOp, args: dict[str, Any]) -> None:
    assert refusal(canonical_json(envelope(command(op, args=args))), op.value) is CommandError.BAD_ARGS


@pytest.mark.parametrize(
    ("response_topic", "expected", "honoured"),
    [
        (None, "evidence/stations/S1/command-reply", False),
        ("evidence/stations/S1/command-reply", "evidence/stations/S1/command-reply", True),
        ("evidence/stations/S1/command-reply/abc123", "evidence/stations/S1/command-reply/abc123", True),
        ("evidence/stations/S2/command-reply", "evidence/stations/S1/command-reply", False),
        ("evidence/stations/S1/status/availability", "evidence/stations/S1/command-reply", False),
        ("evidence/stations/S1/command-reply/+", "evidence/stations/S1/command-reply", False),
        ("evidence/stations/S1/command-reply/#", "evidence/stations/S1/command-reply", False),
        ("evidence/stations/S1/command-reply//x", "evidence/stations/S1/command-reply", False),
        ("evidence/stations/S1/command-replyX", "evidence/stations/S1/command-reply", False),
        ("$SYS/broker", "evidence/stations/S1/command-reply", False),
    ],
)
def test_a_response_topic_is_honoured_only_under_the_stations_command_reply(
    response_topic: str | None, expected: str, honoured: bool
) -> None:
    assert reply_topic_for("evidence", "S1", response_topic) == (expected, honoured)


STATION_KEY = StationKey.generate()
SIGNER = ReplySigner(STATION_KEY.key_id, STATION_KEY.sign)
REQUEST = b'{"the request":"payload"}'
REQUEST_SHA256 = sha256_hex(REQUEST)
KEYS = {STATION_KEY.key_id: STATION_KEY.public_key()}


def signed_reply(request_id: str | None = "ab" * 16, **kwargs: Any) -> bytes:
    return encode_reply(request_id, station="S1", op="tag", request_sha256=REQUEST_SHA256, signer=SIGNER,
                        **kwargs)


def test_replies_round_trip_signed_and_a_bad_one_is_named() -> None:
    ok = parse_reply(signed_reply(result={"seq": 3}))
    assert ok.ok and ok.result == {"seq": 3} and ok.error is None and ok.signed
    verify_reply(ok, station="S1", op=CommandOp.TAG, request_sha256=REQUEST_SHA256,
                 keys=KEYS)
    refused = parse_reply(signed_reply(None, error=CommandError.STALE, detail="issued \x1b[31m late"))
    assert not refused.ok and refused.error == "stale" and refused.detail is not None
    assert "\x1b" not in refused.detail  # device or hostile text is escaped before it is shown
    verify_reply(refused, station="S1", op=CommandOp.TAG, request_sha256=REQUEST_SHA256,
                 keys=KEYS)
    for bad in (b"[]", b'{"v":1}', b'{"v":1,"ok":true,"error":"x"}', b'{"v":1,"ok":true,"extra":1}',
                b'{"v":true,"ok":true}', b'{"v":2,"reply":{},"signature":"x"}'):
        with pytest.raises(ValueError):
            parse_reply(bad)


def _resigned(payload: bytes, key: StationKey = STATION_KEY, **changes: Any) -> bytes:
    """``payload``'s reply object changed by ``changes`` and signed again by ``key``."""
    doc = json.loads(payload)
    body = {**doc["reply"], **changes}
    signature = base64.b64encode(key.sign(canonical_json(body))).decode("ascii")
    return canonical_json({"v": 2, "reply": body, "signature": signature})


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda p: _resigned(p, station="S2"), "names station S2"),
        (lambda p: _resigned(p, request_sha256="0" * 64), "answers another request"),
        (lambda p: _resigned(p, key=StationKey.generate()), "does not verify"),
        (lambda p: _resigned(p, key_id="someone-else"), "not the key station S1 is enrolled with"),
        (lambda p: _resigned(p, op="status"), "delivered on the topic of op status"),
        (lambda p: canonical_json({**json.loads(p), "reply": {**json.loads(p)["reply"], "ok": False,
                                                               "error": "refused", "detail": "x"}}),
         "does not verify"),
        (lambda p: canonical_json({"v": 1, "request_id": "ab" * 16, "ok": True}), "not signed"),
    ],
    ids=["other-station", "other-request", "other-key", "unknown-key-id", "other-op", "edited", "unsigned"],
)
def test_a_reply_that_is_not_the_stations_signed_answer_to_this_request_is_not_authentic(
    tamper: Any, reason: str
) -> None:
    good = signed_reply(result={"seq": 3})
    verify_reply(parse_reply(good), station="S1", op=CommandOp.TAG, request_sha256=REQUEST_SHA256,
                 keys=KEYS)  # control
    with pytest.raises(ReplyNotAuthentic, match=reason):
        verify_reply(parse_reply(tamper(good)), station="S1", op=CommandOp.TAG,
                     request_sha256=REQUEST_SHA256, keys=KEYS)


def test_a_reply_cannot_be_passed_off_as_a_command_or_a_checkpoint() -> None:
    """Domain separation: the reply object's type member, which no command and no checkpoint has."""
    body = json.loads(signed_reply(result={"seq": 3}))["reply"]
    assert body["type"] == "evidence-edge command reply" != COMMAND_TYPE
    assert set(body) >= {"type", "station", "request_sha256"}


def test_a_replayed_reply_says_what_became_of_the_first_delivery() -> None:
    """A redelivery of an executed request is refused as replayed but names, signed, the first outcome: a
    program tells "took effect earlier" from a refusal (review 11)."""
    earlier = parse_reply(signed_reply(error=CommandError.REPLAYED, detail="received before",
                                       first_outcome=FirstOutcome.EXECUTED))
    verify_reply(earlier, station="S1", op=CommandOp.TAG, request_sha256=REQUEST_SHA256, keys=KEYS)
    assert not earlier.ok and earlier.executed_earlier and earlier.took_effect
    refused = parse_reply(signed_reply(error=CommandError.REPLAYED, detail="received before",
                                       first_outcome=FirstOutcome.REFUSED))
    assert not refused.took_effect and not refused.executed_earlier  # control
    plain = parse_reply(signed_reply(error=CommandError.REFUSED, detail="x"))
    assert not plain.took_effect and plain.first_outcome is None
    # Only a replayed reply may name a first outcome, and only one of the two.
    for changes in ({"first_outcome": "executed"}, {"error": "replayed", "first_outcome": "maybe"}):
        body = {**json.loads(signed_reply(error=CommandError.REFUSED, detail="x"))["reply"], **changes}
        signature = base64.b64encode(STATION_KEY.sign(canonical_json(body))).decode("ascii")
        with pytest.raises(ValueError, match="first_outcome"):
            parse_reply(canonical_json({"v": 2, "reply": body, "signature": signature}))
