"""Review 8: the shipped broker holds every QoS 1 message queued for an offline central in memory, bounded
only by a message count (max_queued_messages 10000) whose messages may each be max_packet_size (2 MiB):
up to ~20 GiB of broker RAM per offline client id. A central restart or outage of an hour while stations
keep sending segments (each resent three times per attempt) is enough to take an agency broker down.

Measured here: 300 segments of 1 MiB for the central's offline session grow mosquitto's RSS by ~300 MiB.
Fails today; passes with a byte bound on queued messages (mosquitto `max_queued_bytes`, e.g. 64 MiB: the
stations resend what the receiver never answered, so dropping beyond it loses nothing).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.mqtt.client import ConnectionState, InboundMessage, MqttClient
from edge.uplink.policy import Backoff
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki, require_mosquitto

CONTENT_FILTER = f"$share/edge-central/{TOPIC_PREFIX}/stations/+/$file-async/#"
SEGMENTS = 300
SEGMENT_BYTES = 1 << 20
BOUND_MIB = 128


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


def _rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


async def _ignore(_message: InboundMessage) -> None:
    return None


async def test_review8_the_broker_bounds_the_bytes_it_queues_for_an_offline_central(
    broker: tuple[MosquittoBroker, TestPki],
) -> None:
    import asyncio

    mosquitto, pki = broker
    assert mosquitto.process is not None
    pid = mosquitto.process.pid
    central = MqttClient(mosquitto.client_settings(pki.client(CENTRAL_ID)), backoff=Backoff(0.05, 0.5))
    task = asyncio.create_task(central.run())
    await central.wait_for(lambda s: s.state is ConnectionState.CONNECTED, 15.0)
    await central.subscribe(CONTENT_FILTER, _ignore, timeout_s=15.0)
    await central.close()
    await asyncio.gather(task, return_exceptions=True)
    before = _rss_mib(pid)

    station = MqttClient(mosquitto.client_settings(pki.client("st-b")), backoff=Backoff(0.05, 0.5))
    task = asyncio.create_task(station.run())
    await station.wait_for(lambda s: s.state is ConnectionState.CONNECTED, 15.0)
    data = os.urandom(SEGMENT_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    for n in range(SEGMENTS):
        # Control: every one is taken by the broker (PUBACK success: the central's session subscribes).
        ack = await station.publish(f"{TOPIC_PREFIX}/stations/st-b/$file-async/item.{n}/0/{digest}", data)
        assert ack.reason_code == 0
    await station.close()
    await asyncio.gather(task, return_exceptions=True)
    grown = _rss_mib(pid) - before
    assert grown <= BOUND_MIB, (
        f"mosquitto grew by {grown} MiB holding {SEGMENTS} MiB of segments for the offline central"
    )
