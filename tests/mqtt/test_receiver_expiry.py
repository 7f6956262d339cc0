"""Review 13, finding 2, at a real central and Mosquitto: the expired request is counted in
``edge_central_mqtt_queue_expired_total`` (the request without expiry behind it, the control, is answered
and not counted). tests/mqtt/test_review13_receiver.py shows it is not handled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.central.app import METRICS
from edge.mqtt.api import ApiOp
from tests.central.conftest import FakeStation
from tests.mqtt.broker import MosquittoBroker, TestPki
from tests.mqtt.central_harness import MqttCentral, running_mqtt_central, wire_station
from tests.mqtt.test_review10_receiver import _hold_first
from tests.mqtt.test_review13_receiver import _publish


@pytest.fixture
async def central(tmp_path: Path, broker: MosquittoBroker, pki: TestPki) -> AsyncIterator[MqttCentral]:
    async with running_mqtt_central(tmp_path / "central", broker, pki, max_segment_kb=64) as running:
        yield running


async def test_an_expired_queued_request_is_counted_in_the_metrics(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki
) -> None:
    a = FakeStation("st-a")
    central.enroll(a)
    entered, release, handled = _hold_first(central, ApiOp.LEDGER_HEAD, "st-a")
    async with wire_station(a, broker, pki) as station_a:
        await _publish(station_a, ApiOp.LEDGER_HEAD, None)
        async with asyncio.timeout(30):
            await entered.wait()
        expired = await _publish(station_a, ApiOp.TREE_HEAD, 1)
        control = await _publish(station_a, ApiOp.TREE_HEAD, 3600)
        async with asyncio.timeout(30):
            while central.receiver.queue_waiting() < 3:
                await asyncio.sleep(0.01)
        await asyncio.sleep(2.0)  # the 1 s expiry has to pass: it is a time
        release.set()
        await station_a.wait_until(lambda: control in station_a.replies)
        assert expired not in station_a.replies and handled["st-a tree-head"] == 1
        assert central.receiver.counts.expired == 1
        scraped = central.running.app[METRICS].exposition().decode()
        assert "edge_central_mqtt_queue_expired_total 1.0" in scraped, scraped
    a.conn.close()
