"""The central's MQTT receiver, end to end: a real central (start_central with an [mqtt] section) and a real
Mosquitto (TLS, client certificates, the shipped configuration and ACL), with a test-side station driving
the contract's wire: evidence content as EMQX file-transfer commands under its own topics, and the API
(ledger, registration) as requests answered on its reply topic."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.central.mqtt_ingest_store import TransferState
from edge.central.objects import ReceivedContent, Retention
from edge.custody.canonical import canonical_json
from edge.mqtt.api import ApiOp
from edge.mqtt.client import ConnectionState
from edge.mqtt.filetransfer import (
    AbortCommand,
    FinCommand,
    InitCommand,
    Mode,
    ReasonCode,
    SegmentCommand,
    transfer_upload_id,
)
from tests.central.conftest import FakeStation
from tests.mqtt.broker import MosquittoBroker, TestPki
from tests.mqtt.central_harness import (
    MqttCentral,
    file_id_for,
    init_payload,
    running_mqtt_central,
    segment_commands,
    station_receipt_problems,
    wire_station,
)

SEGMENT = 4096


@pytest.fixture
async def central(tmp_path: Path, broker: MosquittoBroker, pki: TestPki) -> AsyncIterator[MqttCentral]:
    async with running_mqtt_central(tmp_path / "central", broker, pki, max_segment_kb=64) as running:
        yield running


def _content(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_a_file_sent_over_mqtt_is_registered_with_the_receipt_the_station_verifies(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki
) -> None:
    fake = FakeStation("st-0001")
    central.enroll(fake)
    acquired = fake.acquire(_content(50_000))
    file_id = file_id_for(acquired.item)
    async with wire_station(fake, broker, pki) as station:
        results = await station.send_file(file_id, acquired.content, segment_bytes=SEGMENT)
        assert [r.reason_code for r in results] == [ReasonCode.SUCCESS] * len(results)
        # Each result echoes its command's topic (the $file-async form), as EMQX does.
        assert results[0].topic == f"$file-async/{file_id}/init"
        assert results[-1].topic == FinCommand(file_id, len(acquired.content),
                                               acquired.sha256, Mode.ASYNC).topic
        state = await station.request(ApiOp.TRANSFER_STATE, {"file_id": file_id})
        assert (state.status, state.body) == (200, {"file_id": file_id, "known": True, "complete": True,
                                                    "segments": [[0, len(acquired.content)]]})

        reply = await station.request(ApiOp.REGISTER, station.register_body(acquired, file_id))
        assert reply.status == 201, reply.body
        assert station_receipt_problems(reply.body["receipt"], central, acquired, fake.station_id) == []
        parts = central.running.parts
        assert parts.file_objects.path_of(acquired.sha256).read_bytes() == acquired.content
        record = parts.index.item(acquired.item)
        assert record is not None and record.station == fake.station_id
        # Registration took the transfer, as it takes a tus upload.
        gone = await station.request(ApiOp.TRANSFER_STATE, {"file_id": file_id})
        assert gone.body == {"file_id": file_id, "known": False, "segments": [], "complete": False}

        # A replay answers 200 with the same leaf (what HTTP answers), and the log did not grow.
        size = parts.merkle.size()
        again = await station.request(ApiOp.REGISTER, station.register_body(acquired, file_id))
        assert again.status == 200
        assert again.body["receipt"]["leaf_index"] == reply.body["receipt"]["leaf_index"]
        assert parts.merkle.size() == size

        # The ledger ops answer what their HTTP endpoints answer, for this station.
        head = await station.request(ApiOp.LEDGER_HEAD, {})
        assert head.status == 200
        # Always on the station's own reply topic, with the request id as correlation data, whatever
        # response topic the request named.
        elsewhere = await station.request(ApiOp.LEDGER_HEAD, {},
                                          response_topic="evidence/stations/st-9999/api/reply")
        assert elsewhere.status == 200
        message = station.reply_messages[-1]
        assert message.topic == "evidence/stations/st-0001/api/reply"
        assert message.correlation_data == elsewhere.request_id.encode("ascii")
        assert (head.body["seq"], head.body["hash"]) == parts.index.ledger_head(fake.station_id)
        page = await station.request(ApiOp.LEDGER_PAGE, {"after": 0, "limit": 2})
        assert page.status == 200 and [e["seq"] for e in page.body["entries"]] == [1, 2]
        assert page.body["next"] == 2
        tree = await station.request(ApiOp.TREE_HEAD, {})
        assert tree.status == 200 and tree.body["tree_size"] == parts.merkle.size()
        proof = await station.request(ApiOp.CONSISTENCY, {"first": 1, "second": parts.merkle.size()})
        assert proof.status == 200 and proof.body["first"] == 1
    fake.conn.close()


async def test_segments_out_of_order_and_duplicated_assemble_once(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki
) -> None:
    fake = FakeStation("st-0002")
    central.enroll(fake)
    acquired = fake.acquire(_content(40_000, seed=2))
    file_id = file_id_for(acquired.item)
    count = len(segment_commands(file_id, acquired.content, SEGMENT))
    order = [*range(count), 0, 3, 3, count - 1]
    random.Random(5).shuffle(order)
    async with wire_station(fake, broker, pki) as station:
        results = await station.send_file(file_id, acquired.content, segment_bytes=SEGMENT, order=order)
        assert all(r.reason_code is ReasonCode.SUCCESS for r in results), [r.reason_description
                                                                          for r in results]
        assert sum("already stored" in r.reason_description for r in results) == 4
        store = central.running.parts.mqtt_transfers
        assert store is not None
        upload_id = transfer_upload_id(fake.station_id, file_id)
        # One journal record per distinct segment: the duplicates stored nothing twice.
        assert (store.root / f"{upload_id}.segments").stat().st_size == 48 * count
        assert store.complete_path(upload_id).read_bytes() == acquired.content
        reply = await station.request(ApiOp.REGISTER, station.register_body(acquired, file_id))
        assert reply.status == 201, reply.body
    fake.conn.close()


async def test_wrong_checksums_sizes_limits_and_unknown_transfers_are_answered_and_store_nothing(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki
) -> None:
    fake = FakeStation("st-0003")
    central.enroll(fake)
    data = _content(100_000, seed=3)
    acquired = fake.acquire(data)
    file_id = file_id_for(acquired.item)
    store = central.running.parts.mqtt_transfers
    assert store is not None
    upload_id = transfer_upload_id(fake.station_id, file_id)
    async with wire_station(fake, broker, pki) as station:
        # A segment for a transfer never initialised: refused, and nothing is created for it.
        unknown = await station.command(SegmentCommand(file_id, 0, hashlib.sha256(data[:10]).hexdigest(),
                                                       Mode.ASYNC), data[:10])
        assert unknown.reason_code is ReasonCode.CANCEL and "init it first" in unknown.reason_description
        assert store.get(upload_id) is None

        init = await station.command(InitCommand(file_id, Mode.ASYNC), init_payload(data))
        assert init.reason_code is ReasonCode.SUCCESS

        # A segment whose bytes do not hash to its topic's checksum: resend asked, nothing stored.
        wrong = SegmentCommand(file_id, 0, hashlib.sha256(b"other bytes").hexdigest(), Mode.ASYNC)
        answer = await station.command(wrong, data[:SEGMENT])
        assert answer.reason_code is ReasonCode.RESEND and "hash to" in answer.reason_description
        facts = store.get(upload_id)
        assert facts is not None and facts.received_bytes == 0

        # A segment over the receiver's limit (64 KiB here): refused, nothing stored; one within it passes.
        big = data[:65 * 1024 + 1]
        too_big = SegmentCommand(file_id, 0, hashlib.sha256(big).hexdigest(), Mode.ASYNC)
        over = await station.command(too_big, big)
        assert over.reason_code is ReasonCode.CANCEL and "over the limit" in over.reason_description
        facts = store.get(upload_id)
        assert facts is not None and facts.received_bytes == 0
        for command, chunk in segment_commands(file_id, data, 60 * 1024):
            assert (await station.command(command, chunk)).reason_code is ReasonCode.SUCCESS

        # fin with the wrong size, then the wrong hash: refused, the transfer kept as it was.
        sha = acquired.sha256
        wrong_size = await station.command(FinCommand(file_id, len(data) + 1, sha, Mode.ASYNC))
        assert wrong_size.reason_code is ReasonCode.CANCEL
        assert "differs from the size" in wrong_size.reason_description
        wrong_hash = await station.command(FinCommand(file_id, len(data), "ab" * 32, Mode.ASYNC))
        assert wrong_hash.reason_code is ReasonCode.CANCEL and "checksum" in wrong_hash.reason_description
        state = await station.request(ApiOp.TRANSFER_STATE, {"file_id": file_id})
        assert state.body == {"file_id": file_id, "known": True, "complete": False,
                              "segments": [[0, len(data)]]}
        # The right fin afterwards completes it: nothing was lost to the refusals.
        assert (await station.command(FinCommand(file_id, len(data), sha, Mode.ASYNC))).reason_code is \
            ReasonCode.SUCCESS
        facts = store.get(upload_id)
        assert facts is not None and facts.state is TransferState.COMPLETE and facts.sha256 == sha
        reply = await station.request(ApiOp.REGISTER, station.register_body(acquired, file_id))
        assert reply.status == 201, reply.body

        # abort of another transfer, then abandon of what is left: the station gives up its own only.
        other = file_id_for(acquired.item)
        assert (await station.command(InitCommand(other, Mode.ASYNC), init_payload(data))).reason_code is \
            ReasonCode.SUCCESS
        assert (await station.command(AbortCommand(other, Mode.ASYNC))).reason_code is ReasonCode.SUCCESS
        abandoned = await station.request(ApiOp.ABANDON, {"upload": f"mqtt:{other}"})
        assert (abandoned.status, abandoned.body) == (204, None)
        assert store.get(transfer_upload_id(fake.station_id, other)) is None
        missing = await station.request(ApiOp.ABANDON, {"upload": f"mqtt:{other}"})
        assert missing.status == 404 and missing.body["error"] == "not_found"
    fake.conn.close()


async def test_a_station_not_enrolled_or_revoked_is_refused_before_the_store(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki
) -> None:
    fake = FakeStation("st-0004")
    data = _content(1000, seed=4)
    file_id = file_id_for("item-0004")
    store = central.running.parts.mqtt_transfers
    assert store is not None
    async with wire_station(fake, broker, pki) as station:
        refused = await station.command(InitCommand(file_id, Mode.ASYNC), init_payload(data))
        assert refused.reason_code is ReasonCode.CANCEL and "not enrolled" in refused.reason_description
        reply = await station.request(ApiOp.LEDGER_HEAD, {})
        assert reply.status == 403 and reply.body["error"] == "unknown_station"
        assert store.get(transfer_upload_id(fake.station_id, file_id)) is None
        # Control: enrolled, the same init passes; revoked, refused again at once.
        central.enroll(fake)
        assert (await station.command(InitCommand(file_id, Mode.ASYNC), init_payload(data))).reason_code is \
            ReasonCode.SUCCESS
        central.running.parts.index.revoke_station(fake.station_id, "lost")
        segment, chunk = segment_commands(file_id, data, 1000)[0]
        revoked = await station.command(segment, chunk)
        assert revoked.reason_code is ReasonCode.CANCEL and "revoked" in revoked.reason_description
        assert (await station.request(ApiOp.LEDGER_HEAD, {})).body["error"] == "station_revoked"
    fake.conn.close()


_GOOD = {"v": 1, "request_id": "a" * 32, "op": "ledger-head", "body": {}}


@pytest.mark.parametrize(
    ("op", "payload", "expected_id", "needle"),
    [
        ("ledger-head", b"not json", None, "request payload"),
        ("ledger-head", b'{"v":1,"request_id":"' + b"b" * 32 + b'","op":"ledger-head", "body":{}}', "b" * 32,
         "not canonical"),
        ("ledger-head", canonical_json({**_GOOD, "extra": 1}), "a" * 32, "unknown 'extra'"),
        ("ledger-head", canonical_json({**_GOOD, "v": 2}), "a" * 32, "request v"),
        ("ledger-head", canonical_json({**_GOOD, "op": "register"}), "a" * 32, "the topic says ledger-head"),
        ("ledger-head", canonical_json({**_GOOD, "request_id": "XYZ"}), None, "request_id"),
        ("no-such-op", canonical_json(_GOOD), "a" * 32, "op: expected one of"),
        ("ledger-head", canonical_json({**_GOOD, "body": []}), "a" * 32, "request body"),
        ("ledger-head", canonical_json({**_GOOD, "body": {"x": 1}}), "a" * 32, "expected no members"),
        ("ledger-page", canonical_json({**_GOOD, "op": "ledger-page", "body": {"after": -1}}), "a" * 32,
         "after must be an integer"),
        ("ledger-page", canonical_json({**_GOOD, "op": "ledger-page", "body": {"after": True}}), "a" * 32,
         "after must be an integer"),
        ("consistency", canonical_json({**_GOOD, "op": "consistency", "body": {"first": 0}}), "a" * 32,
         "expected first, second"),
        ("transfer-state", canonical_json({**_GOOD, "op": "transfer-state", "body": {"file_id": "../x"}}),
         "a" * 32, "file id"),
        ("register", canonical_json({**_GOOD, "op": "register", "body": {"upload": "mqtt:/etc"}}), "a" * 32,
         "upload must be"),
        ("abandon", canonical_json({**_GOOD, "op": "abandon", "body": {"upload": 7}}), "a" * 32,
         "upload must be"),
    ],
)
async def test_malformed_requests_get_a_400_naming_what_was_wrong_and_the_receiver_goes_on(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki, op: str, payload: bytes,
    expected_id: str | None, needle: str,
) -> None:
    fake = FakeStation("st-0005")
    central.enroll(fake)
    async with wire_station(fake, broker, pki) as station:
        reply = await station.request(op, raw=payload)
        assert reply.status == 400, reply.body
        assert reply.body["error"] == "bad_request" and needle in reply.body["detail"], reply.body
        assert reply.request_id == (expected_id or "0" * 32)
        # The receiver keeps running: a good request right after is answered.
        good = await station.request(ApiOp.LEDGER_HEAD, {})
        assert good.status == 200
    fake.conn.close()


async def test_a_request_over_the_size_limit_gets_413(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    fake = FakeStation("st-0006")
    async with running_mqtt_central(tmp_path / "c", broker, pki, max_request_kb=1) as central:
        central.enroll(fake)
        async with wire_station(fake, broker, pki) as station:
            body = {"upload": "mqtt:x", "manifest": {"pad": "x" * 2000}}
            payload = canonical_json({"v": 1, "request_id": "c" * 32, "op": "register", "body": body})
            reply = await station.request("register", raw=payload)
            assert reply.status == 413 and reply.body["error"] == "too_large", reply.body
            # Control: a small request passes the same receiver.
            assert (await station.request(ApiOp.LEDGER_HEAD, {})).status == 200
        receiver = central.receiver
    # The central's stop ended the receiver's connections cleanly (DISCONNECT: the sessions stay).
    assert receiver.client is not None and receiver.api_client is not None
    assert receiver.client.status.state is ConnectionState.CLOSED
    assert receiver.api_client.status.state is ConnectionState.CLOSED
    fake.conn.close()


async def test_the_synchronous_form_is_answered_on_the_response_topic_too(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki
) -> None:
    """EMQX's $file/... (result in the PUBACK there): behind Mosquitto the receiver answers it like
    $file-async/..., on $file-response/S, with the command's own topic."""
    fake = FakeStation("st-0007")
    central.enroll(fake)
    data = _content(5000, seed=7)
    file_id = file_id_for("item-0007")
    async with wire_station(fake, broker, pki) as station:
        init = await station.command(InitCommand(file_id, Mode.SYNC), init_payload(data))
        assert init.reason_code is ReasonCode.SUCCESS and init.topic == f"$file/{file_id}/init"
        sha = hashlib.sha256(data).hexdigest()
        segment = SegmentCommand(file_id, 0, sha, Mode.SYNC)
        assert (await station.command(segment, data)).reason_code is ReasonCode.SUCCESS
        fin = await station.command(FinCommand(file_id, len(data), sha, Mode.SYNC))
        assert fin.reason_code is ReasonCode.SUCCESS
    fake.conn.close()


async def test_a_registration_in_progress_does_not_hold_up_segments(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration re-hashes the whole file (minutes for a large one); meanwhile segments are answered:
    the API has its own connection."""
    fake = FakeStation("st-0008")
    central.enroll(fake)
    acquired = fake.acquire(_content(20_000, seed=8))
    file_id = file_id_for(acquired.item)
    registrar = central.running.parts.registrar
    hashing, release = threading.Event(), threading.Event()
    put_content = registrar._put_content

    def held_put_content(
        path: Path, sha256: str, retention: Retention, received: ReceivedContent | None
    ) -> None:
        hashing.set()
        assert release.wait(60)
        put_content(path, sha256, retention, received)

    monkeypatch.setattr(registrar, "_put_content", held_put_content)
    async with wire_station(fake, broker, pki) as station:
        await station.send_file(file_id, acquired.content)
        body = station.register_body(acquired, file_id)
        registering = asyncio.create_task(station.request(ApiOp.REGISTER, body))
        try:
            assert await asyncio.to_thread(hashing.wait, 30)
            # While the registration hashes, another transfer's commands are answered.
            other = _content(3000, seed=9)
            other_id = file_id_for("item-0008b")
            init = await station.command(InitCommand(other_id, Mode.ASYNC), init_payload(other), timeout_s=10)
            assert init.reason_code is ReasonCode.SUCCESS
            assert not registering.done()
        finally:
            release.set()
        reply = await registering
        assert reply.status == 201, reply.body
    fake.conn.close()


async def test_hostile_transfer_messages_are_answered_or_dropped_and_the_receiver_goes_on(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki
) -> None:
    fake = FakeStation("st-0009")
    central.enroll(fake)
    file_id = file_id_for("item-0009")
    receiver = central.receiver
    async with wire_station(fake, broker, pki) as station:
        # Topics that name no command: nothing to echo, so dropped (and logged), nothing stored.
        root = "evidence/stations/st-0009"
        for tail in ("$file-async/../init", "$file-async/x/007", "$file-async/x/fin/1/zz", "$file-async",
                     f"$file-async/{file_id}/0/{'A' * 63}"):
            await station.client.publish(f"{root}/{tail}", b"\xff" * 10)
        # A command whose payload is hostile: answered with what was wrong.
        init = InitCommand(file_id, Mode.ASYNC)
        hostile = ((b"\xff\xfe", "init payload"), (b'{"name":"a","size":1,"evil":1}', "unknown"),
                   (b'{"name":"a","size":-1}', "init size"))
        for payload, needle in hostile:
            answer = await station.command(init, payload)
            assert answer.reason_code is not ReasonCode.SUCCESS, answer
            assert needle in answer.reason_description, answer
        assert receiver.counts.dropped == 5
        # Still answering: the right init passes.
        assert (await station.command(init, init_payload(b"abc"))).reason_code is ReasonCode.SUCCESS
    assert central.running.parts.mqtt_transfers is not None
    names = {p.name for p in central.running.parts.mqtt_transfers.root.iterdir()}
    ours = transfer_upload_id("st-0009", file_id)
    assert all(n.startswith(ours) or n in ("incidents.jsonl", "receive-queue") for n in names)
    fake.conn.close()
