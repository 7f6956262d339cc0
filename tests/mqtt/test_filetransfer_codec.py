"""The EMQX file-transfer grammar: every documented topic form and its parse, every malformed form refused
with an error naming what was wrong, the init and response payloads, the packet size."""

from __future__ import annotations

import hashlib
import json

import pytest

from edge.mqtt.filetransfer import (
    MAX_INIT_PAYLOAD_BYTES,
    AbortCommand,
    Command,
    FileMeta,
    FileResponse,
    FileTransferError,
    FinCommand,
    InitCommand,
    Mode,
    ReasonCode,
    SegmentCommand,
    parse_command_topic,
    parse_init_payload,
    parse_response_payload,
    parse_response_topic,
    publish_packet_bytes,
    response_topic,
    safe_file_name,
)

SUM = hashlib.sha256(b"segment").hexdigest()
FILE_SUM = hashlib.sha256(b"file").hexdigest()
ITEM = "0f8fad5b-d9cb-469f-a165-70867728950e"

# Every documented form (EMQX develop/file-transfer/client.md), in both modes, and what it parses to.
DOCUMENTED: list[tuple[str, Command]] = [
    (f"$file/{ITEM}/init", InitCommand(ITEM)),
    (f"$file-async/{ITEM}/init", InitCommand(ITEM, Mode.ASYNC)),
    (f"$file/{ITEM}/0", SegmentCommand(ITEM, 0)),
    (f"$file/{ITEM}/1048576", SegmentCommand(ITEM, 1048576)),
    (f"$file/{ITEM}/1048576/{SUM}", SegmentCommand(ITEM, 1048576, SUM)),
    (f"$file-async/{ITEM}/0", SegmentCommand(ITEM, 0, None, Mode.ASYNC)),
    (f"$file-async/{ITEM}/7/{SUM}", SegmentCommand(ITEM, 7, SUM, Mode.ASYNC)),
    (f"$file/{ITEM}/fin/12345", FinCommand(ITEM, 12345)),
    (f"$file/{ITEM}/fin/0/{FILE_SUM}", FinCommand(ITEM, 0, FILE_SUM)),
    (f"$file-async/{ITEM}/fin/12345", FinCommand(ITEM, 12345, None, Mode.ASYNC)),
    (f"$file-async/{ITEM}/fin/12345/{FILE_SUM}", FinCommand(ITEM, 12345, FILE_SUM, Mode.ASYNC)),
    ("$file/abc/abort", AbortCommand("abc")),
    ("$file-async/abc/abort", AbortCommand("abc", Mode.ASYNC)),
    # A file id that looks like a command word is still a file id (the level after it decides).
    ("$file/fin/init", InitCommand("fin")),
    ("$file/init/0", SegmentCommand("init", 0)),
]


@pytest.mark.parametrize(("topic", "command"), DOCUMENTED, ids=[t for t, _ in DOCUMENTED])
def test_every_documented_form_parses_and_builds_back(topic: str, command: Command) -> None:
    assert parse_command_topic(topic) == command
    assert command.topic == topic


def test_an_upper_case_checksum_is_accepted_and_normalised() -> None:
    parsed = parse_command_topic(f"$file/{ITEM}/0/{SUM.upper()}")
    assert parsed == SegmentCommand(ITEM, 0, SUM)
    assert parsed.topic == f"$file/{ITEM}/0/{SUM}"


# Malformed forms, each with the words its error must contain.
MALFORMED: list[tuple[object, str]] = [
    (b"$file/a/init", "expected text"),
    ("", "start with $file/"),
    ("file/a/init", "start with $file/"),
    ("$files/a/init", "start with $file/"),
    ("$file-response/a/init", "start with $file/"),
    ("$file", "too few levels"),
    ("$file/a", "too few levels"),
    ("$file//init", "file id"),
    ("$file/.hidden/init", "file id"),
    ("$file/../init", "file id"),
    ("$file/a b/init", "file id"),
    ("$file/a+/init", "file id"),
    ("$file/#/init", "file id"),
    ("$file/\u202eevil/init", "file id"),
    ("$file/" + "x" * 129 + "/init", "file id"),
    ("$file/a/init/extra", "init takes no further levels"),
    ("$file/a/abort/1", "abort takes no further levels"),
    ("$file/a/", "segment offset"),
    ("$file/a/-1", "segment offset"),
    ("$file/a/+1", "segment offset"),
    ("$file/a/01", "segment offset"),
    ("$file/a/1.0", "segment offset"),
    ("$file/a/0x10", "segment offset"),
    ("$file/a/\uff11", "segment offset"),  # a full-width digit: str.isdigit() would take it
    ("$file/a/99999999999999999999", "segment offset"),
    ("$file/a/9223372036854775808", "segment offset"),
    ("$file/a/0/" + SUM[:63], "segment checksum"),
    ("$file/a/0/" + SUM + "0", "segment checksum"),
    ("$file/a/0/" + "g" * 64, "segment checksum"),
    ("$file/a/0/" + SUM + "/x", "too many levels"),
    ("$file/a/fin", "fin/{file_size}"),
    ("$file/a/fin/1/" + FILE_SUM + "/x", "fin/{file_size}"),
    ("$file/a/fin/-5", "fin file size"),
    ("$file/a/fin/", "fin file size"),
    ("$file/a/fin/1/zz", "fin file checksum"),
]


@pytest.mark.parametrize(("topic", "words"), MALFORMED, ids=[repr(t)[:60] for t, _ in MALFORMED])
def test_every_malformed_form_is_refused_naming_what_was_wrong(topic: object, words: str) -> None:
    with pytest.raises(FileTransferError) as caught:
        parse_command_topic(topic)
    assert words in str(caught.value)
    # One line, nothing a terminal would act on, whatever came.
    assert "\n" not in str(caught.value) and "\u202e" not in str(caught.value)


def test_builders_refuse_what_the_parser_refuses() -> None:
    with pytest.raises(FileTransferError, match="file id"):
        InitCommand("a/b")
    with pytest.raises(FileTransferError, match="offset"):
        SegmentCommand("a", -1)
    with pytest.raises(FileTransferError, match="offset"):
        SegmentCommand("a", True)
    with pytest.raises(FileTransferError, match="segment checksum"):
        SegmentCommand("a", 0, "00")
    with pytest.raises(FileTransferError, match="file size"):
        FinCommand("a", 2**63)


def test_response_topic_both_ways() -> None:
    assert response_topic("DEMO-STATION-01") == "$file-response/DEMO-STATION-01"
    assert parse_response_topic("$file-response/DEMO-STATION-01") == "DEMO-STATION-01"
    for bad in ("$file-response/", "$file-response/a/b", "$file/x", "$file-response/-a", 7):
        with pytest.raises(FileTransferError, match=r"client id|response topic"):
            parse_response_topic(bad)
    with pytest.raises(FileTransferError, match="client id"):
        response_topic("a/#")


# -- init payload -----------------------------------------------------------------------------------


def test_the_documented_init_example_parses() -> None:
    example = (
        b'{"name": "ml-logs-data.log", "size": 12345, "checksum": '
        b'"1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef", "expire_at": 1696659943, '
        b'"segments_ttl": 600}'
    )
    meta = parse_init_payload(example)
    assert meta == FileMeta(
        "ml-logs-data.log", 12345, "1234567890abcdef" * 4, expire_at=1696659943, segments_ttl=600
    )
    assert parse_init_payload(meta.to_payload()) == meta


def test_only_name_is_required_and_user_data_round_trips() -> None:
    assert parse_init_payload(b'{"name":"a.mp4"}') == FileMeta("a.mp4")
    meta = FileMeta("录像 2026.mp4", 10, FILE_SUM.upper(), user_data={"item": ITEM, "n": [1, 2]})
    assert meta.checksum == FILE_SUM
    again = parse_init_payload(meta.to_payload())
    assert again == meta and again.user_data == {"item": ITEM, "n": [1, 2]}


INIT_MALFORMED: list[tuple[bytes, str]] = [
    (b"", "init payload"),
    (b"\xff\xfe", "UTF-8"),
    (b"[]", "expected a JSON object"),
    (b'{"size": 1}', "name is missing"),
    (b'{"name": ""}', "init name"),
    (b'{"name": 5}', "init name"),
    (b'{"name": "a", "name": "b"}', "twice"),
    (b'{"name": "a", "path": "/etc/passwd"}', "unknown member"),
    (b'{"name": "a\\u0000b"}', "NUL"),
    (b'{"name": "\\ud800"}', "lone surrogate"),
    (('{"name": "' + "\u5f55" * 81 + '"}').encode(), "243 bytes"),
    (b'{"name": "a", "size": -1}', "init size"),
    (b'{"name": "a", "size": 1.5}', "init size"),
    (b'{"name": "a", "size": true}', "init size"),
    (b'{"name": "a", "size": "10"}', "init size"),
    (b'{"name": "a", "size": 9223372036854775808}', "init size"),
    (b'{"name": "a", "checksum": "abc"}', "init checksum"),
    (b'{"name": "a", "expire_at": -1}', "expire_at"),
    (b'{"name": "a", "segments_ttl": 0}', "segments_ttl"),
    (b'{"name": "a", "user_data": [1]}', "user_data"),
    (b'{"name": "a", "size": NaN}', "init payload"),
    (b'{"name": "a"', "init payload"),
    (b"[" * 5000 + b"]" * 5000, "init payload"),
    (b'{"name": "a", "user_data": {"x": "' + b"y" * MAX_INIT_PAYLOAD_BYTES + b'"}}', "at most"),
]


@pytest.mark.parametrize(("payload", "words"), INIT_MALFORMED, ids=[repr(p)[:50] for p, _ in INIT_MALFORMED])
def test_a_malformed_init_payload_is_refused_naming_what_was_wrong(payload: bytes, words: str) -> None:
    with pytest.raises(FileTransferError) as caught:
        parse_init_payload(payload)
    assert words in str(caught.value)


def test_names_are_never_paths() -> None:
    assert safe_file_name("a.mp4") == "a.mp4"
    assert safe_file_name("录像.mp4") == "录像.mp4"
    assert safe_file_name("..") == "%2E%2E"
    assert safe_file_name(".") == "%2E"
    assert safe_file_name("../../etc/passwd") == "..%2F..%2Fetc%2Fpasswd"
    assert safe_file_name("C:\\x%y") == "C%3A%5Cx%25y"
    assert safe_file_name("a\nb\u202ec") == "a%0Ab%E2%80%AEc"
    # The name of an init is kept exactly as metadata (what the recorder called it).
    assert parse_init_payload(b'{"name": "../x"}').name == "../x"


# -- responses ---------------------------------------------------------------------------------------


def test_the_documented_response_parses_and_builds() -> None:
    doc = {"vsn": "0.1", "topic": "$file-async/somefileid/init", "packet_id": 1, "reason_code": 0,
           "reason_description": "success"}
    response = parse_response_payload(json.dumps(doc).encode())
    assert response == FileResponse("$file-async/somefileid/init", 1, ReasonCode.SUCCESS, "success")
    assert response.command == InitCommand("somefileid", Mode.ASYNC)
    assert json.loads(response.to_payload()) == doc


@pytest.mark.parametrize("code", list(ReasonCode))
def test_every_documented_reason_code_round_trips(code: ReasonCode) -> None:
    response = FileResponse(f"$file/{ITEM}/0/{SUM}", 65535, code, code.name.lower())
    assert parse_response_payload(response.to_payload()) == response


def test_reason_code_values_are_the_documented_ones() -> None:
    assert {c.name: c.value for c in ReasonCode} == {
        "SUCCESS": 0x00, "RETRANSMIT_ALL": 0x10, "RESEND": 0x80, "CANCEL": 0x83, "QUOTA_EXCEEDED": 0x97,
    }


def _response(**change: object) -> bytes:
    doc: dict[str, object] = {"vsn": "0.1", "topic": "$file/a/init", "packet_id": 1, "reason_code": 0,
                              "reason_description": "success"}
    doc.update(change)
    return json.dumps(doc).encode()


RESPONSE_MALFORMED: list[tuple[bytes, str]] = [
    (b"nope", "response payload"),
    (b"[1]", "expected a JSON object"),
    (b'{"vsn": "0.1"}', "expected members"),
    (_response(extra=1), "expected members"),
    (_response(vsn="0.2"), "vsn"),
    (_response(reason_code=0x81), "reason_code"),
    (_response(reason_code="0"), "reason_code"),
    (_response(reason_code=True), "reason_code"),
    (_response(packet_id=70000), "packet_id"),
    (_response(packet_id=1.0), "packet_id"),
    (_response(topic="$file/a"), "names no file-transfer command"),
    (_response(topic=None), "response topic"),
    (_response(reason_description=7), "reason_description"),
    (_response(reason_description="x" * 600), "reason_description"),
    (b" " * 5000, "at most"),
]


@pytest.mark.parametrize(("payload", "words"), RESPONSE_MALFORMED,
                         ids=[repr(p)[:50] for p, _ in RESPONSE_MALFORMED])
def test_a_malformed_response_is_refused_naming_what_was_wrong(payload: bytes, words: str) -> None:
    with pytest.raises(FileTransferError) as caught:
        parse_response_payload(payload)
    assert words in str(caught.value)


# -- packet size -------------------------------------------------------------------------------------


def test_publish_packet_size_matches_the_mqtt_encoding() -> None:
    # 30-byte topic, 50-byte payload, QoS 1, MQTT 5 without properties:
    # fixed header 1 + remaining-length 1; topic 2 + 30; packet id 2; properties length 1; payload 50.
    assert publish_packet_bytes("t" * 30, 50) == 1 + 1 + 32 + 2 + 1 + 50
    assert publish_packet_bytes("t" * 30, 50, mqtt5=False) == 1 + 1 + 32 + 2 + 50
    # The remaining length takes 2 bytes from 128 on and 3 from 16384 on.
    assert publish_packet_bytes("t", 200) == 1 + 2 + 3 + 2 + 1 + 200
    assert publish_packet_bytes("t", 20000, properties_bytes=200) == 1 + 3 + 3 + 2 + 2 + 200 + 20000
    # UTF-8 bytes count, not characters.
    assert publish_packet_bytes("录", 0) - publish_packet_bytes("a", 0) == 2


def test_the_central_upload_id_of_a_transfer_is_keyed_by_station_and_file_id() -> None:
    from edge.mqtt.filetransfer import transfer_upload_id

    ours = transfer_upload_id("st-0001", ITEM)
    assert len(ours) == 32 and all(c in "0123456789abcdef" for c in ours)
    assert ours == transfer_upload_id("st-0001", ITEM)
    assert ours != transfer_upload_id("st-0002", ITEM)
    assert ours != transfer_upload_id("st-0001", "other")
    # No ambiguity from joining: ("a", "b.c") and ("a.b", "c") are different transfers.
    assert transfer_upload_id("a", "b.c") != transfer_upload_id("a.b", "c")
    with pytest.raises(FileTransferError, match="client id"):
        transfer_upload_id("../x", ITEM)
    with pytest.raises(FileTransferError, match="file id"):
        transfer_upload_id("st-0001", "a/b")


def test_station_scoped_topics_for_a_broker_that_only_routes() -> None:
    from edge.mqtt.filetransfer import parse_scoped_topic, scoped_topic

    inner = SegmentCommand(ITEM, 4096, SUM, Mode.ASYNC)
    topic = scoped_topic("evidence/ft", "st-0001", inner.topic)
    assert topic == f"evidence/ft/st-0001/$file-async/{ITEM}/4096/{SUM}"
    assert parse_scoped_topic("evidence/ft", topic) == ("st-0001", inner)
    for bad, words in [
        (f"evidence/ft/../$file/{ITEM}/init", "client id"),
        (f"evidence/ft//$file/{ITEM}/init", "client id"),
        (f"evidence/other/st-0001/$file/{ITEM}/init", "start with evidence/ft/"),
        ("evidence/ft/st-0001/$file/x", "too few levels"),
        ("evidence/ft/st-0001", "start with $file/"),
    ]:
        with pytest.raises(FileTransferError) as caught:
            parse_scoped_topic("evidence/ft", bad)
        assert words in str(caught.value)
    for prefix in ("", "/x", "x/", "a/+", "a/#"):
        with pytest.raises(FileTransferError, match="topic prefix"):
            scoped_topic(prefix, "st-0001", inner.topic)
