"""The central's replies and results that the broker will not take (review 8, finding 2).

A reply over the broker's maximum packet size used to fail the receiver's handler (PacketTooLarge): the
request was never answered nor acknowledged, and held one of the broker's in-flight slots of the API
connection until the next reconnection. Now a short 413 reply goes instead, and the request is
acknowledged. The broker here runs the shipped configuration with a small max_packet_size, so that an
ordinary refusal's reply is over it while the short reply is not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from edge.custody.canonical import canonical_json
from edge.mqtt.api import ApiOp, new_request_id, reply_topic
from edge.mqtt.client import ConnectionState, PublishAck, PublishRefused
from edge.mqtt.filetransfer import InitCommand, Mode, ReasonCode, scoped_topic
from tests.central.conftest import FakeStation
from tests.mqtt.broker import TOPIC_PREFIX, MosquittoBroker, TestPki, require_mosquitto
from tests.mqtt.central_harness import (
    STATIONS,
    MqttCentral,
    file_id_for,
    init_payload,
    running_mqtt_central,
    wire_station,
)

SMALL_PACKET = 400


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[tuple[MosquittoBroker, TestPki]]:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", pki)
    conf = broker.conf_file.read_text()
    assert "max_packet_size 2097152" in conf
    broker.conf_file.write_text(conf.replace("max_packet_size 2097152", f"max_packet_size {SMALL_PACKET}"))
    await broker.start()
    try:
        yield broker, pki
    finally:
        await broker.stop()


@pytest.fixture
async def central(tmp_path: Path, broker: tuple[MosquittoBroker, TestPki]) -> AsyncIterator[MqttCentral]:
    mosquitto, pki = broker
    async with running_mqtt_central(tmp_path / "central", mosquitto, pki) as running:
        yield running


async def test_a_reply_over_the_broker_packet_size_is_replaced_by_a_short_413(
    central: MqttCentral, broker: tuple[MosquittoBroker, TestPki]
) -> None:
    mosquitto, pki = broker
    station = FakeStation("st-a")
    central.enroll(station)
    async with wire_station(station, mosquitto, pki) as a:
        # Control: a refusal that names one short member goes through this broker as it is.
        assert (await a.request(ApiOp.LEDGER_HEAD, {"x": 0})).status == 400
        # Five unknown members, each 40 characters once escaped: the 400 refusal's reply is over 400 bytes
        # while the request is not.
        request_id = new_request_id()
        body = {"\u200b" * 6 + f"{i}": 0 for i in range(5)}
        payload = canonical_json({"v": 1, "request_id": request_id, "op": "ledger-head", "body": body})
        await a.client.publish(f"{TOPIC_PREFIX}/stations/st-a/api/request/ledger-head", payload, qos=1,
                               response_topic=reply_topic(TOPIC_PREFIX, "st-a"),
                               correlation_data=request_id.encode("ascii"))
        await a.wait_until(lambda: request_id in a.replies, 20.0)
        reply = a.replies[request_id]
        assert reply.status == 413
        assert isinstance(reply.body, dict) and reply.body["error"] == "too_large"
        assert f"maximum packet size ({SMALL_PACKET} bytes)" in reply.body["detail"]
        # The request was acknowledged: the API goes on answering (and nothing comes back twice).
        assert (await a.request(ApiOp.LEDGER_HEAD, {"x": 0})).status == 400
        assert sum(1 for m in a.reply_messages if request_id.encode() in m.payload) == 1


@pytest.fixture
async def plain_broker(tmp_path: Path) -> AsyncIterator[tuple[MosquittoBroker, TestPki]]:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki2")
    broker = MosquittoBroker(tmp_path / "broker2", pki)
    await broker.start()
    try:
        yield broker, pki
    finally:
        await broker.stop()


async def test_a_transfer_result_the_broker_refuses_is_logged_and_the_command_acknowledged(
    tmp_path: Path, plain_broker: tuple[MosquittoBroker, TestPki], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The content path: a result that cannot be published used to fail the handler, leaving the command
    unacknowledged (an in-flight slot held until the next reconnection, then the command again)."""
    mosquitto, pki = plain_broker
    async with running_mqtt_central(tmp_path / "central2", mosquitto, pki) as central:
        station = FakeStation("st-a")
        central.enroll(station)
        receiver = central.receiver
        assert receiver.client is not None
        client = receiver.client
        # The content path publishes a result at once and takes the broker's answer later
        # (publish_started): the broker's refusal comes as that answer.
        real_publish = client.publish_started
        refused = asyncio.Event()

        def refuse_once(topic: str, payload: bytes, **options: Any) -> Awaitable[PublishAck]:
            if not refused.is_set():
                refused.set()

                async def refusal() -> PublishAck:
                    raise PublishRefused(topic, 0x97, "Quota exceeded")

                return refusal()
            return real_publish(topic, payload, **options)

        monkeypatch.setattr(client, "publish_started", refuse_once)
        data = b"x" * 100
        async with wire_station(station, mosquitto, pki) as a:
            first = InitCommand(file_id_for("0123456789abcdef0123456789abcdef"), Mode.ASYNC)
            await a.client.publish(scoped_topic(STATIONS, "st-a", first.topic), init_payload(data))
            async with asyncio.timeout(20):
                await refused.wait()
            assert receiver.counts.commands == 1
            # The broker restarts with the sessions: an unacknowledged command would come again.
            connections = client.status.connections
            await mosquitto.restart(graceful=True)
            await client.wait_for(
                lambda s: s.connections > connections and not s.unconfirmed_subscriptions, 20
            )
            await a.client.wait_for(lambda s: s.state is ConnectionState.CONNECTED, 20)
            second = InitCommand(file_id_for("fedcba9876543210fedcba9876543210"), Mode.ASYNC)
            assert (await a.command(second, init_payload(data))).reason_code is ReasonCode.SUCCESS
            assert receiver.counts.commands == 2  # the first was acknowledged: it did not come again
        assert "could not be published" in caplog.text
