"""Review 9: the MQTT client's per-key concurrency, in-order acknowledgements and poison handling, against
the real Mosquitto with the shipped configuration (max_inflight_messages 20).

These tests fail on review9 (b66b5dc); each says what it proves and what a fix must do."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from edge.mqtt.client import InboundMessage
from edge.mqtt.client_ids import secret_client_id
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki
from tests.mqtt.test_client import WAIT_S, Inbox, broker, pki, running, topic

__all__ = ["broker", "pki"]  # fixtures re-used from test_client

SECRET = "0123456789abcdef0123"  # 20 hex digits, the shape of edge.mqtt.client_ids' secret


def _station_of(message: InboundMessage) -> str:
    return message.topic.split("/")[2]


async def test_a_slow_message_of_one_station_does_not_stall_the_others_behind_the_in_order_acknowledger(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    """Review 8 finding 7 was "one station's slow message holds up every station's". With concurrency and a
    key, B's messages are handled while A1 is slow, but their acknowledgements wait behind A1's (arrival
    order): after max_inflight_messages (20) unacknowledged messages the broker sends the connection
    nothing more, so B stalls for as long as A1 takes (a registration of a large file: minutes).
    Fails today: about 19 of B's 30 messages arrive, then nothing until A1 is released.
    Control: every one of B's messages arrives once A1 is released (the broker was only holding them)."""
    release = asyncio.Event()
    inbox = Inbox()

    async def handler(message: InboundMessage) -> None:
        if message.payload == b"A1":
            await release.wait()
        await inbox(message)

    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (a, _),
        running(broker.client_settings(pki.client("STATION-B"))) as (b, _),
    ):
        for client in (receiver, a, b):
            await client.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/api", handler, concurrency=4, key=_station_of)
        await a.publish(topic("STATION-A", "api"), b"A1")
        sent = [b"B%d" % n for n in range(30)]
        for payload in sent:
            await b.publish(topic("STATION-B", "api"), payload)
        got: list[bytes] = []
        try:
            while len(got) < len(sent):
                got.append((await inbox.next()).payload)
        except TimeoutError:
            release.set()
            rest = [(await inbox.next()).payload for _ in range(len(sent) - len(got) + 1)]
            assert sorted(got + rest) == sorted([*sent, b"A1"])  # control: held, not lost
            pytest.fail(f"only {len(got)} of station B's {len(sent)} messages were handled while station A's "
                        f"first was slow: the in-order acknowledger behind A1 used up the broker's window")
        release.set()
        assert (await inbox.next()).payload == b"A1"


async def test_messages_of_qos0_behind_a_held_key_are_bounded(broker: MosquittoBroker, pki: TestPki) -> None:
    """The client docstring says the broker's in-flight window bounds how many messages wait. It does not
    for QoS 0: the delivered QoS is the lower of publish and subscription QoS, and Mosquitto has no in-flight
    limit for QoS 0. A station that holds its key (one slow message) and publishes QoS 0 messages on its own
    topic makes the central create one task (holding the payload) per message, without bound: memory of the
    central grows with whatever the station sends. Fails today: 300 tasks wait. A fix: drop (or handle
    inline, or refuse) QoS 0 messages on a concurrent subscription, or bound the tasks per key."""
    release = asyncio.Event()
    inbox = Inbox()

    async def handler(message: InboundMessage) -> None:
        if message.payload == b"A1":
            await release.wait()
        await inbox(message)

    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (a, _),
        running(broker.client_settings(pki.client("STATION-B"))) as (b, _),
    ):
        for client in (receiver, a, b):
            await client.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/api", handler, concurrency=4, key=_station_of)
        before = len(asyncio.all_tasks())
        await a.publish(topic("STATION-A", "api"), b"A1")
        for n in range(300):
            await a.publish(topic("STATION-A", "api"), b"x" * 1024 + b"%d" % n, qos=0)
        # The dispatcher takes messages in order: once B's marker is handled, every A message was dispatched.
        await b.publish(topic("STATION-B", "api"), b"marker")
        assert (await inbox.next()).payload == b"marker"
        waiting = len(asyncio.all_tasks()) - before
        release.set()
        assert waiting <= 40, f"{waiting} tasks wait behind station A's held key (unbounded by the broker)"


async def test_the_reconnect_for_held_failures_never_logs_the_full_client_id(
    broker: MosquittoBroker, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    """Client ids are secret (README "Client ids are secret"; whoever reads one takes the session over),
    yet client.py logs `self._settings.client_id` in full when held failures make it reconnect
    (edge/mqtt/client.py, "holds %d messages whose handler failed"). Fails today: the secret is in the log.
    Control: the warning itself is logged (with the shortened id)."""
    caplog.set_level(logging.INFO)
    settings = broker.client_settings(pki.client(CENTRAL_ID, unit="server"))
    settings = replace(settings, client_id=secret_client_id(CENTRAL_ID, SECRET) + "-api")

    async def always_fails(message: InboundMessage) -> None:
        raise ValueError("cannot handle this")

    async with (
        running(settings) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (station, _),
    ):
        await receiver.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        connections = receiver.status.connections
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/segments", always_fails)
        for n in range(12):
            await station.publish(topic("STATION-A", "segments"), b"bad %d" % n)
        await receiver.wait_for(lambda s: s.connections > connections, WAIT_S)
    assert "whose handler failed: reconnecting" in caplog.text  # control: the warning was logged
    assert SECRET not in caplog.text, "the full (secret) client id was logged"

