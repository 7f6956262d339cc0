"""Review 8: the shipped broker configuration lets an enrolled station connect under ANOTHER client's id.

Mosquitto keys sessions by client id, and `use_identity_as_username` ties only the user name (the ACL's
%u) to the certificate, not the client id. A station presenting its own certificate with the central's
client id takes the central's persistent session over: the central is kicked off (session taken over) and
the messages the broker queued for the central while it was away (other stations' evidence segments and
API requests, already routed to that session) are lost: Mosquitto re-checks the read ACL when it
delivers them to the station, and drops them (measured: the control without the intruder receives it).

These tests fail on the shipped configuration and pass once the broker refuses a client id that is not
the certificate's (or its own prefix), e.g. `use_username_as_clientid true` with one certificate per
central connection, or a plugin/dynsec rule binding client ids to user names.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.mqtt.client import ConnectionState, InboundMessage, MqttClient
from edge.uplink.policy import Backoff
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki, require_mosquitto

CONTENT_FILTER = f"$share/edge-central/{TOPIC_PREFIX}/stations/+/$file-async/#"
WAIT_S = 15.0


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


async def test_review8_a_station_cannot_take_over_the_central_session_and_read_queued_evidence(
    broker: tuple[MosquittoBroker, TestPki],
) -> None:
    mosquitto, pki = broker
    # The central subscribes (persistent session), then goes away (a restart, an upgrade).
    central = MqttClient(mosquitto.client_settings(pki.client(CENTRAL_ID)), backoff=Backoff(0.05, 0.5))
    central_inbox = _Inbox()
    task = await _connected(central)
    await central.subscribe(CONTENT_FILTER, central_inbox.take, timeout_s=WAIT_S)
    await _close(central, task)

    # The victim station sends a segment of its evidence meanwhile: the broker queues it for the central.
    victim = MqttClient(mosquitto.client_settings(pki.client("st-b")), backoff=Backoff(0.05, 0.5))
    task = await _connected(victim)
    secret = b"st-b evidence bytes " * 64
    digest = hashlib.sha256(secret).hexdigest()
    await victim.publish(f"{TOPIC_PREFIX}/stations/st-b/$file-async/item.0001/0/{digest}", secret, qos=1)
    await _close(victim, task)

    # Another enrolled station presents ITS OWN certificate with the central's client id.
    intruder = MqttClient(mosquitto.client_settings(pki.client("st-a"), client_id=CENTRAL_ID),
                          backoff=Backoff(0.05, 0.5))
    intruder_inbox = _Inbox()
    # Handler in place before the CONNACK: a resumed session's queued messages follow it at once.
    subscribing = asyncio.create_task(
        intruder.subscribe(CONTENT_FILTER, intruder_inbox.take, timeout_s=WAIT_S))
    await asyncio.sleep(0)
    task = await _connected(intruder)
    status = intruder.status
    stolen: list[InboundMessage] = []
    if status.state is ConnectionState.CONNECTED:
        try:
            async with asyncio.timeout(5.0):
                await intruder_inbox.arrived.wait()
        except TimeoutError:
            pass
        stolen = list(intruder_inbox.messages)
    subscribing.cancel()
    await asyncio.gather(subscribing, return_exceptions=True)
    await _close(intruder, task)
    # Control: the central itself, back, gets the queued segment (it was queued, and not lost).
    central = MqttClient(mosquitto.client_settings(pki.client(CENTRAL_ID)), backoff=Backoff(0.05, 0.5))
    central_inbox = _Inbox()
    with_handler = asyncio.create_task(
        central.subscribe(CONTENT_FILTER, central_inbox.take, timeout_s=WAIT_S))
    await asyncio.sleep(0)
    task = await _connected(central)
    try:
        async with asyncio.timeout(WAIT_S):
            await central_inbox.arrived.wait()
    except TimeoutError:
        pass
    with_handler.cancel()
    await asyncio.gather(with_handler, return_exceptions=True)
    await _close(central, task)
    assert not stolen, (
        f"station st-a, connected with the central's client id (session present: {status.session_present}), "
        f"received another station's evidence queued for the central: {[m.topic for m in stolen]}"
    )
    assert [m.payload for m in central_inbox.messages] == [secret], (
        "the segment queued for the central was lost after st-a resumed the central's session"
    )
    assert status.state is ConnectionState.REFUSED or not status.session_present, (
        "the broker let station st-a resume the central's persistent session"
    )



async def test_review8_a_station_cannot_kick_the_central_off_with_its_client_id(
    broker: tuple[MosquittoBroker, TestPki],
) -> None:
    mosquitto, pki = broker
    central = MqttClient(mosquitto.client_settings(pki.client(CENTRAL_ID)), backoff=Backoff(5.0, 5.0))
    central_task = await _connected(central)
    assert central.status.state is ConnectionState.CONNECTED
    connections = central.status.connections
    # Control: the station with its own client id connects (so a refusal below is about the id).
    own = MqttClient(mosquitto.client_settings(pki.client("st-a")), backoff=Backoff(0.05, 0.5))
    own_task = await _connected(own)
    assert own.status.state is ConnectionState.CONNECTED
    await _close(own, own_task)

    intruder = MqttClient(mosquitto.client_settings(pki.client("st-a"), client_id=CENTRAL_ID),
                          backoff=Backoff(5.0, 5.0))
    task = await _connected(intruder)
    intruder_state = intruder.status.state
    await _close(intruder, task)
    central_state = central.status.state
    await _close(central, central_task)
    assert intruder_state is ConnectionState.REFUSED, "the broker accepted st-a under the central's client id"
    assert central_state is ConnectionState.CONNECTED and central.status.connections == connections

