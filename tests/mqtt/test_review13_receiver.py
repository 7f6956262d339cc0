"""Review 13 of the receive queue at the central's MQTT receiver (a real central, a real Mosquitto).

Finding: the queue drops the MQTT 5 Message Expiry of what it holds. A station gives every API request an
expiry of its ``request_timeout_s`` (and fin one of its sends' total) so that "a central that was away does
not work through requests the station gave up on" (edge.uplink.mqtt_transport's docstring). The broker
still drops what expired before delivery, but the receiver now acknowledges at once into its queue
(InboundMessage does not even carry the expiry), so a request that expires while it waits in the queue
(behind the station's slow registration, or behind a queue whose slots are all busy) is handled all the
same: a registration re-hashes the whole file for a station that has long sent the request again under a
new request id (another row: handled too). On an overloaded central this multiplies the work exactly when
the queue is slow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.mqtt.api import ApiOp, ApiRequest, encode_request, new_request_id, reply_topic
from tests.central.conftest import FakeStation
from tests.mqtt.broker import TOPIC_PREFIX, MosquittoBroker, TestPki
from tests.mqtt.central_harness import STATIONS, MqttCentral, WireStation, running_mqtt_central, wire_station
from tests.mqtt.test_review10_receiver import _hold_first

EXPIRY_S = 1


@pytest.fixture
async def central(tmp_path: Path, broker: MosquittoBroker, pki: TestPki) -> AsyncIterator[MqttCentral]:
    async with running_mqtt_central(tmp_path / "central", broker, pki, max_segment_kb=64) as running:
        yield running


async def _publish(station: WireStation, op: ApiOp, expiry_s: int | None) -> str:
    request_id = new_request_id()
    await station.client.publish(
        f"{STATIONS}/{station.station_id}/api/request/{op}",
        encode_request(ApiRequest(request_id, op, {})),
        response_topic=reply_topic(TOPIC_PREFIX, station.station_id),
        correlation_data=request_id.encode("ascii"), message_expiry_s=expiry_s)
    return request_id


async def test_review13_a_request_that_expired_while_queued_is_still_handled(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki
) -> None:
    a = FakeStation("st-a")
    central.enroll(a)
    entered, release, handled = _hold_first(central, ApiOp.LEDGER_HEAD, "st-a")
    async with wire_station(a, broker, pki) as station_a:
        await _publish(station_a, ApiOp.LEDGER_HEAD, None)  # slow, like a registration of a large file
        async with asyncio.timeout(30):
            await entered.wait()
        expired = await _publish(station_a, ApiOp.TREE_HEAD, EXPIRY_S)
        # Control, behind it: a request without expiry is handled (so the expired one's turn has come).
        control = await _publish(station_a, ApiOp.TREE_HEAD, None)
        async with asyncio.timeout(30):
            while central.receiver.queue_waiting() < 3:
                await asyncio.sleep(0.01)
        # The expiry is a time: it has to pass (the station has given up on the request by then).
        await asyncio.sleep(EXPIRY_S + 1.0)
        release.set()
        await station_a.wait_until(lambda: control in station_a.replies)
        assert handled["st-a tree-head"] == 1 and expired not in station_a.replies, (
            "a request whose Message Expiry passed while it waited in the receive queue was still handled "
            "and answered, for a station that gave up on it")
    a.conn.close()
