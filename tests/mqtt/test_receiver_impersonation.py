"""A station publishing under another station's topics, on a broker configured WITHOUT the ACL (the shipped
configuration minus its acl_file line): the broker lets it through, so the receiver's own checks are all
that stands. The topic's station level is who the receiver acts for and answers; the registrar's checks
against that station's enrolled key refuse what the other station signed; a station names only its own
transfers. Control: the real station's own requests pass on the same broker and central."""

from __future__ import annotations

import copy
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.custody.manifest import sign_manifest
from edge.mqtt.api import ApiOp
from edge.mqtt.filetransfer import (
    Command,
    FinCommand,
    InitCommand,
    Mode,
    ReasonCode,
    scoped_topic,
    transfer_upload_id,
)
from tests.central.conftest import FakeStation
from tests.mqtt.broker import MosquittoBroker, TestPki, require_mosquitto
from tests.mqtt.central_harness import (
    STATIONS,
    file_id_for,
    init_payload,
    running_mqtt_central,
    segment_commands,
    station_receipt_problems,
    wire_station,
)


@pytest.fixture
async def open_broker(tmp_path: Path) -> AsyncIterator[tuple[MosquittoBroker, TestPki]]:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "open-broker", pki)
    lines = broker.conf_file.read_text().splitlines()
    assert any(line.startswith("acl_file ") for line in lines)
    broker.conf_file.write_text("\n".join(line for line in lines if not line.startswith("acl_file ")) + "\n")
    await broker.start()
    try:
        yield broker, pki
    finally:
        await broker.stop()


async def test_a_station_acting_as_another_is_refused_by_the_receiver_without_the_broker_acl(
    tmp_path: Path, open_broker: tuple[MosquittoBroker, TestPki]
) -> None:
    broker, pki = open_broker
    intruder, victim = FakeStation("st-a"), FakeStation("st-b")
    async with running_mqtt_central(tmp_path / "central", broker, pki) as central:
        central.enroll(intruder)
        central.enroll(victim)
        store = central.running.parts.mqtt_transfers
        assert store is not None
        index = central.running.parts.index
        async with wire_station(intruder, broker, pki) as a, wire_station(victim, broker, pki) as b:
            # A sends its own item's content under B's topics. Without the ACL the broker carries it, and the
            # receiver takes the topic's station: the transfer is B's, and its results go to B, not A.
            acquired = intruder.acquire(random.Random(1).randbytes(20_000))
            file_id = file_id_for(acquired.item)
            commands: list[tuple[Command, bytes]] = [(InitCommand(file_id, Mode.ASYNC),
                                                      init_payload(acquired.content))]
            commands += segment_commands(file_id, acquired.content, 8192)
            commands.append((FinCommand(file_id, len(acquired.content), acquired.sha256, Mode.ASYNC), b""))
            for command, payload in commands:
                await a.client.publish(scoped_topic(STATIONS, "st-b", command.topic), payload)
                topic = command.topic
                await b.wait_until(lambda: len(b.results[topic]) == 1)  # noqa: B023 (awaited at once)
                assert b.results[command.topic][0].reason_code is ReasonCode.SUCCESS
            held = store.get(transfer_upload_id("st-b", file_id))
            assert held is not None and held.station == "st-b"
            assert store.get(transfer_upload_id("st-a", file_id)) is None
            assert a.results == {}  # nothing was answered to A

            # A registers its item under B's topics: the manifest names A, the caller is B: refused, to B.
            sent = await a.request(ApiOp.REGISTER, a.register_body(acquired, file_id), as_station="st-b")
            await b.wait_until(lambda: sent.request_id in b.replies)
            refused = b.replies[sent.request_id]
            assert refused.status == 403 and refused.body["error"] == "wrong_station", refused.body

            # A forges a manifest naming B, signed with A's key: B's enrolled key refuses it (signed refusal).
            forged = copy.deepcopy(acquired.manifest)
            del forged["signature"]
            forged["source"]["station"] = "st-b"
            signed = sign_manifest(forged, intruder.key)
            body = {"upload": f"mqtt:{file_id}", "manifest": signed, "ledger": None}
            sent = await a.request(ApiOp.REGISTER, body, as_station="st-b")
            await b.wait_until(lambda: sent.request_id in b.replies)
            refused = b.replies[sent.request_id]
            assert refused.status == 422 and refused.body["error"] == "bad_signature", refused.body
            assert refused.body["refusal"]["station"] == "st-b"

            # A pushes its own ledger as B's: the checkpoint is not B's: refused, B's ledger unchanged.
            sent = await a.request(ApiOp.LEDGER_PUSH, intruder.segment(0), as_station="st-b")
            await b.wait_until(lambda: sent.request_id in b.replies)
            assert b.replies[sent.request_id].status >= 400, b.replies[sent.request_id].body
            assert index.ledger_head("st-b")[0] == 0

            # Under its own topics, A cannot name the transfer it put under B's: not found, as any other.
            own = await a.request(ApiOp.REGISTER, a.register_body(acquired, file_id))
            assert own.status == 404 and own.body["error"] == "upload_not_found", own.body
            state = await a.request(ApiOp.TRANSFER_STATE, {"file_id": file_id})
            assert state.body["known"] is False
            assert index.item(acquired.item) is None

            # Control: B's own item, over B's own topics, passes on the same broker and central.
            mine = victim.acquire(random.Random(2).randbytes(20_000))
            mine_id = file_id_for(mine.item)
            results = await b.send_file(mine_id, mine.content, segment_bytes=8192)
            assert all(r.reason_code is ReasonCode.SUCCESS for r in results)
            accepted = await b.request(ApiOp.REGISTER, b.register_body(mine, mine_id))
            assert accepted.status == 201, accepted.body
            assert station_receipt_problems(accepted.body["receipt"], central, mine, "st-b") == []
    intruder.conn.close()
    victim.conn.close()
