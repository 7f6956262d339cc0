"""Review 8: one station's API request whose reply cannot be published poisons the central's API.

`MqttApi._exact_members` (edge/central/mqtt_api.py) names every unknown member of a body, without bound,
each escaped by `printable` (a zero-width space, 3 bytes of UTF-8 in the request, is 6 characters in the
detail and 7 bytes in the reply). A request within `max_request_kb` thus gets a reply larger than the
broker's Maximum Packet Size: `MqttClient.publish` raises PacketTooLarge in the receiver's handler, the
message is never acknowledged (it holds one of the broker's in-flight slots of the API connection, and comes
back on every reconnection of the persistent session), and the whole multi-megabyte detail is logged and
recorded in the index's rejections for every delivery.

Fails today; passes once a reply that cannot be sent is replaced by a short 413/500 reply (and details
are bounded), so that every request is answered and acknowledged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.custody.canonical import canonical_json
from edge.mqtt.api import ApiOp, new_request_id
from tests.central.conftest import FakeStation
from tests.mqtt.broker import MosquittoBroker, TestPki, require_mosquitto
from tests.mqtt.central_harness import MqttCentral, running_mqtt_central, wire_station

# The shipped broker's max_packet_size (config/mosquitto/mosquitto.conf).
BROKER_MAX_PACKET = 2_097_152


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


def _amplifying_request(keys: int) -> tuple[str, bytes]:
    request_id = new_request_id()
    body = {"\u200b" * 6 + f"{i:06d}": 0 for i in range(keys)}
    payload = canonical_json({"v": 1, "request_id": request_id, "op": "ledger-head", "body": body})
    return request_id, payload


async def test_review8_every_api_request_is_answered_even_when_its_reply_would_be_too_large(
    central: MqttCentral, broker: tuple[MosquittoBroker, TestPki]
) -> None:
    mosquitto, pki = broker
    hostile = FakeStation("st-a")
    central.enroll(hostile)
    request_id, payload = _amplifying_request(60_000)
    assert len(payload) < min(central.config.mqtt.max_request_bytes, BROKER_MAX_PACKET - 1024)  # type: ignore[union-attr]
    async with wire_station(hostile, mosquitto, pki) as a:
        topic = f"evidence/stations/st-a/api/request/{ApiOp.LEDGER_HEAD.value}"
        await a.client.publish(topic, payload, qos=1, response_topic="evidence/stations/st-a/api/reply",
                               correlation_data=request_id.encode("ascii"))
        try:
            await a.wait_until(lambda: request_id in a.replies, 20.0)
        except TimeoutError:
            pytest.fail("the central never answered a request within max_request_kb (its reply exceeded the "
                        "broker's packet limit; the message stays unacknowledged)")
        assert a.replies[request_id].status in (400, 413)
    # What the central recorded of it is bounded (a refusal's detail is one sentence).
    recorded = [r for r in central.running.parts.index.rejections("st-a")]
    assert recorded and max(len(r["detail"]) for r in recorded) <= 4096, (
        f"a rejection detail of {max(len(r['detail']) for r in recorded)} characters was recorded"
    )


async def test_review8_one_station_cannot_stall_every_station_s_api(
    central: MqttCentral, broker: tuple[MosquittoBroker, TestPki]
) -> None:
    """The broker sends at most max_inflight_messages (20 in the shipped configuration) unacknowledged QoS 1
    messages to a client: 20 poisoned requests and no other station's request is answered any more."""
    mosquitto, pki = broker
    hostile, victim = FakeStation("st-a"), FakeStation("st-b")
    central.enroll(hostile)
    central.enroll(victim)
    async with wire_station(hostile, mosquitto, pki) as a, wire_station(victim, mosquitto, pki) as b:
        # Control: the victim is answered before.
        assert (await b.request(ApiOp.LEDGER_HEAD, {})).status == 200
        topic = f"evidence/stations/st-a/api/request/{ApiOp.LEDGER_HEAD.value}"
        for _ in range(21):
            _, payload = _amplifying_request(60_000)
            await a.client.publish(topic, payload, qos=1)
        try:
            reply = await b.request(ApiOp.LEDGER_HEAD, {}, timeout_s=60.0)
        except TimeoutError:
            pytest.fail("after 21 requests of station st-a, station st-b's request got no reply in 60 s")
        assert reply.status == 200
