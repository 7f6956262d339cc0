"""The station -> central API codec over MQTT (contract section 3): every topic form and envelope builds and
parses back; every malformed form is refused with an error naming the wrong part."""

from __future__ import annotations

import pytest

from edge.custody.canonical import canonical_json
from edge.mqtt.api import (
    MAX_PAYLOAD_BYTES,
    ApiCodecError,
    ApiOp,
    ApiReply,
    ApiRequest,
    check_request_id,
    encode_reply,
    encode_request,
    new_request_id,
    parse_reply,
    parse_reply_topic,
    parse_request,
    parse_request_topic,
    reply_topic,
    request_subscription,
    request_topic,
)

RID = "0123456789abcdef0123456789abcdef"
P = "evidence"


@pytest.mark.parametrize("op", list(ApiOp))
def test_every_op_has_a_request_topic_that_parses_back(op: ApiOp) -> None:
    topic = request_topic(P, "st-01", op)
    assert topic == f"evidence/stations/st-01/api/request/{op.value}"
    assert parse_request_topic(P, topic) == ("st-01", op)


def test_the_op_set_is_the_contracts() -> None:
    assert {op.value for op in ApiOp} == {
        "ledger-head", "ledger-push", "ledger-page", "register", "abandon", "tree-head", "consistency",
        "transfer-state", "officers", "fleet-report",
    }


def test_reply_topic_and_a_multi_level_prefix() -> None:
    assert reply_topic(P, "st-01") == "evidence/stations/st-01/api/reply"
    assert parse_reply_topic(P, "evidence/stations/st-01/api/reply") == "st-01"
    assert parse_reply_topic("agency/x", "agency/x/stations/a.b_c-9/api/reply") == "a.b_c-9"
    assert request_subscription("agency/x") == "agency/x/stations/+/api/request/+"


MALFORMED_REQUEST_TOPICS: list[tuple[object, str]] = [
    (b"evidence/stations/s/api/request/register", "expected text"),
    ("", "start with evidence/stations/"),
    ("other/stations/s/api/request/register", "start with evidence/stations/"),
    ("evidence/station/s/api/request/register", "start with evidence/stations/"),
    ("evidence/stations//api/request/register", "station"),
    ("evidence/stations/+/api/request/register", "station"),
    ("evidence/stations/.s/api/request/register", "station"),
    ("evidence/stations/" + "s" * 65 + "/api/request/register", "station"),
    ("evidence/stations/s/api/request", "expected evidence/stations/{station}/api/request/{op}"),
    ("evidence/stations/s/api/request/register/x", "expected evidence/stations/{station}/api/request/{op}"),
    ("evidence/stations/s/api/reply", "expected evidence/stations/{station}/api/request/{op}"),
    ("evidence/stations/s/command/register", "expected evidence/stations/{station}/api/request/{op}"),
    ("evidence/stations/s/api/request/delete", "op: expected one of"),
    ("evidence/stations/s/api/request/Register", "op: expected one of"),
    ("evidence/stations/s/api/request/", "op: expected one of"),
    ("evidence/stations/s", "expected evidence/stations/{station}/api/request/{op}"),
]


@pytest.mark.parametrize(("topic", "words"), MALFORMED_REQUEST_TOPICS, ids=[repr(t)[:60] for t, _ in
                                                                             MALFORMED_REQUEST_TOPICS])
def test_malformed_request_topics_are_refused_naming_the_part(topic: object, words: str) -> None:
    with pytest.raises(ApiCodecError, match=r"request topic|station|op:") as caught:
        parse_request_topic(P, topic)
    assert words in str(caught.value)


@pytest.mark.parametrize("topic", [
    "evidence/stations/s/api/reply/x", "evidence/stations/s/api/request/register", "evidence/stations/s/api",
    "evidence/stations/s/reply", "evidence/x/s/api/reply",
])
def test_malformed_reply_topics_are_refused(topic: str) -> None:
    with pytest.raises(ApiCodecError, match="reply topic"):
        parse_reply_topic(P, topic)


@pytest.mark.parametrize(("prefix", "station", "op", "words"), [
    ("", "s", "register", "topic prefix"),
    ("evidence/", "s", "register", "topic prefix"),
    ("/evidence", "s", "register", "topic prefix"),
    ("a//b", "s", "register", "topic prefix"),
    ("ev/+", "s", "register", "topic prefix"),
    ("ev/#", "s", "register", "topic prefix"),
    ("$SYS", "s", "register", "topic prefix"),
    ("evidence", "a/b", "register", "station"),
    ("evidence", "", "register", "station"),
    ("evidence", "s", "unregister", "op"),
])
def test_topics_are_not_built_from_bad_parts(prefix: str, station: str, op: str, words: str) -> None:
    with pytest.raises(ApiCodecError, match=words):
        request_topic(prefix, station, op)


# -- requests ----------------------------------------------------------------------------------------


def test_a_request_encodes_canonically_and_parses_back() -> None:
    body = {"upload": "mqtt:item.0a1b2c3d", "manifest": {"b": 1, "a": "记录仪"}, "ledger": None}
    request = ApiRequest(RID, ApiOp.REGISTER, body)
    payload = encode_request(request)
    assert payload == canonical_json({"v": 1, "request_id": RID, "op": "register", "body": body})
    assert parse_request(payload, op="register") == request
    assert parse_request(payload).body == body
    # The op may be given as text, and is kept as the enum.
    assert ApiRequest(RID, "tree-head", {}).op is ApiOp.TREE_HEAD  # type: ignore[arg-type]


def test_new_request_ids_are_valid_and_distinct() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(check_request_id(i) == i for i in ids)


def _raw(doc: object) -> bytes:
    return canonical_json(doc)


GOOD_REQUEST = {"v": 1, "request_id": RID, "op": "ledger-page", "body": {"after": 0, "limit": 10}}

MALFORMED_REQUESTS: list[tuple[object, str]] = [
    ("not bytes", "expected bytes"),
    (b"", "request payload: expected JSON text"),
    (b"\xff\xfe", "UTF-8"),
    (b"[1]", "expected a JSON object, got list"),
    (b'"x"', "expected a JSON object, got str"),
    (b'{"v":1,"v":1,"request_id":"' + RID.encode() + b'","op":"ledger-head","body":{}}', "unique"),
    (b'{"body":{},"op":"ledger-head","request_id":"' + RID.encode() + b'","v":NaN}', "finite"),
    (_raw({k: v for k, v in GOOD_REQUEST.items() if k != "body"}), "missing body"),
    (_raw({**GOOD_REQUEST, "extra": 1}), "unknown 'extra'"),
    (_raw({**GOOD_REQUEST, "v": 2}), "request v: expected 1"),
    (_raw({**GOOD_REQUEST, "v": "1"}), "request v: expected 1"),
    (_raw({**GOOD_REQUEST, "v": True}), "request v: expected 1"),
    (_raw({**GOOD_REQUEST, "request_id": RID.upper()}), "request_id"),
    (_raw({**GOOD_REQUEST, "request_id": RID[:-1]}), "request_id"),
    (_raw({**GOOD_REQUEST, "request_id": RID + "0"}), "request_id"),
    (_raw({**GOOD_REQUEST, "request_id": 12}), "request_id"),
    (_raw({**GOOD_REQUEST, "op": "drop-table"}), "op: expected one of"),
    (_raw({**GOOD_REQUEST, "op": None}), "op: expected one of"),
    (_raw({**GOOD_REQUEST, "body": []}), "request body: expected a JSON object"),
    (_raw({**GOOD_REQUEST, "body": None}), "request body: expected a JSON object"),
    # Valid JSON, but not the one canonical byte form.
    (b'{"v":1,"request_id":"' + RID.encode() + b'","op":"ledger-head","body":{}}', "not canonical"),
    (_raw(GOOD_REQUEST) + b" ", "not canonical"),
    (_raw(GOOD_REQUEST).replace(b'"after":0', b'"after":0.0'), "not canonical"),
    (_raw(GOOD_REQUEST).replace(b'"after":0', b'"after":9007199254740993'), "not canonical"),
    (_raw(GOOD_REQUEST).replace(b"ledger-page", b"ledger\\u002dpage"), "not canonical"),
]


@pytest.mark.parametrize(("payload", "words"), MALFORMED_REQUESTS,
                         ids=[repr(p)[:50] for p, _ in MALFORMED_REQUESTS])
def test_malformed_requests_are_refused_naming_the_part(payload: object, words: str) -> None:
    with pytest.raises(ApiCodecError) as caught:
        parse_request(payload)
    assert words in str(caught.value)


def test_control_the_good_request_parses() -> None:
    # The table above differs from this one by one part each: it parses, so each refusal is its part's.
    assert parse_request(_raw(GOOD_REQUEST)) == ApiRequest(RID, ApiOp.LEDGER_PAGE, {"after": 0, "limit": 10})


def test_the_payload_op_must_match_the_topic_op() -> None:
    with pytest.raises(ApiCodecError, match="the topic says register, the payload ledger-page"):
        parse_request(_raw(GOOD_REQUEST), op=ApiOp.REGISTER)


def test_size_bounds_on_parse_and_on_encode() -> None:
    big = {**GOOD_REQUEST, "body": {"pad": "x" * MAX_PAYLOAD_BYTES}}
    with pytest.raises(ApiCodecError, match=r"request payload: \d+ bytes, at most 2097152 allowed"):
        parse_request(_raw(big))
    with pytest.raises(ApiCodecError, match=r"request payload: .* at most 100 allowed"):
        encode_request(ApiRequest(RID, ApiOp.LEDGER_PUSH, {"pad": "x" * 100}), max_bytes=100)
    with pytest.raises(ApiCodecError, match="at most 50 allowed"):
        parse_request(_raw(GOOD_REQUEST), max_bytes=50)
    # Control: exactly at the bound is accepted.
    payload = _raw(GOOD_REQUEST)
    assert parse_request(payload, max_bytes=len(payload)).op is ApiOp.LEDGER_PAGE


def test_a_body_that_is_not_json_cannot_be_encoded() -> None:
    with pytest.raises(ApiCodecError, match="request body: not expressible as canonical JSON"):
        encode_request(ApiRequest(RID, ApiOp.REGISTER, {"bytes": b"\x00"}))
    with pytest.raises(ApiCodecError, match="request body: expected a JSON object"):
        ApiRequest(RID, ApiOp.REGISTER, [])  # type: ignore[arg-type]
    with pytest.raises(ApiCodecError, match="request_id"):
        ApiRequest("x", ApiOp.REGISTER, {})


# -- replies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body"), [
    (200, {"seq": 3, "hash": "ab" * 32}),
    (201, {"receipt": {"a": 1}}),
    (409, {"error": "conflict", "detail": "重复", "refusal": {"sig": "x"}}),
    (503, {"error": "busy", "detail": "later"}),
    (100, None),
    (599, [1, 2]),
])
def test_a_reply_encodes_canonically_and_parses_back(status: int, body: object) -> None:
    reply = ApiReply(RID, status, body)
    payload = encode_reply(reply)
    assert payload == canonical_json({"v": 1, "request_id": RID, "status": status, "body": body})
    parsed = parse_reply(payload)
    assert parsed == reply and parsed.body == body
    assert parsed.ok is (200 <= status < 300)


GOOD_REPLY = {"v": 1, "request_id": RID, "status": 200, "body": {"seq": 0}}

MALFORMED_REPLIES: list[tuple[object, str]] = [
    (None, "expected bytes"),
    (b"", "reply payload: expected JSON text"),
    (b"<html>502 Bad Gateway</html>", "reply payload: expected JSON text"),
    (b"null", "expected a JSON object, got NoneType"),
    (_raw({k: v for k, v in GOOD_REPLY.items() if k != "status"}), "missing status"),
    (_raw({**GOOD_REPLY, "op": "register"}), "unknown 'op'"),
    (_raw({**GOOD_REPLY, "v": 0}), "reply v: expected 1"),
    (_raw({**GOOD_REPLY, "request_id": "z" * 32}), "request_id"),
    (_raw({**GOOD_REPLY, "status": 99}), "reply status: expected an HTTP status 100..599"),
    (_raw({**GOOD_REPLY, "status": 600}), "reply status"),
    (_raw({**GOOD_REPLY, "status": "200"}), "reply status"),
    (_raw({**GOOD_REPLY, "status": True}), "reply status"),
    (_raw({**GOOD_REPLY, "status": 200.5}), "reply status"),
    (_raw(GOOD_REPLY).replace(b'"status":200', b'"status":200.0'), "not canonical"),
    (b" " + _raw(GOOD_REPLY), "not canonical"),
    (_raw(GOOD_REPLY).replace(b'"body"', b'"bo\\u0064y"'), "not canonical"),
]


@pytest.mark.parametrize(("payload", "words"), MALFORMED_REPLIES,
                         ids=[repr(p)[:50] for p, _ in MALFORMED_REPLIES])
def test_malformed_replies_are_refused_naming_the_part(payload: object, words: str) -> None:
    with pytest.raises(ApiCodecError) as caught:
        parse_reply(payload)
    assert words in str(caught.value)


def test_control_the_good_reply_parses() -> None:
    assert parse_reply(_raw(GOOD_REPLY)) == ApiReply(RID, 200, {"seq": 0})


def test_replies_are_bounded() -> None:
    with pytest.raises(ApiCodecError, match=r"reply payload: .* at most 2097152 allowed"):
        parse_reply(_raw({**GOOD_REPLY, "body": "x" * MAX_PAYLOAD_BYTES}))
    with pytest.raises(ApiCodecError, match=r"reply payload: .* at most 10 allowed"):
        encode_reply(ApiReply(RID, 200, {}), max_bytes=10)
    with pytest.raises(ApiCodecError, match="reply status"):
        ApiReply(RID, 700, {})


def test_errors_show_hostile_text_safely() -> None:
    with pytest.raises(ApiCodecError) as caught:
        parse_request_topic(P, "evidence/stations/s/api/request/\x1b[2Jop")
    assert "\x1b" not in str(caught.value)
    with pytest.raises(ApiCodecError) as caught:
        parse_reply(_raw({**GOOD_REPLY, "request_id": "\u202e" + "a" * 300}))
    message = str(caught.value)
    assert "\u202e" not in message and len(message) < 200
