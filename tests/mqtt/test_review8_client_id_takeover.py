"""Review 8: the shipped broker configuration lets an enrolled station connect under ANOTHER client's id.

Mosquitto keys sessions by client id, and `use_identity_as_username` ties only the user name (the ACL's
%u) to the certificate, not the client id; Mosquitto 2.0 cannot bind the two. A station presenting its own
certificate with the central's client id took the central's persistent session over: the central was
kicked off and the messages the broker queued for it (other stations' evidence segments and API requests)
were lost (Mosquitto re-checks the read ACL when it delivers them to the intruder, and drops them).

The fix makes the ids unguessable (edge.mqtt.client_ids): the central's connections are
``<central id>-<80-bit secret>`` (and ``-api``), kept in its identity directory. These tests run the
central's own settings (`central_mqtt_settings`) against an intruder that tries every id it can know (the
central id, its ``-api``, the ids of the previous release): the central's session and its connection are
untouched. The controls show the residual the README documents: an intruder given the real id (the
broker's administrator, its logs) still takes the session over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.central.identity import init_central
from edge.central.mqtt_receiver import central_mqtt_settings
from edge.mqtt.client import ConnectionState, InboundMessage, MqttClient, MqttSettings
from edge.uplink.policy import Backoff
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki, require_mosquitto
from tests.mqtt.central_harness import central_mqtt_config

CONTENT_FILTER = f"$share/edge-central/{TOPIC_PREFIX}/stations/+/$file-async/#"
WAIT_S = 15.0
# Every id of the central an intruder could know or guess: the central id is its certificate's CN.
GUESSABLE_IDS = (CENTRAL_ID, f"{CENTRAL_ID}-api", f"{CENTRAL_ID}.command")


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


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[InboundMessage] = []
        self.arrived = asyncio.Event()

    async def take(self, message: InboundMessage) -> None:
        self.messages.append(message)
        self.arrived.set()


async def _connected(client: MqttClient) -> asyncio.Task[None]:
    task = asyncio.create_task(client.run())
    await client.wait_for(lambda s: s.state in (ConnectionState.CONNECTED, ConnectionState.REFUSED), WAIT_S)
    return task


async def _close(client: MqttClient, task: asyncio.Task[None]) -> None:
    await client.close()
    await asyncio.gather(task, return_exceptions=True)


def _central_settings(tmp_path: Path, broker: MosquittoBroker, pki: TestPki) -> MqttSettings:
    """The content connection's settings exactly as the central makes them from its configuration."""
    config = central_mqtt_config(tmp_path / "central", broker, pki)
    init_central(config)
    settings = central_mqtt_settings(config)
    assert settings.client_id.startswith(f"{CENTRAL_ID}-") and settings.client_id not in GUESSABLE_IDS
    return dataclasses.replace(settings, keepalive_s=10)


async def _intrude(
    broker: MosquittoBroker, pki: TestPki, client_id: str
) -> tuple[bool, list[InboundMessage]]:
    """Station st-a's certificate under `client_id`: (session present, the messages it received)."""
    intruder = MqttClient(broker.client_settings(pki.client("st-a"), client_id=client_id),
                          backoff=Backoff(0.05, 0.5))
    inbox = _Inbox()
    # Handler in place before the CONNACK: a resumed session's queued messages follow it at once.
    subscribing = asyncio.create_task(intruder.subscribe(CONTENT_FILTER, inbox.take, timeout_s=WAIT_S))
    await asyncio.sleep(0)
    task = await _connected(intruder)
    status = intruder.status
    # Not waited for: a session not resumed holds nothing; the central's own delivery afterwards shows
    # what the session kept (and a resumed session's messages go to the intruder, or are dropped).
    subscribing.cancel()
    await asyncio.gather(subscribing, return_exceptions=True)
    await _close(intruder, task)
    return status.session_present, list(inbox.messages)


async def _central_offline_with_a_queued_segment(
    broker: MosquittoBroker, pki: TestPki, settings: MqttSettings
) -> bytes:
    """The central subscribes (persistent session) and goes away; st-b sends a segment meanwhile."""
    central = MqttClient(settings, backoff=Backoff(0.05, 0.5))
    task = await _connected(central)
    await central.subscribe(CONTENT_FILTER, _Inbox().take, timeout_s=WAIT_S)
    await _close(central, task)
    victim = MqttClient(broker.client_settings(pki.client("st-b")), backoff=Backoff(0.05, 0.5))
    task = await _connected(victim)
    secret = b"st-b evidence bytes " * 64
    digest = hashlib.sha256(secret).hexdigest()
    topic = f"{TOPIC_PREFIX}/stations/st-b/$file-async/item.0001/0/{digest}"
    ack = await victim.publish(topic, secret, qos=1)
    assert ack.reason_code == 0  # queued for the central's session
    await _close(victim, task)
    return secret


async def _central_back(broker: MosquittoBroker, pki: TestPki, settings: MqttSettings) -> list[bytes]:
    """What the central, back, receives before a marker st-b sends once it is back (delivery in order:
    whatever was queued for its session arrives before the marker, so no wait has to prove an absence)."""
    central = MqttClient(settings, backoff=Backoff(0.05, 0.5))
    inbox = _Inbox()
    with_handler = asyncio.create_task(central.subscribe(CONTENT_FILTER, inbox.take, timeout_s=WAIT_S))
    await asyncio.sleep(0)
    task = await _connected(central)
    await with_handler
    marker = b"marker"
    sender = MqttClient(broker.client_settings(pki.client("st-b")), backoff=Backoff(0.05, 0.5))
    sender_task = await _connected(sender)
    digest = hashlib.sha256(marker).hexdigest()
    await sender.publish(f"{TOPIC_PREFIX}/stations/st-b/$file-async/item.0002/0/{digest}", marker, qos=1)
    await _close(sender, sender_task)
    async with asyncio.timeout(WAIT_S):
        while marker not in [m.payload for m in inbox.messages]:
            inbox.arrived.clear()
            await inbox.arrived.wait()
    await _close(central, task)
    payloads = [m.payload for m in inbox.messages]
    return payloads[:payloads.index(marker)]


async def test_review8_a_station_cannot_take_over_the_central_session_and_read_queued_evidence(
    tmp_path: Path, broker: tuple[MosquittoBroker, TestPki],
) -> None:
    mosquitto, pki = broker
    settings = _central_settings(tmp_path, mosquitto, pki)
    secret = await _central_offline_with_a_queued_segment(mosquitto, pki, settings)
    # Another enrolled station presents ITS OWN certificate under every id of the central it can know.
    for guess in GUESSABLE_IDS:
        resumed, stolen = await _intrude(mosquitto, pki, guess)
        assert not resumed and not stolen, f"st-a under {guess!r} resumed a session and got {stolen}"
    # The central, back, gets the queued segment: its session was untouched.
    assert await _central_back(mosquitto, pki, settings) == [secret], (
        "the segment queued for the central was lost")


async def test_review8_residual_an_intruder_who_knows_the_secret_id_still_takes_the_session(
    tmp_path: Path, broker: tuple[MosquittoBroker, TestPki],
) -> None:
    """Control of the test above, and the residual README "Broker setup" documents: the id is the only
    protection; whoever learns it (the broker's administrator, its logs) takes the session over."""
    mosquitto, pki = broker
    settings = _central_settings(tmp_path, mosquitto, pki)
    await _central_offline_with_a_queued_segment(mosquitto, pki, settings)
    resumed, _stolen = await _intrude(mosquitto, pki, settings.client_id)
    assert resumed, "the broker did not hand the central's session to a client naming its id"
    # The queued segment is gone for the central (dropped at delivery to st-a by the read ACL).
    assert await _central_back(mosquitto, pki, settings) == []


async def test_review8_a_station_cannot_kick_the_central_off_with_its_client_id(
    tmp_path: Path, broker: tuple[MosquittoBroker, TestPki],
) -> None:
    mosquitto, pki = broker
    settings = _central_settings(tmp_path, mosquitto, pki)
    central = MqttClient(settings, backoff=Backoff(5.0, 5.0))
    central_task = await _connected(central)
    assert central.status.state is ConnectionState.CONNECTED
    connections = central.status.connections
    for guess in GUESSABLE_IDS:
        intruder = MqttClient(mosquitto.client_settings(pki.client("st-a"), client_id=guess),
                              backoff=Backoff(5.0, 5.0))
        task = await _connected(intruder)
        await _close(intruder, task)
    central_state = central.status.state
    # Control (the residual): under the central's real id the intruder does kick it off.
    kicked = asyncio.create_task(central.wait_for(lambda s: s.state is not ConnectionState.CONNECTED, WAIT_S))
    intruder = MqttClient(mosquitto.client_settings(pki.client("st-a"), client_id=settings.client_id),
                          backoff=Backoff(5.0, 5.0))
    task = await _connected(intruder)
    await kicked
    await _close(intruder, task)
    await _close(central, central_task)
    assert central_state is ConnectionState.CONNECTED and central.status.connections == connections, (
        "a guessable id kicked the central off")
