"""Fairness between stations at the central's MQTT receiver (review 8, finding 7): one station's slow
request does not hold up another station's, one station's requests keep their order, and requests and
segments carrying an MQTT 5 Message Expiry Interval are answered like any other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge.central.registration import Caller
from edge.custody.canonical import sha256_hex
from edge.mqtt.api import ApiOp, ApiRequest, encode_request, new_request_id, reply_topic
from edge.mqtt.filetransfer import FinCommand, InitCommand, Mode, ReasonCode, scoped_topic
from tests.central.conftest import FakeStation
from tests.mqtt.broker import TOPIC_PREFIX, MosquittoBroker, TestPki, require_mosquitto
from tests.mqtt.central_harness import (
    STATIONS,
    MqttCentral,
    file_id_for,
    init_payload,
    running_mqtt_central,
    segment_commands,
    wire_station,
)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[tuple[MosquittoBroker, TestPki]]:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", pki)
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


async def test_a_slow_request_of_one_station_does_not_hold_up_another_s_and_each_keeps_its_order(
    central: MqttCentral, broker: tuple[MosquittoBroker, TestPki]
) -> None:
    mosquitto, pki = broker
    slow, other = FakeStation("st-a"), FakeStation("st-b")
    central.enroll(slow)
    central.enroll(other)
    api = central.receiver.api
    assert api is not None
    real = api._ops[ApiOp.LEDGER_HEAD]
    release, entered = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def ledger_head(caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        order.append(caller.station_id)
        if caller.station_id == "st-a" and not release.is_set():
            entered.set()
            await release.wait()  # st-a's first request: as slow as a registration of a large file
        return await real(caller, body)

    api._ops[ApiOp.LEDGER_HEAD] = ledger_head
    async with wire_station(slow, mosquitto, pki) as a, wire_station(other, mosquitto, pki) as b:
        first = asyncio.create_task(a.request(ApiOp.LEDGER_HEAD, {}))
        async with asyncio.timeout(30):
            await entered.wait()
        second = asyncio.create_task(a.request(ApiOp.TREE_HEAD, {}))  # behind st-a's first
        # st-b is answered while st-a's first request is still being handled.
        assert (await b.request(ApiOp.LEDGER_HEAD, {})).status == 200
        assert not first.done() and not second.done() and order == ["st-a", "st-b"]
        release.set()
        assert (await first).status == 200 and (await second).status == 200
        assert order == ["st-a", "st-b"]
        # st-a's replies came in the order of its requests.
        assert len(a.reply_messages) == 2 and b'"tree_size"' in a.reply_messages[1].payload


async def test_requests_and_segments_with_a_message_expiry_are_answered(
    central: MqttCentral, broker: tuple[MosquittoBroker, TestPki]
) -> None:
    """Stations may give their requests and segments an expiry (the broker drops them unread once it
    passed, instead of handing an offline central a backlog of stale ones); the property must not upset
    the receiver."""
    mosquitto, pki = broker
    fake = FakeStation("st-a")
    central.enroll(fake)
    data = bytes(range(256)) * 40
    file_id = file_id_for("0123456789abcdef0123456789abcdef")
    async with wire_station(fake, mosquitto, pki) as station:
        request_id = new_request_id()
        await station.client.publish(
            f"{STATIONS}/st-a/api/request/ledger-head",
            encode_request(ApiRequest(request_id, ApiOp.LEDGER_HEAD, {})),
            response_topic=reply_topic(TOPIC_PREFIX, "st-a"), correlation_data=request_id.encode("ascii"),
            message_expiry_s=300,
        )
        await station.wait_until(lambda: request_id in station.replies)
        assert station.replies[request_id].status == 200
        commands: list[tuple[Any, bytes]] = [(InitCommand(file_id, Mode.ASYNC), init_payload(data))]
        commands += segment_commands(file_id, data, 4096)
        commands.append((FinCommand(file_id, len(data), sha256_hex(data), Mode.ASYNC), b""))
        for command, payload in commands:
            seen = len(station.results[command.topic])
            await station.client.publish(scoped_topic(STATIONS, "st-a", command.topic), payload,
                                         message_expiry_s=300)
            await station.wait_until(lambda c=command, n=seen: len(station.results[c.topic]) > n)
            assert station.results[command.topic][seen].reason_code is ReasonCode.SUCCESS
